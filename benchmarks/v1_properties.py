"""Time the seven offline Marques2020 V1 property benchmarks for one brain model; report peak memory.

    .venv/bin/python benchmarks/v1_properties.py [--model vonenet_resnet50] [--keep-stimuli]

Runs with a fresh result cache (nothing computed earlier is reused: receptive-field mapping,
firing rates and properties are all recomputed; the 8-degree copies of the stimuli are rebuilt).
The grating images themselves are generated into a fresh folder too unless --keep-stimuli.
Target: under 5 minutes and under 4 GB on a 2-core CPU.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--model', default='vonenet_resnet50')
parser.add_argument('--keep-stimuli', action='store_true', help='reuse generated gratings from the usual cache')
parser.add_argument('--output', help='write the measurements as JSON here')
args = parser.parse_args()

scratch = tempfile.mkdtemp(prefix='v1-properties-bench-')
os.environ['RESULTCACHING_HOME'] = os.path.join(scratch, 'result_caching')  # read when brainscore is imported
os.environ.pop('RESULTCACHING_DISABLE', None)
if not args.keep_stimuli:
    os.environ['VONENET_BRAINSCORE_HOME'] = os.path.join(scratch, 'home')
os.environ.setdefault('MPLBACKEND', 'Agg')

import torch  # noqa: E402

from vonenet_brainscore.v1_properties.score import score_v1_properties  # noqa: E402

start = time.perf_counter()
results = score_v1_properties(args.model, pretrained=True, progress=False)
elapsed = time.perf_counter() - start
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is KiB on Linux

for r in results:
    print(f'{r.benchmark:55s} score {r.score:.3f}  raw {r.raw:.3f}  ceiling {r.ceiling:.3f}  n={len(r.model_values)}')
summary = {'model': args.model, 'seconds': round(elapsed, 1), 'peak_rss_gb': round(peak_gb, 2),
           'fresh_stimuli': not args.keep_stimuli, 'torch_threads': torch.get_num_threads(),
           'cpus': os.cpu_count(), 'machine': platform.processor() or platform.machine(),
           'results': [r.as_dict() for r in results]}
print(f"total {elapsed:.1f} s, peak RSS {peak_gb:.2f} GB, {os.cpu_count()} CPUs, "
      f"{'fresh' if not args.keep_stimuli else 'cached'} stimuli")
if args.output:
    with open(args.output, 'w') as file:
        json.dump(summary, file, indent=2)
sys.exit(0)
