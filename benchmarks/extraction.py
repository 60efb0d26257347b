"""Activation extraction for Brain-Score: ours against the stock PytorchWrapper over the original model.

    .venv/bin/python benchmarks/extraction.py [--images 96] [--repeats 3]

Workload: what a neural benchmark asks of vonenet_resnet50_nonoise, region by region: record V1,
V2, V4 and IT (their committed layers) on a set of images. Stock: Brain-Score's PytorchWrapper
(default batch 64, padded) over the original VOneResNet50 code. Ours: the brain model's extractor
(no padding, early stop, regrouped VOneBlock). Same weights; noise off so activations compare.
Timings alternate, repeat, and report the median. Target: at least 2.5x, same activations.
"""
import argparse
import sys
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ['RESULTCACHING_DISABLE'] = '1'  # time the computation, not a cache
os.environ.setdefault('BS_INSTALL_DEPENDENCIES', 'no')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet  # noqa: E402
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper  # noqa: E402

from vonenet_brainscore.brain.model import brain_model  # noqa: E402
from vonenet_brainscore.preprocessing import brainscore_preprocessing  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))  # test support: the original code
from reference_vonenet import load_reference  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--images', type=int, default=96)
parser.add_argument('--repeats', type=int, default=3)
args = parser.parse_args()

folder = Path(tempfile.mkdtemp(prefix='extraction-bench-'))
rng = np.random.default_rng(0)
paths = {}
for index in range(args.images):
    path = folder / f'image{index}.png'
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype('uint8')).save(path)
    paths[f's{index}'] = path
stimuli = StimulusSet({'stimulus_id': list(paths)})
stimuli.stimulus_paths = paths
stimuli.identifier = 'extraction-benchmark'

ours = brain_model('vonenet_resnet50_nonoise', pretrained=False, batch_size=32)
torch.manual_seed(0)
original = load_reference().VOneNet(model_arch='resnet50', noise_mode=None)
original.load_state_dict(ours.network.state_dict())
stock = PytorchWrapper(model=original.eval(), preprocessing=brainscore_preprocessing(224),
                       identifier='stock-voneresnet50')
layers = [ours.commitment.layer(region) for region in ('V1', 'V2', 'V4', 'IT')]


def run(extract):
    start = time.perf_counter()
    results = [extract(stimuli, layers=[layer]) for layer in layers]
    return time.perf_counter() - start, results


times = {'stock': [], 'ours': []}
for _ in range(args.repeats):
    t, expected = run(stock)
    times['stock'].append(t)
    t, actual = run(ours.activations_model)
    times['ours'].append(t)
errors = [float(np.abs(a.values - e.values).max() / np.abs(e.values).max()) for a, e in zip(actual, expected)]
t_stock, t_ours = statistics.median(times['stock']), statistics.median(times['ours'])
print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
      f"{args.images} images, layers {layers}")
print(f"stock {t_stock:.1f} s, ours {t_ours:.1f} s, speed-up {t_stock / t_ours:.2f}x; "
      f"max error per layer (of its max): {', '.join(f'{e:.1e}' for e in errors)}")
