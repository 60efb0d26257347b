"""Writing files so that a crash or an interrupted run never leaves half a file behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional


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
