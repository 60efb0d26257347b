"""A VOneNet: the V1 model (``vone/``) -> 1x1 bottleneck -> a back-end (``backends/``), with the
original module names, so published checkpoints load into it key for key. Everything above this
floor (published weights, brain models, scoring, training) builds its networks here."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from .backends import build_backend, first_conv_in_channels
from .seeding import torch_global_seed
from .vone.block import VOneBlock, VOneBlockConfig
from .vone.inputs import check_images, check_matches

BOTTLENECK_CHANNELS = 64


class VOneNet(nn.Sequential):
    """``vone_block`` -> ``bottleneck`` -> ``model``: the published VOneNets' layout and key names.

    ``arch`` names the back-end (or ``None`` for a custom one); ``config`` is the VOneBlock's.
    """

    config = property(lambda self: self.vone_block.config, doc="The VOneBlock's settings (read-only).")
    image_size = property(lambda self: self.config.image_size, doc="The side, in pixels, of the images it takes.")
    visual_degrees = property(lambda self: self.config.visual_degrees, doc="How many degrees those images span.")

    def __init__(self, vone_block: VOneBlock, backend: Optional[nn.Module], arch: Optional[str] = None,
                 bottleneck_channels: int = BOTTLENECK_CHANNELS):
        modules = OrderedDict(vone_block=vone_block)
        if backend is not None:
            bottleneck = nn.Conv2d(vone_block.config.out_channels, bottleneck_channels, kernel_size=1, bias=False)
            nn.init.kaiming_normal_(bottleneck.weight, mode='fan_out', nonlinearity='relu')
            modules['bottleneck'] = bottleneck
            modules['model'] = backend
        super().__init__(modules)
        self.arch = arch

    def forward(self, images):
        """Logits (or the VOneBlock's output, without a back-end) for a normalised (N, 3, H, W) batch.

        Checked first (metadata only; the VOneBlock then checks the pixels are finite): a wrong
        layout, dtype, device or size raises an :class:`~vonenet_brainscore.vone.inputs.InputError`
        saying what to pass instead, before any work is done.
        """
        block = self.vone_block
        check_images(images, where='the VOneNet', in_channels=block.in_channels, ksize=block.config.ksize,
                     padding=block.config.padding, check_finite=False)
        weight = getattr(self._modules.get('bottleneck'), 'weight', None)
        if isinstance(weight, torch.Tensor):  # the block's output must suit the back-end's weights
            check_matches(images, weight, where='the VOneNet')
        return super().forward(images)


def build_vonenet(arch: Optional[str] = 'resnet50', *, num_classes: int = 1000, init_seed: Optional[int] = 0,
                  noise_seed: Optional[int] = None, config: Optional[VOneBlockConfig] = None,
                  **vone_settings) -> VOneNet:
    """A VOneNet with a registered back-end (``resnet50``, ``alexnet``, ``cornets``), untrained.

    ``arch=None`` gives the VOneBlock alone. VOneBlock settings (``noise_mode=None``,
    ``gabor_seed=1``, ...) are keyword arguments. ``init_seed`` seeds the bottleneck and back-end
    initialisation (None: torch's global RNG); the Gabor filters use their own seeds.
    """
    vone_block = VOneBlock(config, noise_seed=noise_seed, **vone_settings)
    if arch is None:
        return VOneNet(vone_block, None)
    with torch_global_seed(init_seed):
        backend = build_backend(arch, num_classes=num_classes)
        return VOneNet(vone_block, backend, arch=arch)


def vonenet_from_backend(backend: nn.Module, *, init_seed: Optional[int] = 0, noise_seed: Optional[int] = None,
                         config: Optional[VOneBlockConfig] = None, **vone_settings) -> VOneNet:
    """Put a VOneBlock in front of any back-end whose first convolution takes the bottleneck output.

    Strip the network's stem first, e.g.
    ``vonenet_from_backend(strip_stem(torchvision.models.resnet18()))``. The bottleneck maps the
    VOneBlock's channels to the input channels of the back-end's first remaining convolution.
    """
    vone_block = VOneBlock(config, noise_seed=noise_seed, **vone_settings)
    with torch_global_seed(init_seed):
        return VOneNet(vone_block, backend, arch=None, bottleneck_channels=first_conv_in_channels(backend))
