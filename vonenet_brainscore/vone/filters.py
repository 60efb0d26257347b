"""Step two of the V1 model (vone/: params -> filters -> block): Gabor kernels, the filter bank, and the
facts every way of computing it shares: a filter reads one colour channel, and a strided
convolution's output size.

The fast methods in ``accel/`` regroup the filters by the colour they read; the grouping and the
size rule live here, once, so each method computes the block's outputs on the same grid.
"""
from __future__ import annotations

from typing import Hashable, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def output_side(length: int, ksize: int, stride: int, padding: int) -> int:
    """Outputs along one axis of a strided ``ksize`` convolution of ``length`` inputs padded by
    ``padding`` on each side (torch's rule, so every method computes the dense path's grid)."""
    return (length + 2 * padding - ksize) // stride + 1


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


# --- colour channels --------------------------------------------------------------------------------
def assign_colour_channels(n_filters: int, in_channels: int, generator: torch.Generator) -> torch.Tensor:
    """The colour channel each filter reads, drawn from ``generator``.

    One ``randint`` call per filter bank, as in the original, so a generator seeded with ``s`` gives
    the assignment the original code gives after ``torch.manual_seed(s)``.
    """
    return torch.randint(0, in_channels, (n_filters,), generator=generator)


def on_colour_channels(kernels: torch.Tensor, channels: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(n, in_channels, k, k) weights: kernel ``i`` on input channel ``channels[i]``, zeros elsewhere."""
    weight = kernels.new_zeros((kernels.shape[0], in_channels) + tuple(kernels.shape[1:]))
    weight[torch.arange(kernels.shape[0]), channels] = kernels
    return weight


class NotSingleChannel(ValueError):
    """A filter bank in which some filter reads more than one colour channel."""


def colour_channels(weight: torch.Tensor) -> torch.Tensor:
    """The input channel each filter of ``weight`` (out x in x k x k) reads, read from the weights
    themselves (so exact for any assignment, the published checkpoints' included); raises
    :class:`NotSingleChannel` if a filter reads several. An all-zero filter reads channel 0."""
    nonzero = weight.detach().flatten(2).ne(0).any(dim=2)
    counts = nonzero.sum(dim=1)
    if (counts > 1).any():
        raise NotSingleChannel(f"{int((counts > 1).sum())} filter(s) read more than one colour channel")
    return nonzero.float().argmax(dim=1)


def colour_groups(keys: Sequence[Hashable]) -> List[Tuple[Hashable, List[int]]]:
    """(key, rows) for each distinct key of ``keys`` (row i's colour, or colours), keys sorted and
    rows ascending: the one order in which every fast method visits the filters."""
    groups: dict = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return sorted(groups.items())


def cell_filters(q0: torch.Tensor, q1: torch.Tensor, simple_channels: int
                 ) -> Tuple[torch.Tensor, List[Tuple[int, List[int]]]]:
    """The filters the cells use, every q0 filter then the complex cells' q1 filters (simple cells
    use q0 only), and their rows grouped by the colour channel they read."""
    filters = torch.cat([q0, q1[simple_channels:]])
    channels = torch.cat([colour_channels(q0), colour_channels(q1[simple_channels:])])
    return filters, colour_groups(channels.tolist())


class GaborFilterBank(nn.Module):
    """A fixed strided convolution whose filters are Gabor kernels, each on one input channel.

    The weight is a frozen ``nn.Parameter`` named ``weight`` (shape out x in x k x k) so checkpoint
    keys (``vone_block.simple_conv_q0.weight``) match the published models.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size),
                                   requires_grad=False)

    @torch.no_grad()
    def initialize(self, kernels: torch.Tensor, channels: torch.Tensor) -> None:
        """Place kernel ``i`` on input channel ``channels[i]``; all other channels stay zero."""
        self.weight.copy_(on_colour_channels(kernels.to(self.weight), channels, self.in_channels))

    def colour_channels(self) -> torch.Tensor:
        """The input channel each filter reads, recovered from the weights (exact for checkpoints)."""
        return colour_channels(self.weight)

    def forward(self, x, padding=None):
        """``padding=0`` computes only outputs whose receptive field lies inside ``x`` (for crops)."""
        return F.conv2d(x, self.weight, None, self.stride, self.padding if padding is None else padding)

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}')
