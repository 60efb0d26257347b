"""Image loading and preprocessing, below the brain model: the evaluation crop of training and
classification, and Brain-Score's loader for brain models.

A brain model's preprocessing follows its commitment (``commitments/*.json``: image size, normalisation;
``brain.model`` passes them in). The defaults here are the published values, what VOneNets were trained
with (mean = std = 0.5 per channel, 224 px), for what no commitment applies to: a bare block or network,
training, classification.
"""
from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from .errors import StimulusError
from .images import open_rgb, to_rgb  # noqa: F401 (to_rgb: the same rules for in-memory images)

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 224
"""The published training normalisation and size (every commitments/*.json states the same)."""


def load_image(path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, from any Pillow mode (rules in ``images.py``); every
    failure (missing, unreadable, truncated, not an image, decompression bomb) raises StimulusError
    naming the file."""
    return open_rgb(path)


def evaluation_transform(image_size: int = IMAGE_SIZE):
    """ImageNet evaluation crop (resize to 256/224 of the size, centre crop) and VOneNet normalisation."""
    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def load_batch(paths: Iterable, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Images from files as one normalised batch (N, 3, size, size)."""
    transform = evaluation_transform(image_size)
    images = [transform(load_image(path)) for path in paths]
    if not images:
        raise StimulusError("no images to load: give at least one image file")
    return torch.stack(images)


class BrainScorePreprocessing:
    """Brain-Score's loader (whole image resized to size x size) with VOneNet normalisation.

    Called with image paths, as Brain-Score's extractors call it: Brain-Score's own resize and
    normalisation (``preprocess_images``), fed by ``load_image``: every Pillow mode becomes RGB as
    Brain-Score's loader means it to (where that loader gives RGB, the pixels are the same), and a
    file that cannot be read raises StimulusError naming it.

    The same steps are available for images already in memory: ``from_images`` (RGB PIL images),
    and the two halves of Brain-Score's transform separately, ``resize`` (the PIL resize, 8-bit in
    and out) and ``pixel_values`` (ToTensor and Normalize, which act on each pixel and channel
    alone, so they are exactly a 256-entry table per channel).
    """

    def __init__(self, image_size: int = IMAGE_SIZE, mean=MEAN, std=STD):
        self.image_size = int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __repr__(self):
        return f'BrainScorePreprocessing(image_size={self.image_size}, mean={self.mean}, std={self.std})'

    def __call__(self, paths):
        return self.from_images([load_image(path) for path in paths])

    def from_images(self, images):
        """Brain-Score's ``preprocess_images`` on RGB PIL images: (N, 3, size, size) float32."""
        from brainscore_vision.model_helpers.activations.pytorch import preprocess_images
        return preprocess_images(list(images), image_size=self.image_size, normalize_mean=self.mean,
                                 normalize_std=self.std)

    def _split_transform(self):
        """Brain-Score's transform for these settings, as (its PIL resize, its tensor conversion);
        None when Brain-Score builds it differently from Compose([Resize, Compose([ToTensor, ...])])."""
        from brainscore_vision.model_helpers.activations.pytorch import torchvision_preprocess_input
        composed = torchvision_preprocess_input(self.image_size, normalize_mean=self.mean, normalize_std=self.std)
        steps = getattr(composed, 'transforms', None)
        if not steps or len(steps) != 2 or not isinstance(steps[0], transforms.Resize) or \
                not isinstance(steps[1], transforms.Compose) or \
                not isinstance(steps[1].transforms[0], transforms.ToTensor):
            return None
        return steps[0], steps[1]

    def supports_in_memory(self) -> bool:
        return self._split_transform() is not None

    def resize(self, image: Image.Image) -> Image.Image:
        """The resize step of ``from_images``, alone (Brain-Score's own Resize object)."""
        return self._split_transform()[0](image)

    def pixel_values(self) -> np.ndarray:
        """(3, 256) float32: what ToTensor and Normalize of ``from_images`` make of each 8-bit value
        in each channel (computed by those very transforms, on an image holding every value)."""
        gradient = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        values = self._split_transform()[1](Image.fromarray(gradient, 'RGB'))
        values = np.asarray(values, dtype=np.float32).reshape(3, 256)
        return np.ascontiguousarray(values)


def brainscore_preprocessing(image_size: int = IMAGE_SIZE, mean=MEAN, std=STD) -> BrainScorePreprocessing:
    """Brain-Score's loader (whole image resized to size x size) with the given normalisation, by default
    the published one (see :class:`BrainScorePreprocessing`)."""
    return BrainScorePreprocessing(image_size, mean, std)


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> list:
    """The 1000 ImageNet class names, in logit order (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta['categories'])
