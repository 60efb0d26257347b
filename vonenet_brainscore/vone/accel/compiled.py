"""Fast method 'compiled' (vone/accel/): the VOneBlock's Gabor stage and cells in one C call per batch,
folded half spectra through the kernels that :mod:`.native` builds from ``kernels.c``.

The arithmetic is :mod:`.spectral`'s (s^2-alias inner products per output frequency, then small
inverse FFTs), but torch operators move every intermediate through memory several times (the
matrix product's output transposed for the FFT, scattered into channel order, then passed over
once per cell operation), and torch's FFTs see one small transform at a time. Here one C call
(``vone_run``) does it all, per image and per unit of filters, in cache:

    images -> 2-D FFT on the Fourier grid -> aliases of the folded half plane
           -> per unit and block of images: alias products, inverse FFTs, cells -> output channels

Vectors run across the filters of a unit (one register's worth, ``kernels.lanes``), and a unit
holds two such tiles of real filters: the inverse transforms need only the half plane of
frequencies (the maps are real), and the second 1-D transform takes tile A + i tile B, so one
complex transform gives both tiles' maps. Simple cells: both tiles are q0 filters of one colour,
each map its own channel. Complex cells: tile A holds the cells' q0 and tile B their q1 filters
(grouped by both colours), so the transform's real and imaginary parts are the quadrature pair and
the energy comes straight out of it.

The call runs on as many threads as torch uses, less those other processes keep busy (see
:class:`ThreadPolicy`): on a shared machine, threads that wait for a CPU hold up the others at
every barrier. The results do not depend on the thread count.

Inference only: nothing here is differentiable, and the ``simple``/``complex`` hook points are not
run; :meth:`VOneBlock.method_for` picks this path only when neither is needed.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..filters import colour_channels, colour_groups
from .native import Kernels
from .spectral import folded_filter_spectra, fourier_grid


class Unit(NamedTuple):
    """Two tiles of up to ``lanes`` real filters whose cells are computed together."""
    colours: Tuple[int, int]       # the colour tile A's and tile B's filters read
    filters: torch.Tensor          # (2, lanes, k, k): tile A, tile B (zero filters where a lane is unused)
    channels: torch.Tensor         # int64 (2 lanes,): output channel of each lane of A, then of B; -1: none
    complex_cells: bool            # lane j of A (q0) and of B (q1) make one complex cell, channel channels[j]


def _units(q0: torch.Tensor, q1: torch.Tensor, simple_channels: int, lanes: int) -> List[Unit]:
    """Simple cells: tiles of up to ``lanes`` q0 filters of one colour, paired into units in order
    (the two tiles of a unit may read different colours; an odd tile out gets an empty tile B,
    which the kernel skips). Complex cells: per pair of colours (q0's, q1's), up to ``lanes`` cells
    per unit, their q0 filters in tile A and q1 filters in tile B."""
    colour0, colour1 = colour_channels(q0).tolist(), colour_channels(q1).tolist()
    groups = colour_groups([(channel >= simple_channels, colour0[channel],
                             colour1[channel] if channel >= simple_channels else colour0[channel])
                            for channel in range(q0.shape[0])])
    size = q0.shape[-1]

    def tile(bank: torch.Tensor, members: List[int], colour: int) -> torch.Tensor:
        filters = bank.new_zeros((lanes, size, size))
        filters[:len(members)] = bank[members, colour]
        return filters

    def lane_channels(members: List[int]) -> List[int]:
        return [*members, *[-1] * (lanes - len(members))]

    simple_tiles = [(colour, members[start:start + lanes])
                    for (complex_cell, colour, _), members in groups if not complex_cell
                    for start in range(0, len(members), lanes)]
    units = []
    for first in range(0, len(simple_tiles), 2):
        (colour_a, a), (colour_b, b) = simple_tiles[first], (simple_tiles[first + 1] if first + 1 < len(simple_tiles)
                                                              else (simple_tiles[first][0], []))
        filters = torch.stack([tile(q0, a, colour_a), tile(q0, b, colour_b)])
        channels = torch.tensor(lane_channels(a) + lane_channels(b), dtype=torch.int64)
        units.append(Unit((colour_a, colour_b), filters, channels, False))
    for (complex_cell, colour_a, colour_b), members in groups:
        if complex_cell:
            for start in range(0, len(members), lanes):
                chunk = members[start:start + lanes]
                filters = torch.stack([tile(q0, chunk, colour_a), tile(q1, chunk, colour_b)])
                channels = torch.tensor(lane_channels(chunk) + lane_channels([]), dtype=torch.int64)
                units.append(Unit((colour_a, colour_b), filters, channels, True))
    return units


def _require(name: str, tensor: torch.Tensor, shape: Tuple[int, ...], dtype: torch.dtype, aligned: bool = False) -> None:
    """What a C kernel assumes of a buffer it gets as a bare pointer: the shape it indexes, its
    dtype, contiguous memory on the CPU (64-byte aligned where it holds vectors). Metadata only
    (about a microsecond)."""
    if (tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype or tensor.device.type != 'cpu'
            or not tensor.is_contiguous() or (aligned and tensor.data_ptr() % 64)):
        raise RuntimeError(f"internal error: the compiled VOneBlock kernels' {name} buffer is {tuple(tensor.shape)} "
                           f"{tensor.dtype} on {tensor.device} (contiguous: {tensor.is_contiguous()}, address "
                           f"{tensor.data_ptr():#x}), not the contiguous{', 64-byte aligned' if aligned else ''} "
                           f"{tuple(shape)} {dtype} on the CPU they read; please report it, and use "
                           f"VOneBlock.method = 'spectral' meanwhile")


class ThreadPolicy:
    """How many threads the compiled kernels use: torch's thread count, less the CPUs that other
    processes kept busy over the last fraction of a second.

    On a machine shared with other work, a thread of ours that waits for a CPU holds the others up
    at every barrier (measured on 2 CPUs with one competing process: 2 threads ran at 95 images/s,
    1 thread at 233), while a CPU left idle costs at most that thread's share. So before each call,
    from /proc/stat (Linux; elsewhere torch's count is used), the CPU time all processes used on the
    CPUs this process may run on, less what this process used, over the window since the last
    decision (at least ``window_s``), says how many CPUs others occupy. Only speed depends on it:
    the kernels give the same bits on any number of threads.
    """

    def __init__(self, window_s: float = 0.25):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._last = None          # (wall, busy ticks, this process's CPU seconds) at the last decision
        self._others = 0.0         # CPUs other processes kept busy over the last window
        self._cpus = self._allowed_cpus()
        self._clock, self._cpu_clock = time.monotonic, time.process_time
        try:
            self._ticks_per_s = os.sysconf('SC_CLK_TCK')
        except (ValueError, OSError, AttributeError):
            self._ticks_per_s = 100

    @staticmethod
    def _allowed_cpus() -> Optional[set]:
        try:
            return set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return None

    def _busy_ticks(self) -> Optional[int]:
        """Ticks the CPUs this process may use were busy (user, nice, system, irq, softirq, steal)."""
        if self._cpus is None:
            return None
        try:
            with open('/proc/stat') as stat:
                busy = 0
                for line in stat:
                    if not line.startswith('cpu'):
                        break
                    name, *values = line.split()
                    if name == 'cpu' or int(name[3:]) not in self._cpus:
                        continue
                    ticks = [int(v) for v in values[:8]]
                    busy += sum(ticks[:3]) + sum(ticks[5:8])  # not idle (3) nor iowait (4)
                return busy
        except (OSError, ValueError):
            return None

    def threads(self, wanted: int) -> int:
        """The thread count for a call that torch would run on ``wanted`` threads."""
        if wanted <= 1:
            return 1
        try:
            with self._lock:
                now, busy, mine = self._clock(), self._busy_ticks(), self._cpu_clock()
                if busy is None:
                    return wanted
                if self._last is None:
                    self._last = (now, busy, mine)
                elif now - self._last[0] >= max(self.window_s, 1e-3):
                    wall = now - self._last[0]
                    others = ((busy - self._last[1]) / self._ticks_per_s - (mine - self._last[2])) / wall
                    self._others = max(0.0, others)
                    self._last = (now, busy, mine)
                free = len(self._cpus) - self._others
                # a CPU counts as ours when others left at least about 70% of it
                return max(1, min(wanted, int(free + 0.3)))
        except Exception:  # a policy must never break a forward pass
            return wanted


THREADS = ThreadPolicy()


class CompiledCells:
    """``__call__(x, gains, padding)`` returns the VOneBlock's cells before noise, equal (to float32
    rounding) to ``gains[0] * relu(q0)`` for simple and ``gains[1] * sqrt(q0^2 + q1^2)`` for complex
    channels. Float32 on the CPU only.

    Images go through ``images_per_call`` at a time: each call streams every filter spectrum once
    (about 200 MB at 224 px), so more images per call means less memory traffic per image, until
    the images' own spectra (0.7 MB per 224 px image) no longer stay in the last-level cache.
    Every output element is computed in a fixed order, so an image's result does not depend on
    the batch it came in, nor on the number of threads.
    """

    def __init__(self, q0: torch.Tensor, q1: torch.Tensor, simple_channels: int, stride: int, padding: int,
                 kernels: Kernels, images_per_call: int = 16, cached_sizes: int = 2, lanes: Optional[int] = None):
        self.stride, self.padding, self.ksize = stride, padding, q0.shape[-1]
        self.kernels = kernels
        self.lanes = kernels.lanes if lanes is None else lanes
        if self.lanes != kernels.lanes:
            raise ValueError(f"these kernels run {kernels.lanes} filters per vector, not {self.lanes}")
        self.images_per_call, self.cached_sizes = max(1, images_per_call), cached_sizes
        self.out_channels, self.in_channels = q0.shape[0], q0.shape[1]
        self.units = _units(q0.detach().cpu().double(), q1.detach().cpu().double(), simple_channels, self.lanes)
        for unit in self.units:  # the kernel writes channel channels[slot] and reads colours unit.colours
            if (max(unit.colours) >= self.in_channels or len(unit.channels) != 2 * self.lanes
                    or int(unit.channels.max()) >= self.out_channels):
                raise RuntimeError(f"internal error: compiled unit {unit.colours} does not fit {self.in_channels} "
                                   f"colours and {self.out_channels} channels")
        self._spectra: Dict[Tuple[int, int], Tuple[List[torch.Tensor], torch.Tensor]] = {}
        self._scratch: Optional[torch.Tensor] = None
        self._aliases: Optional[torch.Tensor] = None
        self._scratch_lock = threading.Lock()

    def _unit_spectra(self, size: Tuple[int, int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Per unit, both tiles' folded half-plane spectra in vone_forward's layout, and the units'
        descriptors (int64: spectra address, channels address, colour A, colour B, complex)."""
        if size not in self._spectra:
            if len(self._spectra) >= self.cached_sizes:
                self._spectra.pop(next(iter(self._spectra)))
            s = self.stride
            m_h, m_w = size[0] // s, size[1] // s
            hw = m_w // 2 + 1
            spectra = []
            for unit in self.units:
                folded = folded_filter_spectra(unit.filters.flatten(0, 1), size, s)   # (2 lanes, s^2, m_h m_w)
                folded = folded.view(2, self.lanes, s * s, m_h, m_w)[..., :hw] / (m_h * m_w)
                parts = torch.view_as_real(folded.permute(0, 4, 3, 2, 1))            # (2, hw, m_h, s^2, lanes, 2)
                spectra.append(parts.transpose(-1, -2).to(torch.float32).contiguous())  # (..., s^2, 2, lanes)
            descriptors = torch.tensor([[spectrum.data_ptr(), unit.channels.data_ptr(), *unit.colours,
                                         int(unit.complex_cells)] for spectrum, unit in zip(spectra, self.units)],
                                       dtype=torch.int64)
            self._spectra[size] = (spectra, descriptors)
        return self._spectra[size]

    def _buffers(self, floats: int, alias_floats: int) -> Tuple[torch.Tensor, torch.Tensor, bool]:
        """Scratch (``floats``) and the images' aliases (``alias_floats``), reused across calls so that
        their pages are touched once, and whether they are the shared ones (then the lock is held and
        must be released)."""
        if self._scratch_lock.acquire(blocking=False):
            if self._scratch is None or self._scratch.numel() < floats:
                self._scratch = None
                self._scratch = torch.empty((floats,))
            if self._aliases is None or self._aliases.numel() < alias_floats:
                self._aliases = None
                self._aliases = torch.empty((alias_floats,))
            return self._scratch, self._aliases, True
        return torch.empty((floats,)), torch.empty((alias_floats,)), False  # another thread is in a call here

    def __call__(self, x: torch.Tensor, gains: Sequence[float], padding=None, threads: Optional[int] = None
                 ) -> torch.Tensor:
        """``threads``: the thread count (default: :data:`THREADS`' choice for torch's count)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the compiled VOneBlock kernels take a torch.Tensor, got {type(x).__name__}")
        if x.device.type != 'cpu' or x.dtype != torch.float32:
            raise ValueError(f"the compiled VOneBlock kernels take float32 CPU tensors, got {x.dtype} on {x.device}")
        padding = self.padding if padding is None else padding
        if x.dim() != 4 or x.shape[1] != self.in_channels or padding < 0:
            raise ValueError(f"the compiled VOneBlock kernels take (N, {self.in_channels}, H, W) images and padding "
                             f">= 0, got shape {tuple(x.shape)} and padding {padding}")
        batch, colours, height, width = x.shape
        s = self.stride
        rows, cols, n_h, n_w, m_h, m_w = grid = fourier_grid(height, width, padding, s, self.ksize)
        if rows < 1 or cols < 1:
            raise ValueError(f"images of {tuple(x.shape[-2:])} px are smaller than the {self.ksize} px filters "
                             f"with {padding} px of padding")
        if (rows > m_h or cols > m_w or n_h != m_h * s or n_w != m_w * s or padding + height > n_h
                or padding + width > n_w):
            raise RuntimeError(f"internal error: Fourier grid {grid} does not hold the output")
        hw = m_w // 2 + 1
        out = torch.empty((batch, self.out_channels, rows, cols))
        if batch == 0:
            return out
        spectra, descriptors = self._unit_spectra((n_h, n_w))
        for spectrum in spectra:
            _require('filter spectra', spectrum, (2, hw, m_h, s * s, 2, self.lanes), torch.float32)
        for unit in self.units:
            _require('channel', unit.channels, (2 * self.lanes,), torch.int64)
        x = x.contiguous()
        threads = THREADS.threads(max(1, torch.get_num_threads())) if threads is None else max(1, int(threads))
        per_thread = self.kernels.scratch_floats(n_h, n_w, s, rows, cols)
        call = min(self.images_per_call, batch)
        scratch, aliases, shared = self._buffers(threads * per_thread, colours * call * hw * m_h * s * s * 2)
        try:
            for first in range(0, batch, call):
                count = min(call, batch - first)
                images = x[first:first + count]
                chunk_aliases = aliases[:colours * count * hw * m_h * s * s * 2]
                _require('images', images, (count, colours, height, width), torch.float32)
                _require('output', out, (batch, self.out_channels, rows, cols), torch.float32)
                _require('scratch', scratch, (scratch.numel(),), torch.float32, aligned=True)
                _require('aliases', chunk_aliases, (chunk_aliases.numel(),), torch.float32)
                status = self.kernels.run(images.data_ptr(), count, colours, height, width, padding, n_h, n_w, s,
                                          rows, cols, chunk_aliases.data_ptr(), descriptors.data_ptr(),
                                          len(self.units), out[first].data_ptr(), out.stride(0), float(gains[0]),
                                          float(gains[1]), scratch.data_ptr(), per_thread, threads)
                if status != 0:
                    raise RuntimeError(f"internal error: the compiled VOneBlock kernels cannot transform a "
                                       f"{n_h} x {n_w} Fourier grid; please report it, and use "
                                       f"VOneBlock.method = 'spectral' meanwhile")
        finally:
            if shared:
                self._scratch_lock.release()
        return out
