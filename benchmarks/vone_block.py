"""VOneBlock forward: ours (filters regrouped by colour channel) against the original code.

    .venv/bin/python benchmarks/vone_block.py [--repeats 5] [--batches 8 32]

Both blocks hold the same filters (ours loads the original's weights). Timings alternate between
the two, repeat, and report the median; the error is max |ours - original| / max |original|.
Target: at least 8x at batch 8 and 32, error at most 1e-5.
"""
import argparse
import os
import platform
import statistics
import time

import torch

from vonenet_brainscore import VOneBlock
from vonenet_brainscore.reference import load_reference

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--repeats', type=int, default=5)
parser.add_argument('--batches', type=int, nargs='+', default=[8, 32])
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
args = parser.parse_args()
device = torch.device(args.device)

torch.manual_seed(0)
original = load_reference().VOneNet(model_arch=None, noise_mode=None).to(device).eval()
ours = VOneBlock(noise_mode=None).to(device).eval()
ours.load_state_dict(original.state_dict())


def timed(block, images):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        output = block(images)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start, output


print(f"device {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
      f"{torch.get_num_threads()} threads), torch {torch.__version__}")
for batch in args.batches:
    images = (torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)) * 2 - 1).to(device)
    timed(original, images), timed(ours, images)  # warm-up
    times = {'original': [], 'ours': []}
    for _ in range(args.repeats):
        t, expected = timed(original, images.clone())
        times['original'].append(t)
        t, actual = timed(ours, images)
        times['ours'].append(t)
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    t_original, t_ours = statistics.median(times['original']), statistics.median(times['ours'])
    print(f"batch {batch:3d}: original {batch / t_original:7.1f} img/s, ours {batch / t_ours:7.1f} img/s, "
          f"speed-up {t_original / t_ours:5.2f}x, max error {error:.1e} of the output max")
