"""ResNet-50 back-end (registered as ``resnet50``): torchvision's ResNet-50 without its stem.

The VOneBlock replaces the stem (torchvision_adapter.strip_stem).

torchvision's bottleneck blocks carry the module names of the published VOneResNet50 checkpoints
(``model.layer1.0.conv1`` ...) and the same initialisation (Kaiming fan-out, BN weight 1, bias 0).
"""
from torchvision.models.resnet import Bottleneck, ResNet

from .registry import register_backend
from .torchvision_adapter import strip_stem


@register_backend('resnet50', classifier='fc')
def resnet50_backend(num_classes: int = 1000) -> ResNet:
    return strip_stem(ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes))
