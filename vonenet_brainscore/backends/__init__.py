"""Back-ends that sit behind a VOneBlock (the floor beside vone/; model.py joins the two).

Importing this package registers the built-in back-ends (alexnet, cornets, resnet50) in registry.py,
so it imports them eagerly: they are what ``build_backend`` builds, and the Brain-Score plugin carries
the modules that import statements reach.
"""
from . import alexnet, cornets, resnet  # noqa: F401  (registration side effect)
from .registry import build_backend, classifier_of, list_backends, register_backend
from .torchvision_adapter import RESNET_STEM, first_conv_in_channels, strip_stem

__all__ = ['build_backend', 'classifier_of', 'list_backends', 'register_backend', 'strip_stem',
           'first_conv_in_channels', 'RESNET_STEM']
