"""Gabor kernels and the VOneBlock's filter bank, in which each filter sees one colour channel."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def gabor_kernels(frequency, sigma_x, sigma_y, theta, phase, ksize: int) -> torch.Tensor:
    """A stack of Gabor kernels, shape (n, ksize, ksize), float32.

    Arguments are per-filter arrays in pixel units (cycles/px, px) and radians. The axis convention
    is the original VOneNet's: ``x`` runs down the rows and ``y`` along the columns, so the
    published checkpoints' filters and freshly built ones agree.
    """
    as_column = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(-1, 1, 1)
    frequency, sigma_x, sigma_y, theta, phase = map(as_column, (frequency, sigma_x, sigma_y, theta, phase))
    half = ksize // 2
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    x, y = grid.reshape(1, -1, 1), grid.reshape(1, 1, -1)
    along = x * torch.cos(theta) + y * torch.sin(theta)
    across = -x * torch.sin(theta) + y * torch.cos(theta)
    envelope = torch.exp(-0.5 * (along ** 2 / sigma_x ** 2 + across ** 2 / sigma_y ** 2))
    envelope = envelope / (2 * np.pi * sigma_x * sigma_y)
    return (envelope * torch.cos(2 * np.pi * frequency * along + phase)).to(torch.float32)


def assign_colour_channels(n_filters: int, in_channels: int, generator: torch.Generator) -> torch.Tensor:
    """The colour channel each filter reads, drawn from ``generator``.

    One ``randint`` call per filter bank, as in the original, so a generator seeded with ``s`` gives
    the assignment the original code gives after ``torch.manual_seed(s)``.
    """
    return torch.randint(0, in_channels, (n_filters,), generator=generator)


class GaborFilterBank(nn.Module):
    """A fixed strided convolution whose filters are Gabor kernels, each on one input channel.

    The weight is a frozen ``nn.Parameter`` named ``weight`` (shape out x in x k x k) so checkpoint
    keys (``vone_block.simple_conv_q0.weight``) match the published models.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 4):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size),
                                   requires_grad=False)

    @torch.no_grad()
    def initialize(self, kernels: torch.Tensor, channels: torch.Tensor) -> None:
        """Place kernel ``i`` on input channel ``channels[i]``; all other channels stay zero."""
        self.weight.zero_()
        self.weight[torch.arange(self.out_channels), channels] = kernels.to(self.weight)

    def colour_channels(self) -> torch.Tensor:
        """The input channel each filter reads, recovered from the weights (exact for checkpoints)."""
        energy = self.weight.detach().abs().sum(dim=(2, 3))
        return energy.argmax(dim=1)

    def forward(self, x, padding=None):
        """``padding=0`` computes only outputs whose receptive field lies inside ``x`` (for crops)."""
        return F.conv2d(x, self.weight, None, self.stride, self.padding if padding is None else padding)

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}')
