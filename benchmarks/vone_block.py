"""VOneBlock forward: ours (each fast method) against the original code.

    .venv/bin/python benchmarks/vone_block.py [--repeats 7] [--batches 8 32] [--contended] [--isa avx2]
                                              [--sides 6 12 24 56] [--no-stages]

Both blocks hold the same filters (ours loads the original's weights). Timings alternate between
the original and each of our methods ('auto' = what the block picks for the input, 'compiled',
'spectral', 'grouped') within one run, repeat, and report the median; the error is
max |ours - original| / max |original|. Target: 'auto' at least 8x the original at batch 8 and 32,
error at most 1e-5, and under one competing CPU-bound process (``--contended``) never below
'spectral' in the same conditions.

``--contended`` runs the same comparison while one other process spins on a CPU (started before
the warm-up, stopped at the end), as on a machine shared with other work: by default in a session
of its own, as another job's would be (with the kernel's autogroup scheduling, sessions then share
the CPUs fairly); ``--competitor-session same`` keeps it in this one (threads share them fairly).
``--isa avx2`` measures what an AVX2 machine without AVX-512 gets, on a CPU that has AVX-512: the
kernels are built with -mno-avx512f and torch's own kernels (oneDNN, MKL, ATen) are held to AVX2,
so the original is measured the way it runs there too.
The stage split times each step of the compiled method once more, after the comparison: the images'
spectra and aliases, the products with the inverse FFTs and the cells (into an output already
touched), and what touching a fresh output costs on its own (page faults: on virtual machines this
can cost as much as computing it).
``--sides`` also times the Fourier methods against 'grouped' on unpadded crops whose output is
side x side positions (what V1 benchmarks record), which sets VOneBlock.SPECTRAL_MIN_POSITIONS.

The CPU share other work used is measured for a second before and after the run: figures taken
while other work runs are noisy, and the script says so.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--repeats', type=int, default=7)
parser.add_argument('--batches', type=int, nargs='+', default=[8, 32])
parser.add_argument('--methods', nargs='+', default=['auto', 'compiled', 'spectral', 'grouped'])
parser.add_argument('--contended', action='store_true', help='time everything with one competing CPU-bound process')
parser.add_argument('--competitor-session', choices=['own', 'same'], default='own',
                    help="the competitor's session: 'own' (another job's, the default) or this one's (the kernel's "
                         "autogroup scheduling then shares the CPUs per thread rather than per session)")
parser.add_argument('--isa', choices=['native', 'avx2'], default='native',
                    help='avx2: build the kernels without AVX-512 and hold torch to AVX2 (on an AVX-512 CPU)')
parser.add_argument('--no-stages', action='store_true', help='skip the compiled method\'s stage split')
parser.add_argument('--sides', type=int, nargs='*', default=[])
parser.add_argument('--device', default=None)
args = parser.parse_args()

AVX2_ENVIRONMENT = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}
if args.isa == 'avx2' and any(os.environ.get(k) != v for k, v in AVX2_ENVIRONMENT.items()):
    # torch reads these when it loads: start again with them set
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENVIRONMENT})

import torch  # noqa: E402 (after the re-exec above)

from vonenet_brainscore import VOneBlock  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))  # test support: the original code
from reference_vonenet import load_reference  # noqa: E402
from vonenet_brainscore.vone.accel import compiled as compiled_module  # noqa: E402
from vonenet_brainscore.vone.accel import native  # noqa: E402
from vonenet_brainscore.vone.accel.spectral import fourier_grid  # noqa: E402

if args.isa == 'avx2':
    native.FLAG_SETS = tuple([*flags, '-mno-avx512f'] if '-march=native' in flags else flags
                             for flags in native.FLAG_SETS)
device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))


def cpu_model() -> str:
    """The model name, with family/model/stepping (virtual machines often show a bare 'AMD EPYC')."""
    fields = {}
    try:
        for line in open('/proc/cpuinfo'):
            key, _, value = line.partition(':')
            key = key.strip()
            if key in ('model name', 'cpu family', 'model', 'stepping') and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
    except OSError:
        pass
    name = fields.get('model name') or platform.processor() or platform.machine()
    if 'cpu family' in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')}, stepping {fields.get('stepping', '?')})"
    return name


def cpu_vector_isa() -> str:
    try:
        flags = next(line for line in open('/proc/cpuinfo') if line.startswith('flags')).split()
    except (OSError, StopIteration):
        return 'unknown'
    return 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'AVX' if 'avx' in flags else 'SSE'


def busy_share(seconds: float = 1.0):
    """The share of all CPUs' time that other work used over ``seconds`` (None where /proc/stat
    is missing), and the load averages."""
    def ticks():
        with open('/proc/stat') as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # all, idle + iowait
    try:
        total0, idle0 = ticks()
        time.sleep(seconds)
        total1, idle1 = ticks()
        share = 1 - (idle1 - idle0) / max(1, total1 - total0)
    except (OSError, ValueError, IndexError):
        share = None
    try:
        averages = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        averages = 'unknown'
    return share, averages


def describe(busy) -> str:
    share, averages = busy
    return (f"other work used {share:.0%} of the CPUs" if share is not None else "CPU use unknown") + \
        f" (load average {averages})"


torch.manual_seed(0)
original = load_reference().VOneNet(model_arch=None, noise_mode=None).to(device).eval()
ours = VOneBlock(noise_mode=None).to(device).eval()
ours.load_state_dict(original.state_dict())


def timed(function, images):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        output = function(images)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start, output


def with_method(method, function=ours):
    def run(images, **kwargs):
        ours.method = method
        return function(images, **kwargs)
    return run


def stage_split(images, repeats, threads):
    """Median seconds of each step of the compiled method for ``images`` on ``threads`` threads."""
    plan = ours._compiled_plan()
    kernels, padding, s = plan.kernels, plan.padding, plan.stride
    batch, colours, height, width = images.shape
    rows, cols, n_h, n_w, m_h, m_w = fourier_grid(height, width, padding, s, plan.ksize)
    hw = m_w // 2 + 1
    spectra, descriptors = plan._unit_spectra((n_h, n_w))
    per_thread = kernels.scratch_floats(n_h, n_w, s, rows, cols)
    scratch = torch.empty((threads * per_thread,))
    aliases = torch.empty((colours, batch, hw * m_h, s * s, 2))
    out = torch.empty((batch, plan.out_channels, rows, cols))
    names = ('image spectra, aliases (C)', 'products, inverse FFTs, cells (C)', 'new output (page faults)',
             'whole call')
    times = {name: [] for name in names}
    for _ in range(repeats):
        start = time.perf_counter()
        kernels.spectra(images.data_ptr(), batch, colours, height, width, padding, n_h, n_w, s, aliases.data_ptr(),
                        scratch.data_ptr(), per_thread, threads)
        times[names[0]].append(time.perf_counter() - start)
        start = time.perf_counter()
        kernels.cells(aliases.data_ptr(), batch, colours, n_h, n_w, s, rows, cols, descriptors.data_ptr(),
                      len(plan.units), out.data_ptr(), out.stride(0), 1.0, 1.0, scratch.data_ptr(), per_thread,
                      threads)
        times[names[1]].append(time.perf_counter() - start)
        start = time.perf_counter()
        fresh = torch.empty((batch, plan.out_channels, rows, cols))
        fresh.view(-1)[::1024].fill_(0)  # one write per 4 KiB page
        times[names[2]].append(time.perf_counter() - start)
        del fresh
        start = time.perf_counter()
        with torch.no_grad():
            plan(images, (1.0, 1.0), threads=threads)
        times[names[3]].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


compiled = native.kernels() if device.type == 'cpu' else None
print(f"CPU: {cpu_model()} ({cpu_vector_isa()}), {os.cpu_count()} CPUs; device {device}, "
      f"{torch.get_num_threads()} threads, torch {torch.__version__}"
      + (f", torch held to AVX2 ({', '.join(f'{k}={v}' for k, v in AVX2_ENVIRONMENT.items())})"
         if args.isa == 'avx2' else ''))
if device.type == 'cpu':
    print(f"compiled kernels: {compiled.isa}, {compiled.lanes} filters per vector, {compiled.images_per_block} images "
          f"per register block ({' '.join(compiled.flags)}; {compiled.path.name})" if compiled else
          f"compiled kernels unavailable: {native.unavailable_reason()}")
busy_before = busy_share()
print(f"before: {describe(busy_before)}")
competitor = None
if args.contended:
    competitor = subprocess.Popen([sys.executable, '-c', 'while True: pass'],
                                  start_new_session=args.competitor_session == 'own')
    print(f"contended: one competing CPU-bound process (pid {competitor.pid}, {args.competitor_session} session) "
          f"runs throughout")
results = {}
try:
    for batch in args.batches:
        images = (torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)) * 2 - 1).to(device)
        runners = {'original': original, **{method: with_method(method) for method in args.methods}}
        for runner in runners.values():
            timed(runner, images)  # warm-up (and the Fourier methods' one-off filter spectra)
        times = {name: [] for name in runners}
        outputs = {}
        for _ in range(args.repeats):
            for name, runner in runners.items():
                t, outputs[name] = timed(runner, images.clone())
                times[name].append(t)
        t_original = statistics.median(times['original'])
        print(f"batch {batch:3d}: original {batch / t_original:6.1f} img/s")
        for method in args.methods:
            t = statistics.median(times[method])
            error = ((outputs[method] - outputs['original']).abs().max() / outputs['original'].abs().max()).item()
            ours.method = "auto"
            picked = f" (picks {ours.method_for(images)})" if method == "auto" else ""
            results[batch, method] = t_original / t
            print(f"  {method:9s}{picked:18s} {batch / t:6.1f} img/s, speed-up {t_original / t:5.2f}x, "
                  f"max error {error:.1e} of the output max")
        del outputs
        if compiled is not None and not args.no_stages:
            threads = compiled_module.THREADS.threads(torch.get_num_threads())
            split = stage_split(images, args.repeats, threads)
            parts = [name for name in split if name != 'whole call']
            rest = split['whole call'] - sum(split[name] for name in parts)
            print(f"  compiled, stage split on {threads} thread(s), ms per image: "
                  + ', '.join(f"{name} {split[name] * 1e3 / batch:.2f}" for name in parts)
                  + f"; whole call {split['whole call'] * 1e3 / batch:.2f} (rest {rest * 1e3 / batch:.2f})")

    if args.sides:
        crop_methods = ['grouped', 'spectral'] + (['compiled'] if compiled is not None else [])
        print(f"unpadded crops, batch 32 ({', '.join(crop_methods)}):")
    for side in args.sides:
        size = (side - 1) * ours.stride + ours.config.ksize
        crops = (torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(side)) * 2 - 1).to(device)
        runs = {method: with_method(method, ours.gabors_f) for method in crop_methods}
        times = {method: [] for method in runs}
        for _ in range(args.repeats + 1):
            for method, run in runs.items():
                times[method].append(timed(lambda x: run(x, padding=0), crops)[0])
        rates = ', '.join(f"{m} {32 / statistics.median(times[m][1:]):7.1f}" for m in crop_methods)
        print(f"  {side:3d} x {side:<3d} positions (img/s): {rates}")
finally:
    if competitor is not None:
        competitor.kill()
        competitor.wait()

busy_after = busy_share()
print(f"after: {describe(busy_after)}")
if any(share is not None and share > 0.15 for share, _ in (busy_before, busy_after)):
    print("note: other work shared the CPUs (more than 15% before or after the run): the figures above are noisy; "
          "rerun when the machine is quiet")
if ('auto' in args.methods and 'spectral' in args.methods
        and any(results[b, 'auto'] < results[b, 'spectral'] for b in args.batches)):
    print("note: 'auto' was slower than 'spectral' at some batch size")
