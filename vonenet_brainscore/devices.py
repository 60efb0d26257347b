"""Where a model runs: the one device choice for validation, training and robustness evaluation.

A foundation module (beside paths and seeding): the uses of a model above name a device or a number of
GPUs, and this turns it into a ``torch.device``, checking that the GPUs exist so that a run fails before
any work. It also unwraps the parallel wrappers that several GPUs put around a network.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .errors import DeviceError

DeviceLike = Union[str, torch.device, None]


def visible_gpus() -> int:
    """How many CUDA devices torch can use here."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: DeviceLike = None, *, ngpus: Optional[int]) -> torch.device:
    """``device`` when given, else the device ``ngpus`` asks for; GPUs are checked to exist.

    ``ngpus`` is each caller's documented default made explicit: ``0`` is the CPU, ``n >= 1`` the first
    of ``n`` GPUs (validation and training), ``None`` CUDA when available, else the CPU (robustness).
    """
    if device is not None:
        device = torch.device(device)  # torch's RuntimeError names the accepted spellings
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise DeviceError(f"device {device} was requested but CUDA is not available here; "
                              f"use device='cpu' or run on a machine with a GPU")
        return device
    if ngpus is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if ngpus < 0:
        raise ValueError(f"ngpus must be >= 0, got {ngpus}")
    if ngpus == 0:
        return torch.device('cpu')
    available = visible_gpus()
    if available < ngpus:
        raise DeviceError(f"{ngpus} GPU(s) requested but {available} available to torch {torch.__version__} "
                          f"(CUDA {torch.version.cuda}); use ngpus=0 to run on the CPU, or fewer GPUs")
    return torch.device('cuda', 0)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model
