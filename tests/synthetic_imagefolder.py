"""A tiny ImageFolder the tests generate: a few classes of oriented, coloured gratings.

Each class is one (orientation, colour) pair. Every image sums gratings of three spatial
frequencies with random phases, so orientation and colour (what the VOneBlock's Gabors encode)
identify the class after any crop or zoom of training augmentation. Layout:
``root/{train,val}/<class>/<i>.png``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ('horizontal_red', 'vertical_green', 'diagonal_blue', 'antidiagonal_grey')
_ORIENTATIONS = (0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4)
_COLOURS = ((1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.2, 1.0), (0.7, 0.7, 0.7))
_CYCLES = (3, 6, 12)  # per image: 0.4 to 1.5 cycles/degree at 64 px = 8 degrees


def grating(class_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image of class ``class_index``."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    theta = _ORIENTATIONS[class_index]
    along = xs * np.cos(theta) + ys * np.sin(theta)
    wave = sum(np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi)) for cycles in _CYCLES)
    image = (0.5 + wave[..., None] / (2 * len(_CYCLES))) * np.asarray(_COLOURS[class_index])[None, None, :]
    image = image + rng.normal(0, 0.05, image.shape)
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
