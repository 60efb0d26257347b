"""Stimulus images as 8-bit RGB, from every Pillow mode, with errors that name the file.

On the foundation floor: ``preprocessing`` loads every image through :func:`open_rgb`, and the V1 scoring
screen converts in-memory images with :func:`to_rgb`, so files and memory follow the same rules.

Brain-Score's loader (``brainscore_vision.model_helpers.activations.pytorch.load_image``) means to
hand every image on as RGB, but it only converts modes whose name holds L, A or P: a CMYK JPEG keeps
4 channels, YCbCr and HSV pass as if they were RGB, and 1-bit, 16-bit and float images keep one
channel (or clip). ``open_rgb`` converts every mode, by these rules:

- ``RGB``: unchanged.
- 8-bit modes (``1 L P PA LA RGBA RGBX CMYK YCbCr HSV``): Pillow's own ``convert('RGB')``, which is
  what Brain-Score's loader gives wherever it gives RGB at all, pixel for pixel (CMYK: the plain
  ``(255 - C)(255 - K) / 255``; YCbCr: JFIF's full-range BT.601, in fixed point). Alpha is dropped,
  not composited: the colour stored under a transparent pixel is kept, as Brain-Score's loader does
  for RGBA, LA and P images, so a stimulus gives the same activations as through any stock
  Brain-Score model; compositing would need a background colour that the file does not record.
  A palette image with per-entry transparency goes through RGBA first (same colours, no warning).
- ``LAB`` (CIELAB, D50, as TIFF stores it): to sRGB with LittleCMS, without the 8-bit lookup table
  that ``convert('RGB')`` interpolates in (off by up to 40 levels near the gamut edge); colours outside
  sRGB are clipped per channel.
- 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit integer greyscale (``I``,
  which is how Pillow opens a 16-bit PGM): the 16-bit scale, ``v >> 8``, as Pillow itself reads
  16-bit colour PNGs; an 8-bit image stored as 16 bits (``v * 257``) comes back exactly. ``I``
  values outside 0..65535 are an error, not clipped.
- float greyscale (``F``): the 0..1 scale, ``round(255 * v)``, the inverse of torchvision's
  ``ToTensor``. Values that do not round into 0..255, NaN and infinity are an error, not clipped.
- grey results are repeated into R = G = B. Embedded ICC profiles and EXIF orientation are not
  applied (neither Brain-Score nor torchvision's ImageNet loader applies them); a multi-frame file
  gives its first frame.

Errors are ``StimulusError`` and name the file: missing, a folder, unreadable, not an image, truncated
or corrupt, an unconvertible mode, and decompression bombs. Images with more pixels than
``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's guard, 89 478 485 by default) are refused outright, where
Pillow only warns up to twice the limit; ``VONENET_BRAINSCORE_MAX_IMAGE_PIXELS`` sets that limit for
the process (``none`` turns the check off), for trusted files.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import StimulusError, VOneNetError

PIXEL_LIMIT_VARIABLE = 'VONENET_BRAINSCORE_MAX_IMAGE_PIXELS'
SIXTEEN_BIT_MODES = frozenset({'I;16', 'I;16B', 'I;16L', 'I;16N'})
_TRUST_HINT = ("if you trust the file, raise the limit: PIL.Image.MAX_IMAGE_PIXELS = <pixels> in Python, or "
               f"{PIXEL_LIMIT_VARIABLE}=<pixels> in the environment ('none' turns the check off)")


def apply_pixel_limit() -> None:
    """Set Pillow's decompression-bomb limit from ``VONENET_BRAINSCORE_MAX_IMAGE_PIXELS``, when it is set."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE, '').strip()
    if not value:
        return
    if value.lower() in ('none', 'off'):
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        limit = int(value.replace('_', ''))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise VOneNetError(f"{PIXEL_LIMIT_VARIABLE}={value!r} must be a positive whole number of pixels, "
                           f"or 'none' to turn Pillow's decompression-bomb check off")
    Image.MAX_IMAGE_PIXELS = limit


def open_rgb(path) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image (see the module docstring for the rules).

    Every failure raises ``StimulusError`` naming the file and what to do.
    """
    name = os.fspath(path)
    apply_pixel_limit()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit: refuse the whole band, naming the file.
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(name) as image:
                image.load()
                return to_rgb(image, name)
    except StimulusError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise StimulusError(f"image {name} is too large to open safely: {error} Pillow refuses images over "
                            f"{Image.MAX_IMAGE_PIXELS} pixels because a small file can decode to gigabytes; "
                            f"{_TRUST_HINT}") from None
    except FileNotFoundError:
        raise StimulusError(f"image {name} does not exist; check the path or the stimulus set's "
                            f"stimulus_paths") from None
    except IsADirectoryError:
        raise StimulusError(f"image {name} is a folder, not an image file") from None
    except PermissionError:
        raise StimulusError(f"image {name} cannot be read: permission denied; make the file readable") from None
    except UnidentifiedImageError:
        empty = os.path.isfile(name) and os.path.getsize(name) == 0
        raise StimulusError(f"image {name} " + ("is an empty file" if empty else
                            "is not an image Pillow can read (not an image, or a format Pillow does not "
                            "support)") + "; replace it with a PNG, JPEG or TIFF image") from None
    except Exception as error:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        raise StimulusError(f"image {name} cannot be decoded, it is truncated or corrupt "
                            f"({type(error).__name__}: {error}); replace the file") from error


def to_rgb(image: Image.Image, name: str = '<image>') -> Image.Image:
    """A loaded PIL image of any mode as 8-bit RGB; ``name`` is the file named in errors."""
    mode = image.mode
    if mode == 'RGB':
        return image.copy()  # a copy outlives the closed file (Pillow closes the image with it)
    if mode in SIXTEEN_BIT_MODES or mode == 'I':
        values = np.asarray(image)
        if mode == 'I' and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise StimulusError(
                f"image {name} holds 32-bit integer pixels from {values.min()} to {values.max()}; integer "
                f"greyscale is read on the 16-bit scale (0..65535) and these lie outside it: rescale the "
                f"image to 0..65535 (16-bit) or 0..255 (8-bit) and save it again")
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey, 'L').convert('RGB')
    if mode == 'F':
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise StimulusError(f"image {name} holds NaN or infinite pixels; replace them and save the image again")
        levels = np.rint(values * 255.0)
        if values.size and (levels.min() < 0 or levels.max() > 255):
            raise StimulusError(
                f"image {name} holds float pixels from {values.min():g} to {values.max():g}; float greyscale "
                f"is read on the 0..1 scale (0 black, 1 white) and these lie outside it: rescale the "
                f"image to 0..1, or save it as an 8-bit image")
        return Image.fromarray(levels.astype(np.uint8), 'L').convert('RGB')
    if mode == 'LAB':
        try:
            return _lab_to_srgb(image)
        except Exception as error:  # noqa: BLE001 - no LittleCMS in this Pillow, or it failed
            raise StimulusError(f"image {name} is a CIELAB image, and converting it to RGB needs Pillow "
                                f"with LittleCMS ({error}); save it as an RGB image") from None
    try:
        if mode == 'P' and 'transparency' in image.info:  # bytes transparency: Pillow would warn
            return image.convert('RGBA').convert('RGB')
        return image.convert('RGB')
    except ValueError as error:
        raise StimulusError(f"image {name} has the Pillow mode {mode!r}, which cannot be converted to RGB "
                            f"({error}); save it as an 8-bit RGB or greyscale image") from None


def _lab_to_srgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms
    return ImageCms.applyTransform(image, _lab_transform())


@functools.lru_cache(maxsize=1)
def _lab_transform():
    from PIL import ImageCms
    return ImageCms.buildTransform(ImageCms.createProfile('LAB'), ImageCms.createProfile('sRGB'), 'LAB', 'RGB',
                                   flags=ImageCms.Flags.NOOPTIMIZE)
