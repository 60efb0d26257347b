#!/usr/bin/env python
"""Write an example dataset for layer-to-region mapping: images, a stimuli CSV and NetCDF recordings.

    python examples/make_example_dataset.py example-data
    vonenet-brainscore map-layers vonenet_resnet50_nonoise --data example-data/recordings.nc \\
        --stimuli example-data/stimuli.csv --output example-data/mapping

The "recordings" are synthetic, so the mapping has a known answer. Images are procedural
(gratings, blobs, textures, shapes). Each V1 neuron is a noisy linear read-out of the
VOneBlock ('vone_block'), each IT neuron of the pooled last stage ('model.avgpool':
position-invariant, as IT responses are) of the untrained, seeded vonenet_resnet50_nonoise: a
random mix of the layer's 20 leading principal components over the images (each scaled to unit
variance) plus independent noise per repetition. The best V1 layer should be vone_block (the
committed V1 layer) and the best IT layer model.avgpool (committed: model.layer4). Neighbouring
residual blocks of a ResNet carry nearly the same leading components, so a read-out of a
mid-stage block would peak on a plateau of its neighbours; the VOneBlock and the pooled stage
stand apart. With 4 repetitions and noise SD 1 around a unit-variance signal, the split-half
ceiling is about 1 / (1 + 1/4) = 0.8. Runs in about 40 s on two CPU cores.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault('BS_INSTALL_DEPENDENCIES', 'no')
os.environ.setdefault('AWS_EC2_METADATA_DISABLED', 'true')

GENERATING_LAYERS = {'V1': 'vone_block', 'IT': 'model.avgpool'}
MODEL = 'vonenet_resnet50_nonoise'
CATEGORIES = ('grating', 'blobs', 'texture', 'shapes')


def _colour(rng):
    return rng.uniform(0, 1, size=3)


def procedural_image(category: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """An RGB image in [0, 1] of one of four procedural kinds."""
    y, x = np.mgrid[0:size, 0:size] / size
    if category == 'grating':
        angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(2, 16), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * rng.uniform(0.3, 1) * np.sin(2 * np.pi * frequency *
                                                         (x * np.cos(angle) + y * np.sin(angle)) + phase)
        a, b = _colour(rng), _colour(rng)
        return wave[..., None] * a + (1 - wave[..., None]) * b
    if category == 'blobs':
        image = np.ones((size, size, 3)) * _colour(rng)
        for _ in range(rng.integers(1, 6)):
            cy, cx, width = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.04, 0.2)
            weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width ** 2))[..., None]
            image = image * (1 - weight) + weight * _colour(rng)
        return image
    if category == 'texture':
        noise = rng.normal(size=(size, size, 3))
        frequencies = np.fft.fftfreq(size)
        radius = np.sqrt(frequencies[:, None] ** 2 + frequencies[None, :] ** 2)
        centre, width = rng.uniform(0.02, 0.3), rng.uniform(0.01, 0.1)
        band = np.exp(-(radius - centre) ** 2 / (2 * width ** 2))[..., None]
        texture = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(0, 1)) * band, axes=(0, 1)))
        texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
        return 0.5 * texture + 0.5 * texture * _colour(rng)
    image = np.ones((size, size, 3)) * _colour(rng)  # shapes: rectangles and discs
    for _ in range(rng.integers(2, 7)):
        cy, cx, radius = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        mask = ((x - cx) ** 2 + (y - cy) ** 2 < radius ** 2) if rng.random() < 0.5 else \
            ((abs(x - cx) < radius) & (abs(y - cy) < radius * rng.uniform(0.3, 1)))
        image[mask] = _colour(rng)
    return image


def write_images(folder: Path, count: int, rng: np.random.Generator):
    folder.mkdir(parents=True, exist_ok=True)
    paths, categories = {}, []
    for index in range(count):
        category = CATEGORIES[index % len(CATEGORIES)]
        path = folder / f'stim{index:04d}.png'
        Image.fromarray((procedural_image(category, rng) * 255).clip(0, 255).astype(np.uint8)).save(path)
        paths[f'stim{index:04d}'], categories = path, categories + [category]
    return paths, categories


def readout(components: np.ndarray, neurons: int, rng: np.random.Generator, leading: int = 20) -> np.ndarray:
    """stimuli x neurons: random mixes of the leading components (each at unit variance), unit variance."""
    basis = components[:, :leading]
    basis = (basis - basis.mean(0)) / basis.std(0)
    signal = basis @ rng.normal(size=(basis.shape[1], neurons))
    return (signal - signal.mean(0)) / signal.std(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output', type=Path, help='folder to write images/, stimuli.csv and recordings.nc into')
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--neurons', type=int, default=40, help='neurons per region')
    parser.add_argument('--repetitions', type=int, default=4)
    parser.add_argument('--noise', type=float, default=1.0, help='noise SD per repetition (signal SD is 1)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from brainscore_core.supported_data_standards.brainio.assemblies import NeuronRecordingAssembly
    from vonenet_brainscore.brain.model import brain_model
    from vonenet_brainscore.scoring.mapping import extract_features
    from vonenet_brainscore.scoring.recordings import load_recordings, load_stimuli, save_recordings, save_stimuli_csv

    started = time.time()
    rng = np.random.default_rng(args.seed)
    output = args.output
    paths, categories = write_images(output / 'images', args.images, rng)
    csv = save_stimuli_csv(paths, output / 'stimuli.csv', columns={'category': categories})
    stimuli = load_stimuli(csv)

    model = brain_model(MODEL, pretrained=False, batch_size=25, progress=False)
    layers = list(dict.fromkeys(GENERATING_LAYERS.values()))
    features = extract_features(model.activations_model, stimuli, layers, n_components=100, max_memory_gb=4)

    ids = list(paths)
    signals, regions = [], []
    for region, layer in GENERATING_LAYERS.items():
        signals.append(readout(features.features[layer].astype(np.float64), args.neurons, rng))
        regions += [region] * args.neurons
    signal = np.concatenate(signals, axis=1)  # stimuli x neurons

    # Each repetition shows every stimulus once, in a new random order, with fresh noise.
    presentations, repetition, values = [], [], []
    for rep in range(args.repetitions):
        order = rng.permutation(len(ids))
        presentations += [ids[i] for i in order]
        repetition += [rep] * len(ids)
        values.append(signal[order] + args.noise * rng.normal(size=(len(ids), signal.shape[1])))
    rates = 20 + 8 * np.concatenate(values)  # firing-rate-like scale; predictivity is scale-free
    assembly = NeuronRecordingAssembly(rates[..., None], dims=['presentation', 'neuroid', 'time_bin'], coords={
        'stimulus_id': ('presentation', presentations), 'repetition': ('presentation', repetition),
        'neuroid_id': ('neuroid', [f'{r}_{i:03d}' for r, i in zip(regions, range(len(regions)))]),
        'region': ('neuroid', regions), 'time_bin_start': ('time_bin', [70]), 'time_bin_end': ('time_bin', [170])})
    save_recordings(assembly, output / 'recordings.nc')
    load_recordings(output / 'recordings.nc', csv)  # the file passes the loader's checks

    ceiling = 1 / (1 + args.noise ** 2 / args.repetitions)
    answer = {'model': MODEL, 'pretrained': False, 'generating_layers': GENERATING_LAYERS,
              'images': args.images, 'neurons_per_region': args.neurons, 'repetitions': args.repetitions,
              'noise_sd': args.noise, 'expected_ceiling': round(ceiling, 3), 'seed': args.seed}
    (output / 'known_answer.json').write_text(json.dumps(answer, indent=2))
    print(f"wrote {args.images} images, {csv.name} and recordings.nc ({len(presentations)} presentations x "
          f"{len(regions)} neuroids) to {output} in {time.time() - started:.0f} s")
    print(f"known answer: V1 <- {GENERATING_LAYERS['V1']}, IT <- {GENERATING_LAYERS['IT']}; "
          f"expected split-half ceiling ~{ceiling:.2f}")
    print(f"next: vonenet-brainscore map-layers {MODEL} --data {output / 'recordings.nc'} "
          f"--stimuli {csv} --output {output / 'mapping'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
