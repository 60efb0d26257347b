"""Put any torchvision-style network behind a VOneBlock by removing its stem.

The VOneBlock and the 1x1 bottleneck replace the network's first layers; the stem modules are
swapped for ``nn.Identity`` so the network's own ``forward`` still runs and its state_dict keys
(``layer1.0.conv1.weight`` ...) stay those of the original network.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

# The stems of torchvision's ResNet family (resnet18 ... wide_resnet101_2, resnext).
RESNET_STEM = ('conv1', 'bn1', 'relu', 'maxpool')


def strip_stem(network: nn.Module, stem: Sequence[str] = RESNET_STEM) -> nn.Module:
    """Replace the named top-level stem modules of ``network`` by ``nn.Identity`` (in place)."""
    missing = [name for name in stem if not hasattr(network, name)]
    if missing:
        children = ', '.join(name for name, _ in network.named_children())
        raise ValueError(f"{type(network).__name__} has no stem module(s) {missing}; its top-level "
                         f"modules are: {children}. Pass stem=(...) naming the modules to remove.")
    for name in stem:
        setattr(network, name, nn.Identity())
    return network


def first_conv_in_channels(network: nn.Module) -> int:
    """Input channels the stripped network expects: those of its first remaining convolution."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"{type(network).__name__} has no nn.Conv2d left after removing its stem")
