"""Build and load the VOneBlock's C kernels (``kernels.c``) on first use.

The kernels are compiled with the system C compiler into the user cache (one file per source,
compiler, flags and CPU, so a home directory shared by different machines never loads code built
for another CPU), written atomically, loaded with ctypes and checked against torch on a small
problem before use. Without a compiler, or with ``VONENET_BRAINSCORE_NO_COMPILE=1``, nothing is
built and the VOneBlock uses its torch-only methods; :func:`unavailable_reason` says why.

OpenMP code links ``libgomp.so.1``, which resolves to the copy torch has already loaded, so the
kernels share torch's thread pool rather than competing with it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from .spectral import fold

SOURCE = Path(__file__).with_name('kernels.c')
DISABLE_ENV = 'VONENET_BRAINSCORE_NO_COMPILE'
# Tried in order: the fastest build the compiler accepts. Never fast-math (NaN must propagate).
FLAG_SETS = (['-O3', '-march=native', '-fopenmp'], ['-O3', '-fopenmp'], ['-O3'])
VECTOR_LENGTH = 16  # VL in kernels.c

_c_float_p = ctypes.c_void_p


class Kernels:
    """The compiled functions, with their C signatures declared."""

    def __init__(self, library: ctypes.CDLL, path: Path, flags: List[str]):
        self.path, self.flags = path, flags
        self.contract = library.vone_contract
        self.contract.argtypes = [_c_float_p] * 3 + [ctypes.c_int] * 5 + [ctypes.c_long, ctypes.c_int]
        self.contract.restype = None
        self.cells = library.vone_cells
        self.cells.argtypes = [_c_float_p] * 4 + [ctypes.c_int] * 6 + [ctypes.c_long, ctypes.c_float, ctypes.c_int]
        self.cells.restype = None
        self.pack_aliases = library.vone_pack_aliases
        self.pack_aliases.argtypes = [_c_float_p] * 2 + [ctypes.c_int] * 7
        self.pack_aliases.restype = None


def find_compiler() -> Optional[str]:
    """The C compiler to build with: $CC, else cc, gcc or clang on the PATH."""
    for name in (os.environ.get('CC'), 'cc', 'gcc', 'clang'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its instruction-set flags."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
        return '\n'.join(sorted({line for line in lines if line.startswith(('model name', 'flags', 'Features'))}))
    except OSError:
        return f'{platform.machine()} {platform.processor()}'


def _build(compiler: str, flags: List[str], target: Path) -> Optional[str]:
    """Compile into ``target`` atomically; return the compiler's complaint on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp')
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, '-shared', '-fPIC', str(SOURCE), '-o', temporary, '-lm'],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            return (result.stderr or result.stdout).strip()[-2000:]
        os.replace(temporary, target)
        return None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _self_check(kernels: Kernels) -> Optional[str]:
    """Run the kernels on small random problems and compare with torch's arithmetic."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 8, 12, generator=generator)
    stride = 4
    folded = fold(torch.fft.fft2(images).view(6, 8, 12), stride).view(2, 3, stride * stride, 6)
    expected = planar_blocks(folded.transpose(0, 1))
    packed = torch.full_like(expected, float('nan'))
    half = torch.fft.rfft2(images)
    kernels.pack_aliases(half.data_ptr(), packed.data_ptr(), 2, 3, 8, 12, stride, expected.shape[0], 1)
    if not torch.allclose(packed, expected, rtol=1e-5, atol=1e-5):
        return 'the compiled alias packing disagrees with torch'
    images, pairs, aliases, side = 3, 5, 4, 6
    frequencies = side * side
    blocks = -(-frequencies // VECTOR_LENGTH)
    x = torch.randn(images, aliases, frequencies, dtype=torch.complex64, generator=generator)
    h = torch.randn(pairs, aliases, frequencies, dtype=torch.complex64, generator=generator)
    y = torch.empty(images, pairs, frequencies, dtype=torch.complex64)
    x_blocks, h_blocks = planar_blocks(x), planar_blocks(h)
    kernels.contract(x_blocks.data_ptr(), h_blocks.data_ptr(), y.data_ptr(), images, pairs, aliases, blocks,
                     frequencies, x_blocks.stride(0), 1)
    if not torch.allclose(y, torch.einsum('pak,cak->pck', x, h), rtol=1e-5, atol=1e-5):
        return 'the compiled contraction disagrees with torch'
    maps = torch.randn(images, pairs, side, side, dtype=torch.complex64, generator=generator)
    other = torch.randn(images, pairs, side, side, dtype=torch.complex64, generator=generator)
    channels = torch.arange(2 * pairs, dtype=torch.int64)
    for second in (None, other):
        out = torch.full((images, 2 * pairs, side - 1, side - 1), float('nan'))
        kernels.cells(maps.data_ptr(), None if second is None else second.data_ptr(), out.data_ptr(),
                      channels.data_ptr(), images, pairs, side, side, side - 1, side - 1, out.stride(0), 2.0, 1)
        parts = torch.cat([maps.real, maps.imag], 1)[..., :-1, :-1]
        if second is None:
            expected = 2 * parts.clamp(min=0)
        else:
            expected = 2 * torch.hypot(parts, torch.cat([second.real, second.imag], 1)[..., :-1, :-1])
        if not torch.allclose(out, expected, rtol=1e-5, atol=1e-6):
            return 'the compiled cells disagree with torch'
    return None


def planar_blocks(z: torch.Tensor) -> torch.Tensor:
    """(..., A, K) complex -> (blocks, ..., A, 2, VL) float32: the layout ``vone_contract`` reads.

    K is zero-padded to whole blocks of VL frequencies; real and imaginary parts are planar inside
    each block, and the block index leads so one block of every image or filter is contiguous.
    """
    frequencies = z.shape[-1]
    padded = -(-frequencies // VECTOR_LENGTH) * VECTOR_LENGTH
    parts = torch.view_as_real(torch.nn.functional.pad(z, (0, padded - frequencies)).to(torch.complex64))
    parts = parts.unflatten(-2, (padded // VECTOR_LENGTH, VECTOR_LENGTH))    # (..., A, blocks, VL, 2)
    dims = parts.dim()
    return parts.permute(dims - 3, *range(dims - 3), dims - 1, dims - 2).contiguous()


_reason: Optional[str] = None


@functools.lru_cache(maxsize=None)
def kernels() -> Optional[Kernels]:
    """The compiled kernels, built on first call; None when they cannot be had (see
    :func:`unavailable_reason`)."""
    global _reason
    if os.environ.get(DISABLE_ENV, '').strip() not in ('', '0'):
        _reason = f'disabled by {DISABLE_ENV}'
        return None
    compiler = find_compiler()
    if compiler is None:
        _reason = 'no C compiler found (install gcc or clang, or set CC)'
        return None
    from ..download import cache_dir  # here: only compilation needs the cache
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True).stdout
    failures = []
    for flags in FLAG_SETS:
        key = hashlib.sha256('\0'.join([SOURCE.read_text(), compiler, version, ' '.join(flags),
                                        _cpu_identity(), torch.__version__]).encode()).hexdigest()[:20]
        target = cache_dir() / 'kernels' / f'vone_kernels_{key}.so'
        if not target.exists():
            complaint = _build(compiler, flags, target)
            if complaint is not None:
                failures.append(f"{' '.join(flags)}: {complaint.splitlines()[-1] if complaint else 'failed'}")
                continue
        try:
            loaded = Kernels(ctypes.CDLL(str(target)), target, flags)
        except OSError as error:
            failures.append(f"{' '.join(flags)}: cannot load {target}: {error}")
            continue
        problem = _self_check(loaded)
        if problem is None:
            return loaded
        failures.append(f"{' '.join(flags)}: {problem}")
    _reason = 'compiling vone/kernels.c failed: ' + '; '.join(failures)
    return None


def unavailable_reason() -> Optional[str]:
    """Why :func:`kernels` returned None (None if it has not, or has not been called)."""
    return _reason


_warned = False


def warn_unavailable_once() -> None:
    """Say once per process that a slower method stands in (unless the user switched them off)."""
    global _warned
    if _warned or os.environ.get(DISABLE_ENV, '').strip() not in ('', '0'):
        return
    _warned = True
    warnings.warn(f"the VOneBlock's compiled kernels are unavailable ({_reason}); using the slower torch-only "
                  f"'spectral' method. Install a C compiler (gcc or clang), or set {DISABLE_ENV}=1 to "
                  f"silence this.", RuntimeWarning, stacklevel=4)
