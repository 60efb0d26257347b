"""Fast method 'spectral' (vone/accel/): the VOneBlock's strided Gabor correlations in the Fourier
domain, folded to the output grid.

A stride-s correlation only needs every s-th output. In the Fourier domain, subsampling by s folds
the spectrum: the M x M DFT of the subsampled output (M = N / s) is the mean of the s x s aliased
blocks of the N x N product spectrum. Per output frequency that mean is a short inner product over
the s^2 aliases, so all filters and images reduce to one batched matrix product of inner size s^2
(16 at stride 4) followed by small M x M inverse FFTs: about a fifteenth of the direct work.

Real filters are paired as the real and imaginary parts of one complex filter (the output of
``a + ib`` is ``y_a + i y_b`` for a real image), so every inverse FFT yields two maps. Filters are
grouped by the colour channel they read (:func:`..filters.cell_filters`, as for :mod:`.grouped`),
so the result is exact (to float32 rounding) for any colour assignment, including the published
checkpoints'. :mod:`.compiled` reuses the grid and the filter spectra defined here.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch.nn import functional as F

from ..filters import cell_filters, output_side


def _is_smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def fft_size(length: int, padding: int, outputs: int, stride: int, ksize: int) -> int:
    """The smallest FFT length that is a multiple of ``stride`` with a fast (2^a 3^b 5^c) fold size.

    The image sits at ``[padding, padding + length)``; circular reads past the end may wrap only
    into the leading zero padding, so the length needs ``>= padding + length`` and
    ``>= (outputs - 1) * stride + ksize - padding``; the fold holds at least ``outputs`` positions.
    """
    needed = max(padding + length, (outputs - 1) * stride + ksize - padding, outputs * stride)
    folded = -(-needed // stride)
    while not _is_smooth(folded):
        folded += 1
    return folded * stride


class FourierGrid(NamedTuple):
    """A strided correlation's output size, its FFT size N and its folded size M = N / stride."""
    rows: int
    cols: int
    n_h: int
    n_w: int
    m_h: int
    m_w: int


def fourier_grid(height: int, width: int, padding: int, stride: int, ksize: int) -> FourierGrid:
    rows, cols = output_side(height, ksize, stride, padding), output_side(width, ksize, stride, padding)
    n_h, n_w = fft_size(height, padding, rows, stride, ksize), fft_size(width, padding, cols, stride, ksize)
    return FourierGrid(rows, cols, n_h, n_w, n_h // stride, n_w // stride)


def pad_to_grid(x: torch.Tensor, padding: int, grid: FourierGrid) -> torch.Tensor:
    """The images at ``[padding, padding + size)`` of zero-filled N_h x N_w frames."""
    height, width = x.shape[-2:]
    return F.pad(x, (padding, grid.n_w - width - padding, padding, grid.n_h - height - padding))


def fold(spectrum: torch.Tensor, stride: int) -> torch.Tensor:
    """(lead, N_h, N_w) -> (lead, s^2, M_h M_w): the s^2 aliases of each frequency of the
    subsampled (M = N / s) grid, whose mean is the subsampled output's spectrum."""
    s = stride
    lead, n_h, n_w = spectrum.shape
    blocks = spectrum.reshape(lead, s, n_h // s, s, n_w // s).permute(0, 1, 3, 2, 4)
    return blocks.reshape(lead, s * s, (n_h // s) * (n_w // s))


def folded_filter_spectra(kernels: torch.Tensor, size: Tuple[int, int], stride: int) -> torch.Tensor:
    """(pairs, k, k) complex kernels -> (pairs, s^2, M_h M_w) complex128: what each output
    frequency's alias inner product multiplies the image's aliases by, for a correlation at
    ``stride`` on an FFT grid of ``size`` (the 1 / s^2 of the fold's mean included)."""
    n_h, n_w = size
    ksize = kernels.shape[-1]
    padded = F.pad(kernels.to(torch.complex128).conj(), (0, n_w - ksize, 0, n_h - ksize))
    # correlating with k multiplies by conj(FFT(conj k))
    return fold(torch.fft.fft2(padded).conj() / stride ** 2, stride)


class SpectralGabors:
    """q0 for every filter and q1 for complex cells, as folded-spectrum products.

    ``__call__(x, padding)`` returns ``(q0, q1_complex)`` equal (to float32 rounding) to
    ``simple_conv_q0(x)`` and ``simple_conv_q1(x)[:, simple_channels:]``. Images go through in
    chunks and filter pairs in passes small enough for the intermediate spectra to stay in cache.
    """

    def __init__(self, q0: torch.Tensor, q1: torch.Tensor, simple_channels: int, stride: int, padding: int,
                 images_per_pass: int = 8, pairs_per_pass: int = 32, cached_sizes: int = 2):
        self.stride, self.padding, self.ksize = stride, padding, q0.shape[-1]
        self.images_per_pass, self.pairs_per_pass, self.cached_sizes = images_per_pass, pairs_per_pass, cached_sizes
        self.n_q0 = q0.shape[0]
        filters, groups = cell_filters(q0, q1, simple_channels)
        self.n_out = len(filters)
        # Per colour: consecutive members paired into complex kernels; an odd count gets a zero partner,
        # whose (imaginary) output goes to a spare channel n_out that is dropped.
        self.groups: List[Tuple[int, torch.Tensor, torch.Tensor]] = []  # (colour, pairs, output channels)
        for colour, rows in groups:
            members = torch.tensor(rows)
            kernels = filters[members, colour]
            if len(members) % 2:
                kernels = torch.cat([kernels, kernels.new_zeros((1,) + kernels.shape[1:])])
                members = torch.cat([members, members.new_tensor([self.n_out])])
            kernels = kernels.to(torch.promote_types(kernels.dtype, torch.float32))  # no ComplexHalf
            self.groups.append((colour, torch.complex(kernels[0::2], kernels[1::2]), members))
        self._spectra: Dict[tuple, List[List[torch.Tensor]]] = {}

    def _folded_spectra(self, size: Tuple[int, int], device, dtype) -> List[List[torch.Tensor]]:
        """Per colour group, per pass: the kernels' correlation spectra as (M_h M_w, s^2, pairs)."""
        key = (size, str(device), dtype)
        if key not in self._spectra:
            if len(self._spectra) >= self.cached_sizes:
                self._spectra.pop(next(iter(self._spectra)))
            spectra = []
            for _, pairs, _ in self.groups:
                spectrum = folded_filter_spectra(pairs.to(device), size, self.stride)
                spectrum = spectrum.permute(2, 1, 0).to(dtype)                      # (M_h M_w, s^2, pairs)
                spectra.append([spectrum[..., start:start + self.pairs_per_pass].contiguous()
                                for start in range(0, spectrum.shape[-1], self.pairs_per_pass)])
            self._spectra[key] = spectra
        return self._spectra[key]

    def __call__(self, x: torch.Tensor, padding: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        padding = self.padding if padding is None else padding
        batch = x.shape[0]
        s = self.stride
        rows, cols, n_h, n_w, m_h, m_w = grid = fourier_grid(*x.shape[-2:], padding, s, self.ksize)
        spectra = self._folded_spectra((n_h, n_w), x.device,
                                       torch.complex128 if x.dtype == torch.float64 else torch.complex64)
        padded = pad_to_grid(x, padding, grid)
        out = x.new_empty((batch, self.n_out + 1, rows, cols))
        for first in range(0, batch, self.images_per_pass):
            chunk = slice(first, first + self.images_per_pass)
            images = padded[chunk]
            b = images.shape[0]
            if b < self.images_per_pass:  # every pass has one shape, so one image's result (its
                # rounding included) does not depend on the batch it came in
                images = F.pad(images, (0, 0, 0, 0, 0, 0, 0, self.images_per_pass - b))
            images = torch.fft.fft2(images)                                          # (P, 3, N_h, N_w)
            for (colour, _, channels), passes in zip(self.groups, spectra):
                aliases = fold(images[:, colour], s).permute(2, 0, 1).contiguous()         # (M², P, s²)
                channels = channels.to(x.device)
                start = 0
                for spectrum in passes:
                    folded = torch.matmul(aliases, spectrum)                         # (M², P, pairs)
                    pairs = folded.shape[-1]
                    # (M², P, pairs) -> (P, pairs, M_h, M_w) as one 2-D transpose (a 3-D permute is slower)
                    folded = folded.view(m_h * m_w, -1).t().contiguous().view(-1, pairs, m_h, m_w)[:b]
                    maps = torch.view_as_real(torch.fft.ifft2(folded)[..., :rows, :cols])
                    targets = channels[2 * start:2 * (start + pairs)]
                    out[chunk].index_copy_(1, targets[0::2], maps[..., 0])          # real parts
                    out[chunk].index_copy_(1, targets[1::2], maps[..., 1])          # imaginary parts
                    start += pairs
        return out[:, :self.n_q0], out[:, self.n_q0:self.n_out]
