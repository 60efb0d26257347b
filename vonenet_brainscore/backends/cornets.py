"""CORnet-S back-end (registered as ``cornets``; Kubilius et al. 2019): recurrent areas V2, V4 and IT, then a decoder.

Each area runs ``times`` recurrent steps with a separate BatchNorm per step. The area's ``output``
module is called once per step, so a forward hook on ``model.V4.output`` sees every time step in
order: that is how brain models map time steps to time bins.
"""
from collections import OrderedDict

import math

from torch import nn

from .registry import register_backend


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class CORblockS(nn.Module):
    """One recurrent CORnet-S area; the first step downsamples by 2, later steps keep the size."""

    scale = 4  # expansion of the bottleneck convolution channels

    def __init__(self, in_channels: int, out_channels: int, times: int = 1):
        super().__init__()
        self.times = times
        wide = out_channels * self.scale
        self.conv_input = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.skip = nn.Conv2d(out_channels, out_channels, kernel_size=1, stride=2, bias=False)
        self.norm_skip = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(out_channels, wide, kernel_size=1, bias=False)
        self.nonlin1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(wide, wide, kernel_size=3, stride=2, padding=1, bias=False)
        self.nonlin2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(wide, out_channels, kernel_size=1, bias=False)
        self.nonlin3 = nn.ReLU(inplace=True)
        self.output = nn.Identity()
        for t in range(times):  # one set of norms per time step (names as in the checkpoints)
            setattr(self, f'norm1_{t}', nn.BatchNorm2d(wide))
            setattr(self, f'norm2_{t}', nn.BatchNorm2d(wide))
            setattr(self, f'norm3_{t}', nn.BatchNorm2d(out_channels))

    def forward(self, inp):
        x = self.conv_input(inp)
        for t in range(self.times):
            first = t == 0
            skip = self.norm_skip(self.skip(x)) if first else x
            self.conv2.stride = (2, 2) if first else (1, 1)
            x = self.nonlin1(getattr(self, f'norm1_{t}')(self.conv1(x)))
            x = self.nonlin2(getattr(self, f'norm2_{t}')(self.conv2(x)))
            x = getattr(self, f'norm3_{t}')(self.conv3(x))
            x += skip
            x = self.output(self.nonlin3(x))
        return x


class CORnetSBackEnd(nn.Module):
    """V2 (2 steps), V4 (4 steps), IT (2 steps) and the decoder of CORnet-S."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.V2 = CORblockS(64, 128, times=2)
        self.V4 = CORblockS(128, 256, times=4)
        self.IT = CORblockS(256, 512, times=2)
        self.decoder = nn.Sequential(OrderedDict([
            ('avgpool', nn.AdaptiveAvgPool2d(1)),
            ('flatten', Flatten()),
            ('linear', nn.Linear(512, num_classes)),
            ('output', nn.Identity()),
        ]))
        for module in self.modules():  # CORnet-S's initialisation (the linear layer keeps torch's)
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0, math.sqrt(2. / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.decoder(self.IT(self.V4(self.V2(x))))


@register_backend('cornets', classifier='decoder.linear')
def cornets_backend(num_classes: int = 1000) -> CORnetSBackEnd:
    return CORnetSBackEnd(num_classes=num_classes)
