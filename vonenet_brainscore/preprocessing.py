"""Image loading and the preprocessing VOneNets were trained with (mean = std = 0.5 per channel)."""
from __future__ import annotations

import functools
from typing import Iterable

import torch
from PIL import Image
from torchvision import transforms

from .errors import StimulusError
from .images import open_rgb, to_rgb  # noqa: F401 (to_rgb: the same rules for in-memory images)

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 224


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


def brainscore_preprocessing(image_size: int = IMAGE_SIZE):
    """Brain-Score's loader (whole image resized to size x size) with VOneNet normalisation.

    Brain-Score's own resize and normalisation (``preprocess_images``), fed by ``load_image``: every
    Pillow mode becomes RGB as Brain-Score's loader means it to (where that loader gives RGB, the
    pixels are the same), and a file that cannot be read raises StimulusError naming it.
    """
    from brainscore_vision.model_helpers.activations.pytorch import preprocess_images

    def preprocess(paths):
        return preprocess_images([load_image(path) for path in paths], image_size=image_size,
                                 normalize_mean=MEAN, normalize_std=STD)
    return preprocess


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> list:
    """The 1000 ImageNet class names, in logit order (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta['categories'])
