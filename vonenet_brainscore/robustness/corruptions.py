"""Common image corruptions (ImageNet-C; Hendrycks & Dietterich 2019) through the ``imagecorruptions``
package, applied to un-normalised uint8 images at the model's resolution. Part of robustness/
(evaluate.py applies them beside the attacks).

Dapello, Marques et al. (2020) report VOneNet robustness to the 15 ImageNet-C corruptions
(noise, blur, weather, digital) at severities 1..5; ``imagecorruptions`` adds four held-out
validation corruptions (speckle_noise, gaussian_blur, spatter, saturate).

Compatibility: ``imagecorruptions`` 1.1.2 (its latest release) imports ``pkg_resources`` (gone
from setuptools >= 81) and calls ``skimage.filters.gaussian(..., multichannel=True)`` (the
keyword was removed from scikit-image; the replacement is ``channel_axis=-1``). Merely dropping
the keyword would blur across the colour channels too, so :func:`_load_imagecorruptions`
translates it instead. Nothing in site-packages is edited.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import os
import sys
import types
import warnings
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..errors import VOneNetError
from ..seeding import numpy_global_seed

LOG = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)
# The 15 ImageNet-C corruptions, in the benchmark's order (noise, blur, weather, digital).
COMMON_CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
                      'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
                      'elastic_transform', 'pixelate', 'jpeg_compression')
EXTRA_CORRUPTIONS = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
ALL_CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
BLUR_CORRUPTIONS = ('defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur', 'gaussian_blur')
MIN_SIDE = 32  # imagecorruptions refuses smaller images

INSTALL_HINT = "install it with `pip install imagecorruptions==1.1.2`"


class CorruptionError(VOneNetError, ValueError):
    """A corruption name, severity or image that the corruptions cannot take."""


def _resource_filename(package_or_module: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for a module or package inside an installed package."""
    module = sys.modules[package_or_module]
    return os.path.join(os.path.dirname(module.__file__), os.path.normpath(resource))


@contextlib.contextmanager
def _pkg_resources_stand_in():
    """Let ``from pkg_resources import resource_filename`` succeed while imagecorruptions is
    imported, when setuptools no longer ships pkg_resources; removed again afterwards so no
    other library mistakes the stand-in for the real thing."""
    if importlib.util.find_spec('pkg_resources') is not None:
        yield
        return
    stand_in = types.ModuleType('pkg_resources')
    stand_in.resource_filename = _resource_filename
    sys.modules['pkg_resources'] = stand_in
    try:
        yield
    finally:
        if sys.modules.get('pkg_resources') is stand_in:
            del sys.modules['pkg_resources']


def _gaussian_accepting_multichannel(gaussian):
    """Wrap scikit-image's ``gaussian`` so the removed ``multichannel=True`` means ``channel_axis=-1``
    (blur each colour channel, not across them)."""
    @functools.wraps(gaussian)
    def compatible(image, *args, multichannel=None, **kwargs):
        if multichannel and 'channel_axis' not in kwargs:
            kwargs['channel_axis'] = -1
        return gaussian(image, *args, **kwargs)
    return compatible


@functools.lru_cache(maxsize=1)
def _load_imagecorruptions() -> types.ModuleType:
    """Import ``imagecorruptions`` and adapt it to current setuptools and scikit-image."""
    try:
        with _pkg_resources_stand_in(), warnings.catch_warnings():
            # It imports map_coordinates from scipy's deprecated ndimage.interpolation namespace.
            warnings.filterwarnings('ignore', category=DeprecationWarning, message='.*scipy.ndimage')
            import imagecorruptions
            from imagecorruptions import corruptions as implementation
    except ImportError as error:
        raise ImportError(f"common corruptions need the imagecorruptions package ({error}); "
                          f"{INSTALL_HINT}") from error
    gaussian = implementation.gaussian
    if 'multichannel' not in inspect.signature(gaussian).parameters:
        implementation.gaussian = _gaussian_accepting_multichannel(gaussian)
        LOG.debug("imagecorruptions: translating multichannel=True to channel_axis=-1 for scikit-image")
    return imagecorruptions


def corruption_names(subset: str = 'common') -> list:
    """Names of the corruptions: ``common`` (ImageNet-C's 15), ``extra`` (4 validation ones), ``all``,
    ``blur``."""
    subsets = {'common': COMMON_CORRUPTIONS, 'extra': EXTRA_CORRUPTIONS, 'all': ALL_CORRUPTIONS,
               'blur': BLUR_CORRUPTIONS}
    if subset not in subsets:
        raise CorruptionError(f"unknown corruption subset {subset!r}; choose one of {sorted(subsets)}")
    return list(subsets[subset])


def check_corruption(name: str, severity: int) -> None:
    """Fail early, before any model runs, on a misspelt corruption or an out-of-range severity."""
    if name not in ALL_CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}; choose from {', '.join(ALL_CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise CorruptionError(f"corruption severity must be an integer in 1..5, got {severity!r}")


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: Optional[int] = None) -> np.ndarray:
    """One HxWx3 uint8 image corrupted by ``name`` at ``severity`` (1..5): same shape, uint8, [0, 255].

    ``seed`` makes the random corruptions (noise, glass, motion, snow, frost, ...) reproducible.
    """
    check_corruption(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise CorruptionError(f"corruptions take HxWx3 uint8 images, got dtype {image.dtype} and shape "
                              f"{image.shape}; convert with to_uint8_images() first")
    if min(image.shape[:2]) < MIN_SIDE:
        raise CorruptionError(f"image is {image.shape[0]}x{image.shape[1]} pixels; corruptions need at "
                              f"least {MIN_SIDE}x{MIN_SIDE} (apply them at the model's resolution)")
    function = _load_imagecorruptions().corruption_dict[name]
    from PIL import Image
    captured = io.StringIO()  # zoom_blur prints a notice instead of warning
    with numpy_global_seed(seed), contextlib.redirect_stdout(captured):
        corrupted = np.asarray(function(Image.fromarray(image), severity))
    if captured.getvalue().strip():
        LOG.debug("imagecorruptions %s: %s", name, captured.getvalue().strip())
    return _as_uint8_like(corrupted, image.shape, name)


def _as_uint8_like(corrupted: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    """Round and clip to uint8 (imagecorruptions returns floats, and a plain uint8 cast would wrap
    values outside [0, 255]); the shape must come back unchanged."""
    if corrupted.ndim == 2:
        corrupted = np.repeat(corrupted[..., None], 3, axis=2)
    if corrupted.shape != shape:
        raise CorruptionError(f"corruption {name!r} returned shape {corrupted.shape} for an image of shape "
                              f"{shape}; report this with the imagecorruptions and scikit-image versions")
    return np.clip(np.rint(corrupted), 0, 255).astype(np.uint8)


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [0, 1] -> (N, H, W, 3) uint8, the corruptions' input."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise CorruptionError(f"expected a batch (N, 3, H, W) of RGB images, got shape {tuple(images.shape)}")
    array = images.detach().to('cpu', torch.float32).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.rint(array * 255).astype(np.uint8)


def from_uint8_images(images: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) floats in [0, 1] on ``like``'s device and dtype."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return (tensor.to(torch.float32) / 255).to(device=like.device, dtype=like.dtype)


def corrupt_batch(images: torch.Tensor, name: str, severity: int, seed: Optional[int] = None) -> torch.Tensor:
    """A batch (N, 3, H, W) in [0, 1] corrupted image by image; image i uses seed ``seed + i``."""
    check_corruption(name, severity)
    arrays = to_uint8_images(images)
    corrupted = np.stack([corrupt_image(array, name, severity, None if seed is None else seed + i)
                          for i, array in enumerate(arrays)])
    return from_uint8_images(corrupted, images)


def check_corruptions(names: Iterable[str], severities: Sequence[int]) -> None:
    """Validate every (name, severity) pair up front."""
    for name in names:
        for severity in severities:
            check_corruption(name, severity)
