"""Models that take images in [0, 1]: the VOneNet with its 0.5/0.5 normalisation inside, and the
"plain back-end" comparison (torchvision's own network with ImageNet normalisation inside). The first
step of robustness/: what evaluate.py attacks and corrupts.

Attacks and corruptions act on pixels, so every compared model must own its normalisation:
then eps means the same pixel change for every model (Dapello, Marques et al. 2020 attack the
VOneNets and their base CNNs this way).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from ..preprocessing import MEAN as VONENET_MEAN, STD as VONENET_STD
from ..published.checkpoints import normalise_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelSpaceModel(nn.Module):
    """``model((x - mean) / std)`` for images ``x`` in [0, 1]; ``model`` is the wrapped network."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need one value per RGB channel and std > 0, got mean={mean}, std={std}")
        self.model = model
        # Buffers follow .to(device) and are not trained.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean.to(images.dtype)) / self.std.to(images.dtype))


def pixel_space_model(model: nn.Module, mean: Sequence[float] = VONENET_MEAN,
                      std: Sequence[float] = VONENET_STD) -> PixelSpaceModel:
    """Wrap a network so it takes [0, 1] images; the defaults are the VOneNets' mean = std = 0.5."""
    if isinstance(model, PixelSpaceModel):
        raise ValueError("model already normalises its input; wrapping it again would normalise twice")
    return PixelSpaceModel(model, mean, std)


def _torchvision_constructor(arch: str):
    """torchvision's classification network ``arch`` (e.g. resnet50, alexnet)."""
    import torchvision
    try:
        return torchvision.models.get_model_builder(arch)
    except ValueError:
        known = ', '.join(sorted(torchvision.models.list_models(module=torchvision.models)))
        hint = (" (CORnet-S is not in torchvision: wrap your own network with pixel_space_model(net, "
                "IMAGENET_MEAN, IMAGENET_STD))" if arch.lower().startswith('cornet') else '')
        raise ValueError(f"torchvision has no classification model {arch!r}{hint}; known: {known}") from None


def _state_dict_from(path: Path, map_location) -> dict:
    """The weights in a checkpoint file: a bare state dict or one under 'state_dict'/'model', with
    any DataParallel 'module.' prefix removed."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist") from None
    except Exception as error:
        raise CheckpointError(f"weights file {path} cannot be read as a PyTorch checkpoint ({error}); "
                              f"check it is complete and was saved with torch.save") from error
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"weights file {path} holds no state dict of tensors")
    return normalise_state_dict(checkpoint)


def plain_backend_model(arch: str, num_classes: int = 1000, weights_path=None,
                        map_location='cpu') -> PixelSpaceModel:
    """torchvision's ``arch`` (untrained unless ``weights_path`` is given) with ImageNet
    normalisation inside: the CNN a VOneNet with the same back-end is compared against."""
    network = _torchvision_constructor(arch)(weights=None, num_classes=num_classes)
    if weights_path is not None:
        path = Path(weights_path)
        try:
            network.load_state_dict(_state_dict_from(path, map_location))
        except RuntimeError as error:
            raise CheckpointError(f"weights file {path} does not fit torchvision's {arch} with "
                                  f"{num_classes} classes ({str(error).splitlines()[0]})") from error
    return pixel_space_model(network, IMAGENET_MEAN, IMAGENET_STD)
