"""A tiny ImageFolder the tests generate: a few classes of noisy oriented colour gratings.

Each class is one (orientation, colour) pair, so a small VOneNet learns it in a few steps; pixel
noise and random phase make every image different. Layout: ``root/{train,val}/<class>/<i>.png``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ('horizontal_red', 'vertical_green', 'diagonal_blue', 'antidiagonal_grey')
_ORIENTATIONS = (0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4)
_COLOURS = ((1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.2, 1.0), (0.7, 0.7, 0.7))


def grating(class_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image of class ``class_index``."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    theta = _ORIENTATIONS[class_index]
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * (xs * np.cos(theta) + ys * np.sin(theta)) + phase)
    image = wave[..., None] * np.asarray(_COLOURS[class_index])[None, None, :]
    image = image + rng.normal(0, 0.08, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_imagefolder(root, per_class_train: int = 12, per_class_val: int = 6, size: int = 64,
                     n_classes: int = len(CLASSES), seed: int = 0) -> Path:
    """Write the dataset under ``root`` and return it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (('train', per_class_train), ('val', per_class_val)):
        for class_index, name in enumerate(CLASSES[:n_classes]):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(grating(class_index, size, rng)).save(folder / f'{i:03d}.png')
    return root
