"""What the VOneBlock (vone/block.py) and a VOneNet (model.py) accept, checked before any method runs.

Every check but the last reads only the tensor's metadata (microseconds); the last is one
reduction over the batch that finds NaN or infinite pixels (a sum, which is finite exactly when
every pixel is, barring overflow; only a non-finite sum pays for an exact count). Without these
checks a wrong layout reaches the compiled kernels, which read out of bounds, and a non-finite
pixel spreads over the whole map on the Fourier methods but only over a patch with ``dense``.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..errors import VOneNetError

NORMALISE_HINT = ("scale pixels to [0, 1] with images.float() / 255, then normalise them as the VOneNets were "
                  "trained (mean = std = 0.5 per channel: (images - 0.5) / 0.5), or load files with "
                  "vonenet_brainscore.preprocessing.load_batch")


class InputError(VOneNetError, ValueError):
    """Images of a shape, size or content the VOneBlock cannot compute (the message says what to do)."""


class InputTypeError(InputError, TypeError):
    """Images that are not a floating-point torch tensor of the model's dtype and device."""


class NonFiniteInputError(InputError):
    """Images with NaN or infinite pixels."""


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}"


def check_images(x, *, name: str = 'images', where: str = 'the VOneBlock', in_channels: int = 3,
                 ksize: int = 1, padding: int = 0, check_finite: bool = True) -> None:
    """Raise :class:`InputError` unless ``x`` is a non-empty (N, in_channels, H, W) floating tensor,
    large enough for ``ksize`` filters at ``padding``, with finite pixels (when ``check_finite``).

    Under ``torch.jit.trace`` the example input is checked the same way (the checks record nothing
    in the trace, so the tracer's warnings about them are silenced)."""
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            return _check_images(x, name, where, in_channels, ksize, padding, check_finite)
    return _check_images(x, name, where, in_channels, ksize, padding, check_finite)


def _check_images(x, name, where, in_channels, ksize, padding, check_finite) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(
            f"{where} takes {name} as a torch.Tensor of shape (N, {in_channels}, H, W); got a "
            f"{type(x).__module__}.{type(x).__qualname__}. Convert it with torch.as_tensor(...) and put the "
            f"colour channel second (an image-ordered (N, H, W, {in_channels}) array: .permute(0, 3, 1, 2)).")
    shape = tuple(x.shape)
    if x.dim() != 4:
        if x.dim() == 3 and shape[0] == in_channels:
            hint = f"this looks like one image without a batch dimension: pass {name}.unsqueeze(0)"
        elif x.dim() == 3 and shape[-1] == in_channels:
            hint = (f"this looks like one image-ordered (H, W, {in_channels}) image: pass "
                    f"{name}.permute(2, 0, 1).unsqueeze(0)")
        elif x.dim() == 2:
            hint = f"this looks like one grey image: pass {name}.expand({in_channels}, -1, -1).unsqueeze(0)"
        elif x.dim() == 5:
            hint = (f"fold the extra dimension into the batch, e.g. {name}.flatten(0, 1) for "
                    f"(N, T, {in_channels}, H, W)")
        else:
            hint = f"reshape it to (N, {in_channels}, H, W)"
        raise InputError(f"{where} takes {name} of shape (N, {in_channels}, H, W) (4-D, colour channel second); "
                         f"got a {x.dim()}-D tensor of {_describe(x)}: {hint}.")
    if not x.is_floating_point():
        hint = NORMALISE_HINT if not x.is_complex() else f"pass the real images ({name}.real if that is what you mean)"
        if shape[1] != in_channels and shape[-1] == in_channels:
            hint += f", and put the colour channel second with {name}.permute(0, 3, 1, 2)"
        raise InputTypeError(f"{where} takes floating-point {name}; got {_describe(x)}: {hint}.")
    if shape[1] != in_channels:
        if shape[-1] == in_channels:
            hint = (f"this looks image-ordered (N, H, W, {in_channels}): pass {name}.permute(0, 3, 1, 2) "
                    f"(channels first)")
        elif shape[1] == 4:
            hint = f"drop the fourth (alpha?) channel with {name}[:, :3], or convert the images to RGB"
        elif shape[1] == 1:
            hint = f"repeat the grey channel with {name}.expand(-1, {in_channels}, -1, -1)"
        else:
            hint = f"convert the images to RGB with the colour channel second, (N, {in_channels}, H, W)"
        raise InputError(f"{where} takes {name} with {in_channels} colour channels in dimension 1, (N, "
                         f"{in_channels}, H, W); got {_describe(x)}: {hint}.")
    if shape[0] == 0:
        raise InputError(f"{where} got an empty batch of {name} ({_describe(x)}): pass at least one image.")
    smallest = max(1, ksize - 2 * padding)
    if shape[2] < smallest or shape[3] < smallest:
        raise InputError(f"{where} takes {name} of at least {smallest} x {smallest} pixels (its {ksize} px filters "
                         f"with {padding} px of padding); got {_describe(x)}: pass larger images (the VOneNets "
                         f"were trained on 224 x 224).")
    if check_finite:
        count = non_finite_count(x)
        if count:
            raise NonFiniteInputError(
                f"{where} got {count} NaN or infinite value(s) in {name} ({_describe(x)}); every method would "
                f"spread them over a different part of the map. Find where they come from, or replace them, e.g. "
                f"torch.nan_to_num({name}, nan=0.0, posinf=1.0, neginf=-1.0).")


def non_finite_count(x: torch.Tensor) -> int:
    """How many NaN or infinite values ``x`` holds; one reduction when there are none."""
    x = x.detach()
    total = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    if bool(torch.isfinite(total)):
        return 0
    return int((~torch.isfinite(x)).sum())  # a non-finite value, or finite values whose sum overflowed


def check_matches(x: torch.Tensor, weight: torch.Tensor, *, name: str = 'images', where: str = 'the VOneNet',
                  dtype_ok: Optional[bool] = None) -> None:
    """Raise :class:`InputTypeError` unless ``x`` is on ``weight``'s device (and dtype, unless
    ``dtype_ok`` says a mismatch is fine)."""
    if x.device != weight.device:
        raise InputTypeError(f"{where}'s weights are on {weight.device} but {name} are on {x.device}: move one to "
                             f"the other ({name}.to('{weight.device}') or model.to('{x.device}')).")
    if dtype_ok is None:
        dtype_ok = x.dtype == weight.dtype
    if not dtype_ok:
        raise InputTypeError(f"{where}'s weights are {weight.dtype} but {name} are {x.dtype}: pass "
                             f"{name}.to({weight.dtype}) (or convert the model with model.to({x.dtype})).")
