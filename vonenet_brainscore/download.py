"""Fetch published VOneNet checkpoints into a local cache, safely.

Downloads are streamed to a temporary file next to the destination and moved into place with an
atomic rename, under an inter-process lock, so that the cache never holds a half-written checkpoint
and parallel jobs (e.g. a cluster array) download each file only once.
"""
import logging
import os
import tempfile
from pathlib import Path

import filelock
import requests
from tqdm import tqdm

from .errors import WeightsUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = 'https://vonenet-models.s3.us-east-2.amazonaws.com/'
MIRROR_ENV = 'VONENET_BRAINSCORE_MIRROR'
HOME_ENV = 'VONENET_BRAINSCORE_HOME'

_CHUNK_SIZE = 1 << 16
# mkstemp creates files readable by the owner only; a shared cache should be readable by all.
_FILE_MODE = 0o644


def base_url() -> str:
    """Where checkpoints are fetched from; a mirror lets users behind a proxy use an internal copy."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return DEFAULT_BASE_URL
    return mirror if mirror.endswith('/') else mirror + '/'


def cache_dir() -> Path:
    """Root of the local cache, following the XDG convention unless overridden; never created here."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    root = Path(xdg).expanduser() if xdg else Path.home() / '.cache'
    return root / 'vonenet-brainscore'


def weights_dir() -> Path:
    """Folder that holds downloaded checkpoints."""
    return cache_dir() / 'weights'


def weights_url(filename: str) -> str:
    """URL of a published checkpoint file under the current base URL."""
    return base_url() + filename


def download_file(url: str, destination, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` unless it is already there, and return the local path.

    An existing file is trusted and returned without network access. Concurrent callers (threads or
    processes) serialise on ``<destination>.lock``; the loser finds the finished file and returns.
    Every failure raises :class:`WeightsUnavailableError` and leaves no partial file behind.
    """
    destination = Path(destination)
    if destination.exists():
        return destination
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(destination) + '.lock')
        _acquire(lock, destination)
    except OSError as error:  # unwritable cache folder, lock on a read-only file system, ...
        raise _unavailable(url, destination, error) from error
    try:
        if destination.exists():  # another process finished it while we waited
            logger.debug('%s was downloaded by another process', destination)
            return destination
        _fetch(url, destination, progress=progress, timeout=timeout)
    finally:
        lock.release()
    return destination


def _acquire(lock: filelock.FileLock, destination: Path) -> None:
    """Take the lock, saying in the log when another process holds it so a wait is explained."""
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info('Waiting for another process to finish downloading %s', destination)
        lock.acquire()


def _fetch(url: str, destination: Path, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``destination``, then rename it into place."""
    fd, part = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + '.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as file:
            logger.info('Downloading %s to %s', url, destination)
            _stream(url, file, destination.name, progress=progress, timeout=timeout)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(part, _FILE_MODE)
        os.replace(part, destination)
    except BaseException as error:
        _remove_quietly(part)
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: not ours to convert
            raise
        raise _unavailable(url, destination, error) from error


def _stream(url: str, file, label: str, *, progress: bool, timeout: float) -> None:
    """Write the response body to ``file``, checking it against Content-Length when one was sent."""
    # Ask for the bytes as stored: a compressed transfer would make Content-Length uncheckable.
    headers = {'Accept-Encoding': 'identity'}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
        response.raise_for_status()
        expected = _content_length(response)
        received = 0
        with tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress, leave=False) as bar:
            for chunk in response.iter_content(chunk_size=_CHUNK_SIZE):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise IOError(f'received {received} bytes but the server announced {expected}')


def _content_length(response: requests.Response):
    """The announced size of the body as stored, or None when unknown or not comparable."""
    if response.headers.get('Content-Encoding', 'identity') != 'identity':
        return None  # the body is decoded on the fly, so its length differs from the header's
    try:
        return int(response.headers['Content-Length'])
    except (KeyError, ValueError):
        return None


def _remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning('Could not remove partial download %s: %s', path, error)


def _unavailable(url: str, destination: Path, cause: BaseException) -> WeightsUnavailableError:
    """An error that says what failed and three ways to get the file without this download."""
    return WeightsUnavailableError(
        f'Could not download {url} to {destination}: {type(cause).__name__}: {cause}\n'
        f'To fix this, do one of:\n'
        f'  - download {url} on a machine that can reach it and place it at exactly {destination}\n'
        f'  - set {MIRROR_ENV} to the base URL of a reachable copy of the published weights\n'
        f'  - pass weights_path=<local checkpoint file> to get_model')
