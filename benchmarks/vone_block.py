"""VOneBlock forward: ours (each fast method) against the original code.

    .venv/bin/python benchmarks/vone_block.py [--repeats 5] [--batches 8 32] [--sides 6 12 24 56]

Both blocks hold the same filters (ours loads the original's weights). Timings alternate between
the original and each of our methods ('auto' = what the block picks for the input, 'compiled',
'spectral', 'grouped'), repeat, and report the median; the error is max |ours - original| /
max |original|. Target: 'auto' at least 8x the original at batch 8 and 32, error at most 1e-5.
``--sides`` also times the Fourier methods against 'grouped' on unpadded crops whose output is
side x side positions (what V1 benchmarks record), which sets VOneBlock.SPECTRAL_MIN_POSITIONS.
"""
import argparse
import os
import platform
import statistics
import time

import torch

from vonenet_brainscore import VOneBlock
from vonenet_brainscore.vone import native
from vonenet_brainscore.reference import load_reference

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--repeats', type=int, default=5)
parser.add_argument('--batches', type=int, nargs='+', default=[8, 32])
parser.add_argument('--methods', nargs='+', default=['auto', 'compiled', 'spectral', 'grouped'])
parser.add_argument('--sides', type=int, nargs='*', default=[])
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
args = parser.parse_args()
device = torch.device(args.device)

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


print(f"device {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
      f"{torch.get_num_threads()} threads), torch {torch.__version__}")
compiled = native.kernels()
print(f"compiled kernels: {compiled.path.name} ({' '.join(compiled.flags)})" if compiled else
      f"compiled kernels unavailable: {native.unavailable_reason()}")
for batch in args.batches:
    images = (torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)) * 2 - 1).to(device)
    runners = {'original': original, **{method: with_method(method) for method in args.methods}}
    for runner in runners.values():
        timed(runner, images)  # warm-up (and the spectral method's one-off filter spectra)
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
        print(f"  {method:9s}{picked:18s} {batch / t:6.1f} img/s, speed-up {t_original / t:5.2f}x, "
              f"max error {error:.1e} of the output max")

if args.sides:
    crop_methods = ['grouped', 'spectral'] + (['compiled'] if native.kernels() is not None else [])
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
