"""Fast method 'grouped' (vone/accel/): the VOneBlock's Gabor stage as per-colour matrix products,
without the work the original's dense convolutions throw away.

The original runs two dense 3-channel convolutions of 512 filters each (6.0 GMAC per 224 px image),
but every Gabor filter is non-zero on one colour channel only, and simple cells use only the
even-phase (q0) filter. Here each filter is applied to its own colour channel only, and the
odd-phase (q1) filters are computed for complex cells only: 768 single-channel filters, 1.5 GMAC,
as one matrix product per colour channel (patches x filters), which runs near the CPU's peak.

The regrouping (:func:`..filters.cell_filters`) is read from the weights themselves, so it is exact
for any colour assignment, including the published checkpoints' (drawn from an unseeded RNG at
training time).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.nn import functional as F

from ..filters import cell_filters, output_side


class GroupedGabors:
    """q0 for every filter and q1 for complex cells, grouped by colour channel.

    ``__call__(x, padding)`` returns ``(q0, q1_complex)`` equal (to float32 rounding) to
    ``simple_conv_q0(x)`` and ``simple_conv_q1(x)[:, simple_channels:]``.
    """

    def __init__(self, q0: torch.Tensor, q1: torch.Tensor, simple_channels: int, stride: int, padding: int):
        self.stride, self.padding = stride, padding
        self.n_q0 = q0.shape[0]
        filters, groups = cell_filters(q0, q1, simple_channels)
        self.groups: List[Tuple[int, torch.Tensor]] = [             # (colour, weight (n, 1, k, k))
            (colour, filters[rows, colour:colour + 1].contiguous()) for colour, rows in groups]
        # position of each original row in the concatenated group outputs
        self.inverse = torch.argsort(torch.tensor([row for _, rows in groups for row in rows]))

    def __call__(self, x: torch.Tensor, padding: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        padding = self.padding if padding is None else padding
        batch, _, height, width = x.shape
        size = self.groups[0][1].shape[-1]
        rows, cols = (output_side(length, size, self.stride, padding) for length in (height, width))
        outputs = []
        for colour, weight in self.groups:
            patches = F.unfold(x[:, colour:colour + 1], size, padding=padding, stride=self.stride)
            outputs.append(torch.matmul(weight.reshape(weight.shape[0], -1), patches))  # (B, n, rows*cols)
        stacked = torch.cat(outputs, dim=1).index_select(1, self.inverse.to(x.device))
        stacked = stacked.view(batch, -1, rows, cols)
        return stacked[:, :self.n_q0], stacked[:, self.n_q0:]
