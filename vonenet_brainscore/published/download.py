"""Fetch published VOneNet checkpoints into a local cache, safely.

Downloads are streamed to a temporary ``*.part`` file next to the destination, checked (size
against Content-Length, and by default that the body is a checkpoint ``torch.load(weights_only=
True)`` can read), and only then moved into place with an atomic rename, under an inter-process
lock, so that the cache never holds a half-written or foreign file and parallel jobs (e.g. a
cluster array) download each file only once.

Beside each verified download, ``<file>.verified.json`` records its SHA-256, size and mtime. A cached
file whose size or mtime no longer matches is hashed again; if it differs from what was verified
(truncated, overwritten, damaged) it is downloaded again. A file in the cache without that record
(placed there by hand) is used as it is.

Part of ``published/`` (the catalogue's records name the files fetched here); the cache folder itself
and the atomic writes belong to ``paths``.
"""
import glob
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

import filelock
import requests
from tqdm import tqdm

from ..errors import SettingError, WeightsUnavailableError
from ..paths import HOME_ENV, cache_dir, make_cache_folders, write_atomically  # noqa: F401 (HOME_ENV: callers name it here too)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = 'https://vonenet-models.s3.us-east-2.amazonaws.com/'
MIRROR_ENV = 'VONENET_BRAINSCORE_MIRROR'

# Limits of one download (download_file's defaults). The published checkpoints are 0.1-0.5 GB.
DEFAULT_TIMEOUT = 60.0  # s to connect, and for each read
DEFAULT_STALL_TIMEOUT = 60.0  # s without a single byte: the server has stopped sending
DEFAULT_TOTAL_TIMEOUT = 7200.0  # s for the whole body: 0.5 GB needs an average of 70 kB/s
DEFAULT_MAX_BYTES = 2 * 1024 ** 3  # 4x the largest published checkpoint: a runaway body cannot fill the disk
# A *.part file is another process's download in progress unless that process has ended (same
# host) or the file has not been written to for this long (any host; live downloads write at
# least every stall timeout).
STALE_PART_SECONDS = 3600.0
SIDECAR_SUFFIX = '.verified.json'
NOT_CACHED = 'nothing was cached'

_CHUNK_SIZE = 1 << 16
# mkstemp creates files readable by the owner only; a shared cache should be readable by all.
_FILE_MODE = 0o644
_WAIT_REPORT_SECONDS = 60.0

# What cache_state says about a cached file.
MISSING, VERIFIED, UNRECORDED, CHANGED = 'missing', 'verified', 'unrecorded', 'changed'


class DownloadRejected(IOError):
    """The server's response arrived whole but is not the file asked for (e.g. an HTML page)."""


def base_url() -> str:
    """Where checkpoints are fetched from; a mirror lets users behind a proxy use an internal copy."""
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    if not mirror:
        return DEFAULT_BASE_URL
    parts = urlsplit(mirror)
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise SettingError(f"{MIRROR_ENV}={mirror!r} is not an http:// or https:// URL; set it to the base URL of a "
                           f"copy of the published weights (e.g. https://mirror.example.org/vonenet/), or unset it "
                           f"to use {DEFAULT_BASE_URL}")
    return mirror if mirror.endswith('/') else mirror + '/'


def weights_dir() -> Path:
    """Folder that holds downloaded checkpoints."""
    return cache_dir() / 'weights'


def weights_url(filename: str) -> str:
    """URL of a published checkpoint file under the current base URL."""
    return base_url() + filename


def verify_checkpoint(path: Path):
    """The default check of a finished download: a checkpoint ``torch.load(weights_only=True)`` reads."""
    from .checkpoints import read_checkpoint  # here: torch is only needed once something was downloaded
    return read_checkpoint(path, source='the downloaded file', advice=NOT_CACHED)


# --- the record of a verified download ---------------------------------------------------------
def sidecar_path(destination) -> Path:
    """Where the SHA-256, size and mtime of a verified download are recorded."""
    destination = Path(destination)
    return destination.with_name(destination.name + SIDECAR_SUFFIX)


def _read_record(destination: Path) -> Optional[dict]:
    try:
        record = json.loads(sidecar_path(destination).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning('Ignoring unreadable download record %s: %s', sidecar_path(destination), error)
        return None
    if not isinstance(record, dict) or not isinstance(record.get('size'), int) or \
            not isinstance(record.get('sha256'), str):
        logger.warning('Ignoring malformed download record %s', sidecar_path(destination))
        return None
    return record


def _write_record(destination: Path, record: dict) -> None:
    text = json.dumps(record, indent=1).encode()
    write_atomically(sidecar_path(destination), lambda stream: stream.write(text), mode=_FILE_MODE)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def cache_state(destination, *, rehash: bool = False) -> str:
    """``'missing'``, ``'verified'`` (matches its download record), ``'unrecorded'`` (no record: placed by
    hand, or by an older version) or ``'changed'`` (differs from what was verified at download).

    Cheap by default: the size and mtime are compared with the record. ``rehash=True`` hashes a file
    whose size matches but whose mtime does not (e.g. after ``touch``) and renews the record if the
    contents are still the verified ones.
    """
    destination = Path(destination)
    try:
        stat = destination.stat()
    except FileNotFoundError:
        return MISSING
    record = _read_record(destination)
    if record is None:
        return UNRECORDED
    if stat.st_size != record['size']:
        return CHANGED
    if stat.st_mtime_ns == record.get('mtime_ns'):
        return VERIFIED
    if not rehash:
        return CHANGED
    if file_sha256(destination) != record['sha256']:
        return CHANGED
    try:
        _write_record(destination, {**record, 'mtime_ns': stat.st_mtime_ns})
    except OSError:
        pass  # a read-only cache: the contents are right, the record just stays behind
    return VERIFIED


def recorded_sha256(destination) -> Optional[str]:
    """The SHA-256 recorded for a verified download, if the file still matches it (size and mtime)."""
    if cache_state(destination) != VERIFIED:
        return None
    return _read_record(Path(destination))['sha256']


def _describe_change(destination: Path) -> str:
    record = _read_record(destination) or {}
    try:
        size = destination.stat().st_size
    except OSError:
        return 'it is gone or unreadable'
    recorded = record.get('size')
    if size != recorded:
        return (f"it has {size:,} bytes where the verified download had "
                f"{format(recorded, ',') if isinstance(recorded, int) else 'another size'} (truncated or overwritten)")
    return 'its SHA-256 differs from the verified download (damaged or overwritten)'


# --- downloading -------------------------------------------------------------------------------
def download_file(url: str, destination, *, progress: bool = True, timeout: float = DEFAULT_TIMEOUT,
                  stall_timeout: float = DEFAULT_STALL_TIMEOUT, total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
                  max_bytes: int = DEFAULT_MAX_BYTES, wait_timeout: Optional[float] = None,
                  verify: Optional[Callable[[Path], object]] = verify_checkpoint) -> Path:
    """Download ``url`` to ``destination`` unless it is already there, and return the local path.

    A cached file is returned without network access when it matches the record of its verified
    download (a size and mtime check), or has no record (placed by hand). One that differs from its
    record is hashed, and downloaded again if its contents changed. Concurrent callers (threads or
    processes) serialise on ``<destination>.lock``; a caller that has to wait says so (a WARNING on
    this module's logger), and the loser finds the finished file and returns.

    Limits: ``timeout`` to connect and per read; ``stall_timeout`` seconds without a byte;
    ``total_timeout`` seconds for the whole body; ``max_bytes``; ``wait_timeout`` for another process's
    download (default: ``total_timeout`` plus five minutes). ``verify(part_path)`` checks the finished
    body before it is renamed into place (default: a checkpoint ``torch.load(weights_only=True)`` reads;
    ``None`` skips it). Every failure raises :class:`WeightsUnavailableError`, names the URL and the
    destination, and leaves no partial file behind; stale ``*.part`` files of ended processes are removed.
    """
    destination = Path(destination)
    if destination.is_dir():
        raise _unavailable(url, destination, IsADirectoryError(f'{destination} is a folder, not a file'))
    state = cache_state(destination)
    if state in (VERIFIED, UNRECORDED):
        _clean_parts_if_free(destination)
        return destination
    if wait_timeout is None:
        wait_timeout = total_timeout + 300
    problem = None
    try:
        make_cache_folders(destination.parent)
        lock = filelock.FileLock(str(destination) + '.lock')
        waited = _acquire(lock, destination, wait_timeout)
    except OSError as error:  # unwritable cache folder, lock on a read-only file system, a wait too long
        if state == CHANGED:
            problem = f'the cached {destination} differs from its verified download: {_describe_change(destination)}'
        raise _unavailable(url, destination, error, problem) from error
    try:
        _remove_stale_parts(destination)
        state = cache_state(destination, rehash=True)
        if state in (VERIFIED, UNRECORDED):
            if waited:
                logger.info('%s was downloaded by another process; using it', destination)
            return destination
        if state == CHANGED:
            problem = f'the cached {destination} differs from its verified download: {_describe_change(destination)}'
            logger.warning('%s; downloading it again from %s', problem, url)
        _fetch(url, destination, progress=progress, timeout=timeout, stall_timeout=stall_timeout,
               total_timeout=total_timeout, max_bytes=max_bytes, verify=verify, problem=problem)
    finally:
        lock.release()
    return destination


def _acquire(lock: filelock.FileLock, destination: Path, wait_timeout: float) -> bool:
    """Take the lock; say (WARNING) when another process holds it, so a wait is explained. True if it waited."""
    try:
        lock.acquire(timeout=0)
        return False
    except filelock.Timeout:
        pass
    logger.warning('Waiting for another process to finish downloading %s (it holds %s); at most %.0f s',
                   destination, lock.lock_file, wait_timeout)
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if waited >= wait_timeout:
            raise TimeoutError(f'another process has been downloading {destination} for {waited:.0f} s '
                               f'(wait_timeout={wait_timeout:g} s) and still holds {lock.lock_file}')
        try:
            lock.acquire(timeout=min(_WAIT_REPORT_SECONDS, wait_timeout - waited))
            return True
        except filelock.Timeout:
            logger.warning('Still waiting for another process to finish downloading %s (%.0f s so far)',
                           destination, time.monotonic() - started)


def _fetch(url: str, destination: Path, *, progress: bool, timeout: float, stall_timeout: float,
           total_timeout: float, max_bytes: int, verify, problem: Optional[str]) -> None:
    """Stream ``url`` into a ``*.part`` file beside ``destination``, verify it, then rename it into place."""
    fd, part = tempfile.mkstemp(dir=destination.parent, prefix=f'{destination.name}.{_owner_tag()}.',
                                suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as file:
            logger.info('Downloading %s to %s', url, destination)
            sha256, size, content_type = _stream(url, file, destination.name, progress=progress, timeout=timeout,
                                                 stall_timeout=stall_timeout, total_timeout=total_timeout,
                                                 max_bytes=max_bytes)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(part, _FILE_MODE)
        if verify is not None:
            try:
                verify(Path(part))
            except Exception as error:
                kind = f' (Content-Type {content_type})' if content_type else ''
                mirror = os.environ.get(MIRROR_ENV, '').strip()
                hint = f'; check that {MIRROR_ENV}={mirror!r} points at a copy of the published weights' if mirror \
                    else ''
                raise DownloadRejected(f'the server answered with {size:,} bytes{kind} that are not a usable '
                                       f'checkpoint: {error}{hint}') from error
        stat = os.stat(part)
        verified = 'torch.load(weights_only=True)' if verify is verify_checkpoint else \
            (getattr(verify, '__qualname__', repr(verify)) if verify is not None else None)
        _write_record(destination, {'sha256': sha256, 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns,
                                    'url': url, 'verified_by': verified,
                                    'downloaded': time.strftime('%Y-%m-%dT%H:%M:%S%z')})
        os.replace(part, destination)
    except BaseException as error:
        _remove_quietly(part)
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: not ours to convert
            raise
        raise _unavailable(url, destination, error, problem) from error


def _read_piece(raw):
    """Whatever part of the body has arrived (up to a chunk), so a trickle cannot hold a read forever."""
    read1 = getattr(raw, 'read1', None)
    if read1 is not None:
        return read1(_CHUNK_SIZE, decode_content=True)
    return raw.read(1024, decode_content=True)  # urllib3 1.x: small reads keep the time checks frequent


def _stream(url: str, file, label: str, *, progress: bool, timeout: float, stall_timeout: float,
            total_timeout: float, max_bytes: int):
    """Write the body to ``file`` within the limits; check it against Content-Length when one was sent.

    Returns the body's SHA-256, its size and the Content-Type. A read waits at most
    min(timeout, stall_timeout); the total is checked between reads.
    """
    import urllib3
    started = time.monotonic()
    read_timeout = min(timeout, stall_timeout)
    # Ask for the bytes as stored: a compressed transfer would make Content-Length uncheckable.
    headers = {'Accept-Encoding': 'identity'}
    digest, received = hashlib.sha256(), 0
    with requests.get(url, stream=True, timeout=(timeout, read_timeout), headers=headers) as response:
        response.raise_for_status()
        expected = _content_length(response)
        content_type = response.headers.get('Content-Type')
        if expected is not None and expected > max_bytes:
            raise IOError(f'the server announces {expected:,} bytes, more than max_bytes={max_bytes:,}')
        with tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress, leave=False) as bar:
            while True:
                elapsed = time.monotonic() - started
                if elapsed > total_timeout:
                    raise TimeoutError(f'the download took longer than total_timeout={total_timeout:g} s '
                                       f'({received:,} of {expected if expected is not None else "?"} bytes in '
                                       f'{elapsed:.1f} s)')
                try:
                    piece = _read_piece(response.raw)
                except (urllib3.exceptions.ReadTimeoutError, socket.timeout) as error:
                    raise TimeoutError(f'the server sent nothing for {read_timeout:g} s (stall_timeout='
                                       f'{stall_timeout:g} s, timeout={timeout:g} s) after {received:,} bytes') \
                        from error
                if not piece:
                    break
                file.write(piece)
                digest.update(piece)
                received += len(piece)
                bar.update(len(piece))
                if received > max_bytes:
                    raise IOError(f'the body is longer than max_bytes={max_bytes:,}')
    if expected is not None and received != expected:
        raise IOError(f'received {received} bytes but the server announced {expected}')
    if expected is None:
        logger.info('%s came without a Content-Length (%d bytes); its contents are checked instead', url, received)
    return digest.hexdigest(), received, content_type


def _content_length(response: requests.Response):
    """The announced size of the body as stored, or None when unknown or not comparable."""
    if response.headers.get('Content-Encoding', 'identity') != 'identity':
        return None  # the body is decoded on the fly, so its length differs from the header's
    try:
        length = int(response.headers['Content-Length'])
    except (KeyError, ValueError):
        return None
    return length if length >= 0 else None


# --- partial downloads -------------------------------------------------------------------------
def _host() -> str:
    return re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())[:63] or 'host'


def _owner_tag() -> str:
    """``<pid>-<host>``, put in a *.part file's name so a later process can tell whether its writer ended."""
    return f'{os.getpid()}-{_host()}'


def _part_pattern(destination: Path):
    """Names mkstemp gives this destination's *.part files: ``<name>.[<pid>-<host>.]<8 random>.part``
    (without the owner: an older version's). Anything else in the folder is never touched."""
    return re.compile(re.escape(destination.name) + r'\.(?:(\d+)-([A-Za-z0-9-]+)\.)?[a-z0-9_]{8}\.part')


def _part_files(destination: Path) -> list:
    pattern = _part_pattern(destination)
    try:
        return [part for part in destination.parent.glob(glob.escape(destination.name) + '.*.part')
                if pattern.fullmatch(part.name)]
    except OSError:
        return []


def _process_ended(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _why_stale(part: Path, destination: Path) -> Optional[str]:
    """Why ``part`` is an abandoned download (None: it may be a live one)."""
    try:
        age = time.time() - part.stat().st_mtime
    except OSError:
        return None
    owner = _part_pattern(destination).fullmatch(part.name)
    if owner and owner.group(1) and owner.group(2) == _host() and _process_ended(int(owner.group(1))):
        return f'its process {owner.group(1)} has ended'
    if age > STALE_PART_SECONDS:
        return f'not written to for {age / 60:.0f} min'
    return None


def _remove_stale_parts(destination: Path) -> None:
    """Remove abandoned ``*.part`` files of ``destination``; call with its lock held."""
    for part in _part_files(destination):
        why = _why_stale(part, destination)
        if why is not None:
            logger.info('Removing partial download %s: %s', part, why)
            _remove_quietly(part)


def _clean_parts_if_free(destination: Path) -> None:
    """On the cached path: remove abandoned ``*.part`` files if there are any and the lock is free.

    Takes (creates) the lock only when there is something to remove, so a read-only cache works."""
    if not _part_files(destination):
        return
    lock = filelock.FileLock(str(destination) + '.lock')
    try:
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):
        return  # a download is running, or the cache is read-only
    try:
        _remove_stale_parts(destination)
    finally:
        lock.release()


def _remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning('Could not remove partial download %s: %s', path, error)


def _unavailable(url: str, destination: Path, cause: BaseException,
                 problem: Optional[str] = None) -> WeightsUnavailableError:
    """An error that says what failed and three ways to get the file without this download."""
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    first = f'{problem[0].upper()}{problem[1:]}; could not download it again from' if problem else 'Could not download'
    return WeightsUnavailableError(
        f'{first} {url} to {destination}: {type(cause).__name__}: {cause}\n'
        f'To fix this, do one of:\n'
        f'  - download {url} on a machine that can reach it and place it at exactly {destination}'
        f'{" (delete " + str(sidecar_path(destination)) + ")" if problem else ""}\n'
        f'  - set {MIRROR_ENV} to the base URL of a reachable copy of the published weights'
        f'{" (now " + repr(mirror) + ")" if mirror else ""}\n'
        f'  - pass weights_path=<local checkpoint file> to get_model')
