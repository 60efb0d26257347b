"""Back-ends that sit behind a VOneBlock. Importing a back-end module registers it."""
from . import alexnet, cornets, resnet  # noqa: F401  (registration side effect)
from .registry import build_backend, list_backends, register_backend
from .torchvision_adapter import RESNET_STEM, first_conv_in_channels, strip_stem

__all__ = ['build_backend', 'list_backends', 'register_backend', 'strip_stem', 'first_conv_in_channels',
           'RESNET_STEM']
