"""The VOneBlock's Gabor stage and cells in one sweep: folded spectra through compiled kernels.

The arithmetic is :mod:`.spectral`'s (16-alias inner products per output frequency, then small
inverse FFTs), but torch operators make it move every intermediate through memory several times:
the batched matrix product's output must be transposed for the FFT, then scattered into channel
order, then passed over once per cell operation. Here the filters are cut into small units and
each unit goes through in cache:

    vone_contract (C)  ->  torch.fft.ifft2  ->  vone_cells (C): relu or energy, gain, write

Units are made so that one unit holds whole cells: simple cells are paired by the colour their
filter reads; complex cells by the colours of both quadrature filters, so the unit's two sets of
maps (phase 0 and phase 90 of the same cells) give the energy directly.

Inference only: nothing here is differentiable, and the ``simple``/``complex`` hook points are not
run; :meth:`VOneBlock.method_for` picks this path only when neither is needed.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch

from .fast import colour_channels
from .native import Kernels, VECTOR_LENGTH, planar_blocks
from .spectral import folded_filter_spectra, fourier_grid, pad_to_grid


class Unit(NamedTuple):
    """Up to ``pairs_per_unit`` filter pairs whose cells are computed together."""
    colours: Tuple[int, ...]            # (colour,) for simple cells; (q0's, q1's colour) for complex
    kernels: Tuple[torch.Tensor, ...]   # per colour, (pairs, k, k) complex: filter a + i filter b
    channels: torch.Tensor              # int64 (2 pairs,): output channel of each real, then each
    #                                     imaginary part; -1 for the zero partner of an odd count
    complex_cells: bool


def _units(q0: torch.Tensor, q1: torch.Tensor, simple_channels: int, pairs_per_unit: int) -> List[Unit]:
    colour0, colour1 = colour_channels(q0).tolist(), colour_channels(q1).tolist()
    cells = {}
    for channel in range(q0.shape[0]):
        complex_cell = channel >= simple_channels
        key = (complex_cell, colour0[channel]) + ((colour1[channel],) if complex_cell else ())
        cells.setdefault(key, []).append(channel)
    units = []
    for key, members in sorted(cells.items()):
        complex_cell, colours = key[0], key[1:]
        banks = (q0, q1) if complex_cell else (q0,)
        for start in range(0, len(members), 2 * pairs_per_unit):
            chunk = members[start:start + 2 * pairs_per_unit]
            real_parts, imaginary_parts = chunk[0::2], chunk[1::2]
            kernels = []
            for bank, colour in zip(banks, colours):
                imaginary = bank[imaginary_parts, colour]
                if len(imaginary) < len(real_parts):
                    imaginary = torch.cat([imaginary, imaginary.new_zeros((1,) + imaginary.shape[1:])])
                kernels.append(torch.complex(bank[real_parts, colour], imaginary))
            missing = [-1] * (len(real_parts) - len(imaginary_parts))
            channels = torch.tensor(real_parts + imaginary_parts + missing, dtype=torch.int64)
            units.append(Unit(colours, tuple(kernels), channels, complex_cell))
    return units


def _require(name: str, tensor: torch.Tensor, shape: Tuple[int, ...], dtype: torch.dtype) -> None:
    """What a C kernel assumes of a buffer it gets as a bare pointer: the shape it indexes, its
    dtype, contiguous memory on the CPU. Metadata only (about a microsecond)."""
    if (tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype or tensor.device.type != 'cpu'
            or not tensor.is_contiguous()):
        raise RuntimeError(f"internal error: the compiled VOneBlock kernels' {name} buffer is {tuple(tensor.shape)} "
                           f"{tensor.dtype} on {tensor.device} (contiguous: {tensor.is_contiguous()}), not the "
                           f"contiguous {tuple(shape)} {dtype} on the CPU they read; please report it, and use "
                           f"VOneBlock.method = 'spectral' meanwhile")


class CompiledCells:
    """``__call__(x, gains, padding)`` returns the VOneBlock's cells before noise, equal (to float32
    rounding) to ``gains[0] * relu(q0)`` for simple and ``gains[1] * sqrt(q0^2 + q1^2)`` for complex
    channels. Float32 on the CPU only.

    Each contraction covers ``images_per_call`` images of one unit, sized so that its spectra and
    maps stay in cache; every output element is computed in a fixed order, so an image's result
    does not depend on the batch it came in.
    """

    def __init__(self, q0: torch.Tensor, q1: torch.Tensor, simple_channels: int, stride: int, padding: int,
                 kernels: Kernels, pairs_per_unit: int = 16, images_per_call: int = 16, cached_sizes: int = 2):
        self.stride, self.padding, self.ksize = stride, padding, q0.shape[-1]
        self.kernels = kernels
        self.images_per_call, self.cached_sizes = images_per_call, cached_sizes
        self.out_channels, self.in_channels = q0.shape[0], q0.shape[1]
        self.units = _units(q0.detach().cpu(), q1.detach().cpu(), simple_channels, pairs_per_unit)
        for unit in self.units:  # the cells kernel writes channel channels[slot] and reads colour unit.colours[i]
            if (max(unit.colours) >= self.in_channels or len(unit.channels) != 2 * unit.kernels[0].shape[0]
                    or int(unit.channels.max()) >= self.out_channels):
                raise RuntimeError(f"internal error: compiled unit {unit.colours} does not fit {self.in_channels} "
                                   f"colours and {self.out_channels} channels")
        self._spectra: Dict[Tuple[int, int], List[Tuple[torch.Tensor, ...]]] = {}

    def _unit_spectra(self, size: Tuple[int, int]) -> List[Tuple[torch.Tensor, ...]]:
        """Per unit, per colour: the pairs' folded spectra in the contraction's blocked layout."""
        if size not in self._spectra:
            if len(self._spectra) >= self.cached_sizes:
                self._spectra.pop(next(iter(self._spectra)))
            self._spectra[size] = [tuple(planar_blocks(folded_filter_spectra(kernels, size, self.stride))
                                         for kernels in unit.kernels) for unit in self.units]
        return self._spectra[size]

    def __call__(self, x: torch.Tensor, gains: Sequence[float], padding=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the compiled VOneBlock kernels take a torch.Tensor, got {type(x).__name__}")
        if x.device.type != 'cpu' or x.dtype != torch.float32:
            raise ValueError(f"the compiled VOneBlock kernels take float32 CPU tensors, got {x.dtype} on {x.device}")
        padding = self.padding if padding is None else padding
        if x.dim() != 4 or x.shape[1] != self.in_channels or padding < 0:
            raise ValueError(f"the compiled VOneBlock kernels take (N, {self.in_channels}, H, W) images and padding "
                             f">= 0, got shape {tuple(x.shape)} and padding {padding}")
        batch, colours = x.shape[:2]
        s = self.stride
        rows, cols, n_h, n_w, m_h, m_w = grid = fourier_grid(*x.shape[-2:], padding, s, self.ksize)
        if rows < 1 or cols < 1:
            raise ValueError(f"images of {tuple(x.shape[-2:])} px are smaller than the {self.ksize} px filters "
                             f"with {padding} px of padding")
        if rows > m_h or cols > m_w or n_h != m_h * s or n_w != m_w * s:
            raise RuntimeError(f"internal error: Fourier grid {grid} does not hold the output")
        frequencies = m_h * m_w
        blocks = -(-frequencies // VECTOR_LENGTH)
        out = x.new_empty((batch, self.out_channels, rows, cols))
        if batch == 0:
            return out
        spectra = self._unit_spectra((n_h, n_w))
        threads = torch.get_num_threads()
        half_spectra = torch.fft.rfft2(pad_to_grid(x, padding, grid)).contiguous()  # (B, colours, N_h, N_w / 2 + 1), as packed
        _require('half spectra', half_spectra, (batch, colours, n_h, n_w // 2 + 1), torch.complex64)
        chunks = []  # per call's images, so each buffer is small enough for the allocator to reuse
        for first in range(0, batch, self.images_per_call):
            count = min(self.images_per_call, batch - first)
            aliases = x.new_empty((blocks, colours, count, s * s, 2, VECTOR_LENGTH))
            self.kernels.pack_aliases(half_spectra[first].data_ptr(), aliases.data_ptr(), count, colours, n_h, n_w,
                                      s, blocks, threads)
            chunks.append((first, count, aliases))
        for unit, unit_spectra in zip(self.units, spectra):
            pairs = unit_spectra[0].shape[1]
            gain = float(gains[1] if unit.complex_cells else gains[0])
            for filters in unit_spectra:
                _require('filter spectra', filters, (blocks, pairs, s * s, 2, VECTOR_LENGTH), torch.float32)
            _require('channel', unit.channels, (2 * pairs,), torch.int64)
            for first, count, aliases in chunks:
                maps = []
                for colour, filters in zip(unit.colours, unit_spectra):
                    products = torch.empty((count, pairs, m_h, m_w), dtype=torch.complex64)
                    self.kernels.contract(aliases[0, colour].data_ptr(), filters.data_ptr(),
                                          products.data_ptr(), count, pairs, s * s, blocks, frequencies,
                                          aliases.stride(0), threads)
                    maps.append(torch.fft.ifft2(products).contiguous())
                    _require('maps', maps[-1], (count, pairs, m_h, m_w), torch.complex64)
                _require('output', out, (batch, self.out_channels, rows, cols), torch.float32)
                self.kernels.cells(maps[0].data_ptr(), maps[1].data_ptr() if unit.complex_cells else None,
                                   out[first].data_ptr(), unit.channels.data_ptr(), count, pairs, m_h, m_w,
                                   rows, cols, out.stride(0), gain, threads)
        return out
