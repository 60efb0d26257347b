"""Image loading and the preprocessing VOneNets were trained with (mean = std = 0.5 per channel)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from .errors import StimulusError

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 224


def load_image(path) -> Image.Image:
    """An RGB PIL image; unreadable or missing files raise StimulusError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except FileNotFoundError:
        raise StimulusError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise StimulusError(f"image {path} cannot be read as an image ({error}); check the file "
                            f"is a complete PNG/JPEG/... and not empty or truncated") from error


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
    return torch.stack([transform(load_image(path)) for path in paths])


def brainscore_preprocessing(image_size: int = IMAGE_SIZE):
    """Brain-Score's loader (whole image resized to size x size) with VOneNet normalisation.

    A file that cannot be read raises StimulusError naming it (Brain-Score's loader would raise
    a bare PIL or OS error from deep inside the extraction).
    """
    from brainscore_vision.model_helpers.activations.pytorch import load_preprocess_images

    def preprocess(paths):
        try:
            return load_preprocess_images(paths, image_size=image_size, normalize_mean=MEAN, normalize_std=STD)
        except Exception as error:
            for path in paths:
                load_image(path)  # raises StimulusError for the first unreadable file
            raise StimulusError(f"images could not be preprocessed ({error})") from error
    return preprocess


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> list:
    """The 1000 ImageNet class names, in logit order (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta['categories'])
