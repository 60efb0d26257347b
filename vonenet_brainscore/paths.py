"""Where the package keeps files, and how it writes them: the cache folders and atomic writes.

On the foundation floor: the published weights (``published/download``), the compiled kernels
(``vone/accel/native``) and the generated stimuli (``scoring/v1_properties``) all ask here for the
cache, and every file that must never be left half-written goes through ``write_atomically``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from .errors import SettingError

HOME_ENV = 'VONENET_BRAINSCORE_HOME'
"""Names the cache folder, overriding ``$XDG_CACHE_HOME/vonenet-brainscore`` and ``~/.cache/vonenet-brainscore``."""


def write_atomically(path: Path, write: Callable[[BinaryIO], object], mode: Optional[int] = None) -> None:
    """Call ``write(stream)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb') as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def writable_problem(directory: Path) -> Optional[str]:
    """Why no file can be created in the existing folder ``directory`` (tried for real, so read-only file
    systems and root's permissions count), or None."""
    probe = Path(directory) / f'.vonenet-brainscore-write-test-{os.getpid()}'
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as error:
        return error.strerror or type(error).__name__
    os.close(descriptor)
    os.unlink(probe)
    return None


# --- the cache ---------------------------------------------------------------------------------
def _expanded(value: str, variable: str) -> Path:
    """``value`` with ``~`` expanded; an error naming ``variable`` when that names no home folder."""
    try:
        path = Path(value).expanduser()
    except (RuntimeError, KeyError) as error:
        path, cause = None, error
    else:
        cause = None
    if path is None or str(path).startswith('~'):
        user = value.split('/')[0]
        raise SettingError(f"{variable}={value!r}: {user!r} cannot be expanded, as no user of that name has a home "
                           f"folder ({cause or 'unknown user'}); set {variable} to an absolute path, e.g. "
                           f"{variable}=/scratch/$USER/vonenet-brainscore, or unset it")
    return path


def cache_dir() -> Path:
    """Root of the local cache, following the XDG convention unless overridden; never created here."""
    home = os.environ.get(HOME_ENV)
    if home:
        root = _expanded(home, HOME_ENV)
        if root.exists() and not root.is_dir():
            raise SettingError(f"{HOME_ENV}={home!r} is a file, but it must name a folder for the cache; "
                               f"set it to a folder (it is created when needed), or unset it")
        return root
    xdg = os.environ.get('XDG_CACHE_HOME')
    if xdg:
        root = _expanded(xdg, 'XDG_CACHE_HOME')
        if root.is_absolute():  # the XDG specification says to ignore a relative path
            return root / 'vonenet-brainscore'
    try:
        user_home = Path.home()
    except (RuntimeError, KeyError) as error:
        raise SettingError(f"cannot find your home folder for the cache ({error}); set {HOME_ENV} to the folder "
                           f"the cache should use") from None
    return user_home / '.cache' / 'vonenet-brainscore'


def make_cache_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents as rwxr-xr-x whatever the umask: under a umask of 002 the
    cache would be group-writable, and the compiled kernels are never loaded from a folder others can write."""
    missing = [path for path in [folder, *folder.parents] if not path.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)  # mkdir's mode is filtered by the umask, which may drop bits we want kept
