"""Time the seven offline Marques2020 V1 property benchmarks for one brain model; report peak memory.

    .venv/bin/python benchmarks/v1_properties.py [--model vonenet_resnet50] [--keep-stimuli | --home DIR]
                                                 [--reference] [--output JSON]

Runs with a fresh result cache (nothing computed earlier is reused: receptive-field mapping,
firing rates and properties are all recomputed) and a fresh Brain-Score home (its screen copies of
the stimuli are rebuilt). The package cache (generated gratings, and the screen images the fast
path keeps) is a fresh folder too, i.e. a first run, unless --keep-stimuli (the usual cache) or
--home DIR (that folder) is given. --reference runs today's path through files
(``score_v1_properties(..., fast=False)``) instead of the default fast path.

Prints the total, the peak RSS, and the time per stage, each call counted once, in its innermost stage:
- images: generating the gratings, placing them on the model's screen (Brain-Score writing files, or
  the in-memory screen and its cache), loading and preprocessing them;
- model: the activations model's forward passes (the VOneBlock, its noise trials);
- Brain-Score analysis: the rest of the run (the benchmarks' receptive-field mapping, firing-rate
  fit, property functions, metrics and ceilings, result caching, assembling activations);
- imports: torch, Brain-Score and this package, before the run.
Targets (issue 14): under 60 s with the stimuli generated, under 120 s for a first run, 3 GB peak RSS
(measured, as the issue measured its 3.1 GB baseline, in GiB: ru_maxrss / 1024**2; printed in both units).
"""
import time

_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from functools import wraps  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--model', default='vonenet_resnet50')
stimuli_source = parser.add_mutually_exclusive_group()
stimuli_source.add_argument('--keep-stimuli', action='store_true',
                            help='reuse generated gratings (and screen images) from the usual cache')
stimuli_source.add_argument('--home', help='use this folder as the package cache (VONENET_BRAINSCORE_HOME)')
parser.add_argument('--reference', action='store_true', help="today's path through files (fast=False)")
parser.add_argument('--untrained', action='store_true',
                    help='untrained back-end on purpose (without the published weights the run falls back to it '
                         'anyway: V1, the VOneBlock, does not depend on it)')
parser.add_argument('--output', help='write the measurements as JSON here')
args = parser.parse_args()

scratch = tempfile.mkdtemp(prefix='v1-properties-bench-')
os.environ['RESULTCACHING_HOME'] = os.path.join(scratch, 'result_caching')  # read when brainscore is imported
os.environ['BRAINSCORE_HOME'] = os.path.join(scratch, 'brain-score')       # stimuli_on_screen goes here
os.environ.pop('RESULTCACHING_DISABLE', None)
if args.home:
    os.environ['VONENET_BRAINSCORE_HOME'] = os.path.abspath(args.home)
elif not args.keep_stimuli:
    os.environ['VONENET_BRAINSCORE_HOME'] = os.path.join(scratch, 'home')
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('BS_INSTALL_DEPENDENCIES', 'no')
os.environ.setdefault('AWS_EC2_METADATA_DISABLED', 'true')

_IMPORTS_START = time.perf_counter()
import torch  # noqa: E402

import brainscore_vision  # noqa: E402,F401
import brainscore_vision.benchmarks.marques2020  # noqa: E402,F401  (the benchmark plugin the run loads)
from brainscore_vision.benchmark_helpers import screen as brainscore_screen  # noqa: E402

from vonenet_brainscore import preprocessing  # noqa: E402
from vonenet_brainscore.brain import extraction  # noqa: E402
from vonenet_brainscore.scoring.v1_properties import screen, stimuli  # noqa: E402
from vonenet_brainscore.scoring.v1_properties.score import score_v1_properties  # noqa: E402
imports_s = time.perf_counter() - _IMPORTS_START


class Stages:
    """Wall time per stage; a call inside another timed call counts only in the inner one."""

    def __init__(self):
        self.seconds, self._stack = {}, []

    def wrap(self, owner, name, stage):
        function = getattr(owner, name)

        @wraps(function)
        def timed(*a, **k):
            self._stack.append([stage, time.perf_counter(), 0.0])
            try:
                return function(*a, **k)
            finally:
                stage_, start, inner = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[stage_] = self.seconds.get(stage_, 0.0) + elapsed - inner
                if self._stack:
                    self._stack[-1][2] += elapsed
        setattr(owner, name, timed)


stages = Stages()
stages.wrap(stimuli, 'generate_stimulus_set', 'images')                        # PNG files of the gratings
stages.wrap(brainscore_screen, '_place_on_screen', 'images')                  # reference: files for the screen
stages.wrap(preprocessing.BrainScorePreprocessing, '__call__', 'images')       # reading files, resizing
stages.wrap(screen, 'screened_set', 'images')                                 # fast: screen images, cached
stages.wrap(screen, 'spot_check', 'images')
stages.wrap(screen.InMemoryScreen, '__call__', 'images')                      # fast: model inputs from memory
stages.wrap(screen.InMemoryScreen, 'place', 'images')
stages.wrap(extraction.VOneNetActivations, 'get_activations', 'model')

start = time.perf_counter()
results = score_v1_properties(args.model, pretrained=not args.untrained, progress=False, fast=not args.reference)
elapsed = time.perf_counter() - start
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is KiB on Linux
images_s, model_s = stages.seconds.get('images', 0.0), stages.seconds.get('model', 0.0)
analysis_s = elapsed - images_s - model_s


def cpu_model():
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        return next(line.split(':', 1)[1].strip() for line in out.splitlines() if line.startswith('Model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


for r in results:
    print(f'{r.benchmark:55s} score {r.score:.6f}  raw {r.raw:.6f}  ceiling {r.ceiling:.6f}  n={len(r.model_values)}')
first_run = not args.keep_stimuli and not args.home
summary = {'model': args.model, 'path': 'reference' if args.reference else 'fast', 'seconds': round(elapsed, 1),
           'seconds_with_imports': round(elapsed + imports_s, 1),
           'stages_s': {'images': round(images_s, 1), 'model': round(model_s, 1),
                        'brainscore_analysis': round(analysis_s, 1), 'imports': round(imports_s, 1)},
           'startup_s': round(_IMPORTS_START - _START, 2),
           'peak_rss_gib': round(peak_gb, 2), 'fresh_cache': first_run, 'torch_threads': torch.get_num_threads(),
           'cpus': os.cpu_count(), 'cpu_model': cpu_model(), 'load_average': os.getloadavg(),
           'results': [r.as_dict() for r in results]}
print(f"total {elapsed:.1f} s (+ {imports_s:.1f} s imports = {elapsed + imports_s:.1f} s), peak RSS {peak_gb:.2f} GiB ({peak_gb * 1.073741824:.2f} GB), "
      f"{summary['cpu_model']}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {summary['path']} path, "
      f"{'first run (fresh cache)' if first_run else 'stimuli already generated'}")
print(f"stages: images {images_s:.1f} s, model {model_s:.1f} s, Brain-Score analysis {analysis_s:.1f} s, "
      f"imports {imports_s:.1f} s")
if args.output:
    with open(args.output, 'w') as file:
        json.dump(summary, file, indent=2)
shutil.rmtree(scratch, ignore_errors=True)
sys.exit(0)
