"""Build and load the C kernels (``kernels.c``) of the fast method 'compiled' (vone/accel/) on first use.

The kernels are compiled with the system C compiler into the user cache (one file per source,
compiler, flags and CPU, so a home directory shared by different machines never loads code built
for another CPU). A build is loaded from its temporary file and checked against torch on small
problems before it is stamped (the SHA-256 of its bytes) and renamed into place, so only a working
build is ever cached. A cached library is loaded only from a private folder (owned by this user,
writable by no one else, up to the cache root), owned by this user, and only if its bytes match
its stamp; anything else is rebuilt over, or left alone. Every failure (no compiler, a compiler
that writes nothing, a read-only or unusable cache, a foreign or empty library) means
:func:`kernels` returns None and the VOneBlock uses its torch-only methods;
:func:`unavailable_reason` says why. ``VONENET_BRAINSCORE_NO_COMPILE=1`` (or true, yes, on)
switches compiling off.

OpenMP code links ``libgomp.so.1``, which resolves to the copy torch has already loaded, so the
kernels share torch's thread pool rather than competing with it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..filters import on_colour_channels
from .spectral import fold

SOURCE = Path(__file__).with_name('kernels.c')
DISABLE_ENV = 'VONENET_BRAINSCORE_NO_COMPILE'
# Tried in order: the fastest build the compiler accepts. Never fast-math (NaN must propagate);
# -fno-math-errno only lets sqrtf vectorise (no errno for sqrt of a negative: it returns NaN anyway).
FLAG_SETS = (['-O3', '-march=native', '-fopenmp', '-fno-math-errno'], ['-O3', '-fopenmp', '-fno-math-errno'],
             ['-O3', '-fno-math-errno'])
BUILD_TIMEOUT_S = 300

_c_float_p = ctypes.c_void_p


class Kernels:
    """The compiled functions, with their C signatures declared, and what the build vectorises for:
    ``lanes`` filters per vector register, ``images_per_block`` images per register block, ``isa``."""

    def __init__(self, library: ctypes.CDLL, path: Path, flags: List[str]):
        self.path, self.flags = path, flags
        self.digest: Optional[str] = None  # SHA-256 of the library's bytes, when loaded from a checked file
        i, p, i64 = ctypes.c_int, _c_float_p, ctypes.c_int64
        self.run = library.vone_run
        self.run.argtypes = [p] + [i] * 10 + [p, p, i, p, i64, ctypes.c_float, ctypes.c_float, p, i64, i]
        self.spectra = library.vone_spectra
        self.spectra.argtypes = [p] + [i] * 8 + [p, p, i64, i]
        self.cells = library.vone_cells_from_spectra
        self.cells.argtypes = [p] + [i] * 7 + [p, i, p, i64, ctypes.c_float, ctypes.c_float, p, i64, i]
        for function in (self.run, self.spectra, self.cells):
            function.restype = ctypes.c_int
        self.scratch_floats = library.vone_scratch_floats
        self.scratch_floats.argtypes = [i] * 5
        self.scratch_floats.restype = i64
        for name in ('vone_lanes', 'vone_images_per_block', 'vone_isa'):
            getattr(library, name).argtypes = []
        library.vone_lanes.restype = library.vone_images_per_block.restype = i
        library.vone_isa.restype = ctypes.c_char_p
        self.lanes = int(library.vone_lanes())
        self.images_per_block = int(library.vone_images_per_block())
        self.isa = library.vone_isa().decode('ascii', 'replace')


def compiler_command() -> Optional[List[str]]:
    """The C compiler command to build with: $CC (a command line such as ``gcc -m64`` or
    ``ccache gcc``), else cc, gcc or clang on the PATH; the program resolved to its path."""
    candidates = []
    if os.environ.get('CC', '').strip():
        try:
            candidates.append(shlex.split(os.environ['CC']))
        except ValueError:  # unbalanced quotes: try it as one name
            candidates.append([os.environ['CC'].strip()])
    candidates += [['cc'], ['gcc'], ['clang']]
    for words in candidates:
        found = words and shutil.which(words[0])
        if found:
            return [found, *words[1:]]
    return None


def find_compiler() -> Optional[str]:
    """The C compiler program that :func:`compiler_command` runs (None when there is none)."""
    command = compiler_command()
    return None if command is None else command[0]


def compile_disabled() -> bool:
    """Whether $VONENET_BRAINSCORE_NO_COMPILE switches compiling off: 1, true, yes or on do; 0, false,
    no, off, empty or unset do not; any other value warns (once) and does not."""
    value = os.environ.get(DISABLE_ENV)
    if value is None:
        return False
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word not in FALSE_WORDS and value not in _unrecognised_values:
        _unrecognised_values.add(value)
        warnings.warn(f"{DISABLE_ENV}={value!r} is neither true ({', '.join(TRUE_WORDS)}) nor false "
                      f"({', '.join(FALSE_WORDS[1:])} or empty), so compiling stays on; set {DISABLE_ENV}=1 "
                      f"to switch it off", RuntimeWarning, stacklevel=2)
    return False


TRUE_WORDS = ('1', 'true', 'yes', 'on')
FALSE_WORDS = ('', '0', 'false', 'no', 'off')
_unrecognised_values: set = set()


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its instruction-set flags."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
        return '\n'.join(sorted({line for line in lines if line.startswith(('model name', 'flags', 'Features'))}))
    except OSError:
        return f'{platform.machine()} {platform.processor()}'


# --- where the library may come from --------------------------------------------------------------
# A shared library runs code as soon as it is loaded, so it is loaded only from a file that this
# process's user owns and no one else can write, in folders (up to the cache root) of the same kind,
# and only when its bytes match the stamp written by the build that made it here; anything else is
# rebuilt over, or, when that is impossible, left alone and the torch-only methods are used.
SAFETY_NOTE = "the compiled kernels are loaded only from files and folders that are yours and that no one else can write"


def _user(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f'uid {uid}'


def _unsafe(path, status: os.stat_result, what: str) -> Optional[str]:
    """Why ``path`` (with ``status``) is not safe to load code from, or None."""
    me = os.geteuid() if hasattr(os, 'geteuid') else status.st_uid
    if status.st_uid != me:
        return (f"the {what} {path} belongs to {_user(status.st_uid)}, not to {_user(me)} ({SAFETY_NOTE}): set "
                f"VONENET_BRAINSCORE_HOME to a folder of your own")
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"the {what} {path} can be written by other users (mode {stat.filemode(status.st_mode)}; "
                f"{SAFETY_NOTE}): run 'chmod go-w {path}' (and delete anything in it you did not put there), or "
                f"set VONENET_BRAINSCORE_HOME to a folder of your own")
    return None


def _private_folder(root: Path) -> Tuple[Optional[Path], Optional[str]]:
    """``root/kernels``, created private (mode 700) if missing, and checked: (folder, None) or
    (None, what is wrong and what to do)."""
    folder = root / 'kernels'
    try:
        if not os.path.lexists(folder):
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.mkdir(mode=0o700, exist_ok=True)
        checks = ((root, os.stat(root), 'cache folder'), (folder, os.lstat(folder), 'kernels folder'))
    except (FileExistsError, NotADirectoryError):
        blocker = next((str(p) for p in (root, *root.parents) if p.exists() and not p.is_dir()), str(root))
        return None, (f"the cache path {blocker} is a file, not a folder: move it away, or set "
                      f"VONENET_BRAINSCORE_HOME to a folder")
    except OSError as error:
        return None, (f"cannot create {folder} ({error.strerror or error}): make {root} writable, or set "
                      f"VONENET_BRAINSCORE_HOME to a writable folder of your own")
    for path, status, what in checks:
        if not stat.S_ISDIR(status.st_mode):
            kind = 'a link' if stat.S_ISLNK(status.st_mode) else 'not a folder'
            return None, f"the {what} {path} is {kind}: remove it (it is rebuilt), or set VONENET_BRAINSCORE_HOME"
        problem = _unsafe(path, status, what)
        if problem:
            return None, problem
    return folder, None


def _read_private(path: Path, what: str) -> Tuple[Optional[bytes], Optional[os.stat_result], Optional[str]]:
    """The bytes of ``path`` if it is a regular file (not a link) safe to trust: (data, status, None),
    else (None, None, why not)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        return None, None, f"{path} is missing"
    except OSError as error:
        return None, None, f"cannot open {path} ({error.strerror or error}; a link is never followed)"
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            return None, None, f"{path} is not a regular file"
        problem = _unsafe(path, status, what)
        if problem:
            return None, None, problem
        chunks = []
        while True:
            chunk = os.read(descriptor, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b''.join(chunks), status, None
    finally:
        os.close(descriptor)


def stamp_path(library: Path) -> Path:
    """The build stamp next to a cached library: the SHA-256 of the bytes our build wrote."""
    return library.with_name(library.name + '.sha256')


def _load(path: Path, flags: List[str], expected_digest: Optional[str], origin: str
          ) -> Tuple[Optional['Kernels'], Optional[str]]:
    """Load and self-check the library at ``path`` if it is safe and (when given) matches
    ``expected_digest``: (kernels, None) or (None, why not). ``origin`` names it in complaints."""
    data, status, problem = _read_private(path, 'library')
    if problem:
        return None, problem
    if not data:
        return None, f"{origin} is an empty file"
    digest = hashlib.sha256(data).hexdigest()
    if expected_digest is not None and digest != expected_digest:
        return None, f"{origin} does not match its build stamp (it was not built here, or changed since)"
    now = os.lstat(path)
    if (now.st_ino, now.st_dev) != (status.st_ino, status.st_dev):
        return None, f"{origin} was replaced while it was being checked"
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        return None, f"cannot load {origin}: {error}"
    try:
        loaded = Kernels(library, path, flags)
    except AttributeError as error:
        return None, f"{origin} is not a build of {SOURCE.name} ({error})"
    loaded.digest = digest
    problem = _self_check(loaded)
    if problem:
        return None, f"{origin}: {problem}"
    return loaded, None


def _load_cached(target: Path, flags: List[str]) -> Tuple[Optional['Kernels'], Optional[str]]:
    """The cached build at ``target``: (kernels, None); (None, None) when there is none; (None, why
    it is not used) when there is one but it is unsafe, foreign, stale or broken."""
    if not os.path.lexists(target):
        return None, None
    stamp, _, problem = _read_private(stamp_path(target), 'build stamp')
    if problem:
        return None, f"the cached {target} has no usable build stamp ({problem})"
    expected = stamp.decode('ascii', 'replace').strip()
    return _load(target, flags, expected, f"the cached {target}")


class _FolderUnwritable(Exception):
    """The kernels folder takes no new files (read-only, full, ...)."""


def _build(command: List[str], flags: List[str], target: Path) -> Tuple[Optional['Kernels'], Optional[str]]:
    """Compile, load and self-check into a temporary file, then stamp it and rename it to
    ``target``: only a build that works is ever cached. (kernels, None) or (None, the complaint)."""
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp')
    except OSError as error:
        raise _FolderUnwritable(f"cannot write to {target.parent} ({error.strerror or error}): make it writable, "
                                f"or set VONENET_BRAINSCORE_HOME to a writable folder of your own") from error
    os.close(handle)
    stamp_temporary = None
    name = os.path.basename(command[0])
    try:
        try:
            result = subprocess.run([*command, *flags, '-shared', '-fPIC', str(SOURCE), '-o', temporary, '-lm'],
                                    capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"{name} took more than {BUILD_TIMEOUT_S} s"
        except OSError as error:
            return None, f"cannot run {command[0]} ({error.strerror or error})"
        if result.returncode != 0:
            return None, (result.stderr or result.stdout).strip()[-2000:] or f"{name} exited with {result.returncode}"
        if not os.path.lexists(temporary) or os.path.getsize(temporary) == 0:
            return None, (f"{name} reported success but wrote no library (is CC={' '.join(command)} a C "
                          f"compiler?)")
        os.chmod(temporary, 0o700)  # the linker may have made the file anew, with the umask's mode
        loaded, problem = _load(Path(temporary), flags, None, f"the library {name} built")
        if loaded is None:
            return None, problem
        handle, stamp_temporary = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.stamp')
        with os.fdopen(handle, 'w') as stamp:
            stamp.write(loaded.digest + '\n')
        os.replace(stamp_temporary, stamp_path(target))
        os.replace(temporary, target)
        loaded.path = target
        return loaded, None
    except OSError as error:  # the folder stopped taking files midway (full disk, ...)
        return None, f"cannot write the build into {target.parent} ({error.strerror or error})"
    finally:
        for leftover in (temporary, stamp_temporary):
            if leftover and os.path.lexists(leftover):
                os.unlink(leftover)


def _self_check(kernels: Kernels) -> Optional[str]:
    """Run the kernels on small random problems and compare with torch's arithmetic: the images'
    aliases against torch's FFT, then the cells against torch's convolutions (Fourier grids with
    every radix the transforms use, odd and even, units with unused lanes, a partial block of
    images, one thread and two)."""
    if kernels.lanes < 1 or kernels.images_per_block < 1:
        return f'the compiled kernels report {kernels.lanes} lanes and {kernels.images_per_block} images per block'
    generator = torch.Generator().manual_seed(0)
    stride, padding = 4, 3
    for height, width, n_h, n_w in ((5, 7, 8, 12), (30, 21, 40, 36)):
        images = torch.randn(2, 3, height, width, generator=generator)
        m_h, m_w = n_h // stride, n_w // stride
        hw = m_w // 2 + 1
        grid = torch.nn.functional.pad(images, (padding, n_w - width - padding, padding, n_h - height - padding))
        folded = fold(torch.fft.fft2(grid).view(6, n_h, n_w), stride).view(2, 3, stride * stride, m_h, m_w)[..., :hw]
        expected = torch.view_as_real(folded.permute(1, 0, 4, 3, 2)).contiguous()  # [colour][p][mw][mh][a][re|im]
        packed = torch.full_like(expected, float('nan'))
        floats = kernels.scratch_floats(n_h, n_w, stride, 1, 1)
        scratch = torch.empty(2 * floats)
        status = kernels.spectra(images.data_ptr(), 2, 3, height, width, padding, n_h, n_w, stride,
                                 packed.data_ptr(), scratch.data_ptr(), floats, 2)
        if status != 0 or not torch.allclose(packed, expected, rtol=1e-4, atol=1e-4):
            return 'the compiled alias packing disagrees with torch'
    from .compiled import CompiledCells  # here: compiled.py imports this module
    simple, complex_, size = 5, 2 * kernels.lanes + 1, 5
    banks = []
    for _ in range(2):
        colours = torch.randint(0, 3, (simple + complex_,), generator=generator)
        banks.append(on_colour_channels(torch.randn(simple + complex_, size, size, generator=generator), colours, 3))
    cells = CompiledCells(banks[0], banks[1], simple, stride, 2, kernels)
    for shape, padding, threads in (((21, 37), 2, 1), ((33, 29), 0, 2)):  # Fourier grids 6 x 10 and 9 x 8
        images = torch.randn(kernels.images_per_block + 2, 3, *shape, generator=generator)
        q0, q1 = (torch.nn.functional.conv2d(images.double(), bank.double(), stride=stride, padding=padding)
                  for bank in banks)
        expected = torch.cat([2.0 * q0[:, :simple].clamp(min=0),
                              0.5 * torch.sqrt(q0[:, simple:] ** 2 + q1[:, simple:] ** 2)], 1).float()
        got = cells(images, (2.0, 0.5), padding, threads=threads)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4,
                                                             atol=1e-5 * expected.abs().max().item()):
            return 'the compiled cells disagree with torch'
    return None


_reason: Optional[str] = None


@functools.lru_cache(maxsize=None)
def kernels() -> Optional[Kernels]:
    """The compiled kernels, built on first call; None when they cannot be had (see
    :func:`unavailable_reason`). Never raises: any failure to build or load them means None."""
    global _reason
    try:
        loaded, _reason = _find_or_build()
    except Exception as error:  # whatever goes wrong here must not break a forward pass
        loaded, _reason = None, f"building or loading them failed unexpectedly ({type(error).__name__}: {error})"
    return loaded


def _find_or_build() -> Tuple[Optional[Kernels], Optional[str]]:
    if compile_disabled():
        return None, f'disabled by {DISABLE_ENV}'
    command = compiler_command()
    if command is None:
        return None, 'no C compiler found (install gcc or clang, or set CC)'
    if not SOURCE.is_file():
        return None, f'{SOURCE} is missing (reinstall the package)'
    from ...paths import cache_dir  # here: only compilation needs the cache
    try:
        root = cache_dir()
    except Exception as error:
        return None, f"the cache folder cannot be found ({error}); set VONENET_BRAINSCORE_HOME to a folder of your own"
    folder, problem = _private_folder(root)
    if problem:
        return None, problem
    try:
        version = subprocess.run([*command, '--version'], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ''
    source = SOURCE.read_text()
    failures = []
    for flags in FLAG_SETS:
        key = hashlib.sha256('\0'.join([source, ' '.join(command), version, ' '.join(flags),
                                        _cpu_identity(), torch.__version__]).encode()).hexdigest()[:20]
        target = folder / f'vone_kernels_{key}.so'
        loaded, cached_problem = _load_cached(target, flags)
        if loaded is not None:
            return loaded, None
        try:
            loaded, complaint = _build(command, flags, target)  # replaces a cached file that was refused
        except _FolderUnwritable as error:
            return None, '; '.join(filter(None, [cached_problem, str(error)]))
        if loaded is not None:
            return loaded, None
        lines = complaint.splitlines() if complaint else []
        failures.append(f"{' '.join(flags)}: {lines[-1] if lines else 'failed'}")
    return None, f'compiling vone/accel/{SOURCE.name} with {" ".join(command)} failed: ' + '; '.join(failures)


def unavailable_reason() -> Optional[str]:
    """Why :func:`kernels` returned None (None if it has not, or has not been called)."""
    return _reason


_warned = False


def warn_unavailable_once() -> None:
    """Say once per process that a slower method stands in (unless the user switched them off)."""
    global _warned
    if _warned or compile_disabled():
        return
    _warned = True
    warnings.warn(f"the VOneBlock's compiled kernels are unavailable ({_reason}); using the slower torch-only "
                  f"'spectral' method, which gives the same results. Set {DISABLE_ENV}=1 to silence this.",
                  RuntimeWarning, stacklevel=4)
