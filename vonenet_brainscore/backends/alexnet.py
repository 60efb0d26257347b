"""AlexNet back-end (registered as ``alexnet``): torchvision's AlexNet after its first convolution and pooling.

The VOneBlock (stride 4) and bottleneck replace conv1 + pool1; the next convolution takes stride 2
so that the feature maps keep AlexNet's sizes (56 -> 28 -> 14 -> 7 at 224 px). Indices in
``features`` and ``classifier`` are those of the published VOneAlexNet checkpoint.
"""
import torch
from torch import nn

from .registry import register_backend


class AlexNetBackEnd(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(64, 192, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 7 * 7, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_backend('alexnet', classifier='classifier.6')
def alexnet_backend(num_classes: int = 1000) -> AlexNetBackEnd:
    return AlexNetBackEnd(num_classes=num_classes)
