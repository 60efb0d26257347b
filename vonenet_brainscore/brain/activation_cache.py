"""The stale-cache guard: cached activations are never served for other stimuli.

Part of the brain model (brain/), used by ``brain.extraction``'s extractor around Brain-Score's activation
cache. Brain-Score's activation cache (result_caching) is keyed by model and stimulus-set identifier, not
by the images: the same identifier over other files used to end in a bare ``AssertionError`` (a stimulus
set) or return the old activations under the old paths (a list of paths), and files rewritten in place
were served stale. Next to each cache entry a small ``<entry>.stimuli.json`` records the stimulus paths
and the files' size, modification time and BLAKE2 hash; a request whose paths or file contents differ
raises ``StaleActivationsError`` before any work, saying how to fix it. Unchanged size and modification
time count as unchanged content (as in make and rsync); otherwise the hash decides.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from ..errors import StimulusError
from ..paths import write_atomically
from .brainscore_access import activation_cache_store, resolution_of

logger = logging.getLogger(__name__)


class StaleActivationsError(StimulusError):
    """Brain-Score's activation cache holds, under this stimulus set's identifier, activations of other stimuli."""


MANIFEST_SUFFIX = '.stimuli.json'
_MANIFEST_VERSION = 1
_SHOWN = 3  # example paths in an error message


def _file_hash(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: str) -> Optional[list]:
    """[size, mtime_ns, hash] of a file, or None if it cannot be read."""
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns, _file_hash(path)]
    except OSError:
        return None


def _examples(paths) -> str:
    shown = ', '.join(paths[:_SHOWN])
    return shown + (f' and {len(paths) - _SHOWN} more' if len(paths) > _SHOWN else '')


class ActivationCacheEntry:
    """Where result_caching keeps one model's activations for one stimulus set, and its stimuli manifest."""

    def __init__(self, key: str, path: Optional[str], stimuli_identifier: str):
        self.key = key
        self.path = path  # None: the S3 backend, where no manifest is kept
        self.stimuli_identifier = stimuli_identifier

    @property
    def manifest_path(self) -> str:
        return self.path + MANIFEST_SUFFIX

    def exists(self) -> bool:
        return self.path is not None and os.path.isfile(self.path)

    def how_to_clear(self) -> str:
        if self.path is None:
            return f"delete the entry {self.key!r} from the result_caching S3 bucket"
        return f"rm {shlex.quote(self.path)}*  (the entry and its {MANIFEST_SUFFIX})"

    def read_manifest(self) -> Optional[dict]:
        try:
            with open(self.manifest_path, encoding='utf-8') as file:
                manifest = json.load(file)
            if manifest.get('version') == _MANIFEST_VERSION and \
                    len(manifest['paths']) == len(manifest['files']):
                return manifest
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def write_manifest(self, stimuli: "OrderedDict[str, str]", files: list) -> None:
        manifest = {'version': _MANIFEST_VERSION, 'stimuli_identifier': self.stimuli_identifier,
                    'paths': list(stimuli), 'files': files}
        try:
            write_atomically(Path(self.manifest_path), lambda stream: stream.write(json.dumps(manifest).encode()))
        except OSError as error:
            logger.warning(f"could not record the stimuli of the activation cache entry {self.path} ({error}); "
                           f"a later request under stimulus set {self.stimuli_identifier!r} cannot be checked "
                           f"against them")


def unique_stimuli(paths) -> "OrderedDict[str, str]":
    """Brain-Score's comparison key of each path (``lstrip_local``: the part from ``.brainio`` on) ->
    the path as given, once each, in order."""
    from brainscore_vision.model_helpers.activations.core import lstrip_local
    unique: "OrderedDict[str, str]" = OrderedDict()
    for path in paths:
        unique.setdefault(lstrip_local(str(path)), str(path))
    return unique


def locate_entry(extractor, stimuli_identifier, require_variance=None) -> Optional[ActivationCacheEntry]:
    """The result_caching entry that ``extractor.from_paths`` reads and writes for this stimulus set, or
    None when nothing is cached. Built with result_caching's own key and path functions, from the
    arguments Brain-Score's ``from_paths`` passes to its cached ``_from_paths_stored``."""
    import result_caching
    from brainscore_vision.model_helpers.activations import core as brainscore_core
    try:
        storage, function = activation_cache_store()
        model_key = getattr(brainscore_core, 'model_cache_identifier', lambda identifier: identifier)
        stimuli_key = getattr(brainscore_core, 'stimulus_set_cache_identifier', lambda identifier: identifier)
        model = model_key(extractor.identifier) if extractor.identifier else None
        stimuli = stimuli_key(stimuli_identifier) if stimuli_identifier else None
        if not (model and stimuli):
            return None
        call_args = storage.getcallargs(
            function, extractor, identifier=model, layers=None, stimuli_identifier=stimuli,
            resolution=resolution_of(extractor) or brainscore_core.NO_RESOLUTION,
            stimuli_paths=None, require_variance=require_variance)
        key = storage.get_function_identifier(function, call_args)
        if not result_caching.is_enabled(key):
            return None
        s3 = getattr(result_caching, 's3_enabled', lambda: False)()
        return ActivationCacheEntry(key, None if s3 else storage.storage_path(key), stimuli_identifier)
    except Exception as error:  # noqa: BLE001 - another result_caching: keep the check on the result
        logger.debug(f"activation cache entry not located ({type(error).__name__}: {error})")
        return None


def check_manifest(model_identifier: str, entry: ActivationCacheEntry, stimuli: "OrderedDict[str, str]"):
    """Raise StaleActivationsError if the entry was computed on other paths or other file contents.

    Returns True when the manifest stands as it is, the refreshed file records when only
    modification times changed, and None when there is no manifest to check against."""
    manifest = entry.read_manifest()
    if manifest is None:
        return None
    if manifest['paths'] != list(stimuli):
        stale(model_identifier, entry, entry.stimuli_identifier, path_difference(manifest['paths'], list(stimuli)))
    changed, files, refreshed = [], [], False
    for path, recorded in zip(stimuli.values(), manifest['files']):
        try:
            stat = os.stat(path)
        except OSError:  # gone: Brain-Score serves the cache without reading images, so do we
            files.append(recorded)
            continue
        if recorded is None or [stat.st_size, stat.st_mtime_ns] == recorded[:2]:
            files.append(recorded)
        elif stat.st_size != recorded[0] or _file_hash(path) != recorded[2]:
            changed.append(path)
        else:  # touched, same bytes
            files.append([stat.st_size, stat.st_mtime_ns, recorded[2]])
            refreshed = True
    if changed:
        stale(model_identifier, entry, entry.stimuli_identifier,
              f"{len(changed)} of its {len(stimuli)} image files changed since their activations were "
              f"cached ({_examples(changed)})")
    return files if refreshed else True


def path_difference(cached: list, requested: list) -> str:
    """What differs between the paths of a cache entry and those of a request, for the error message."""
    in_cache, in_request = set(cached), set(requested)
    missing = [path for path in requested if path not in in_cache]
    others = [path for path in cached if path not in in_request]
    if not missing and not others:
        return f"the cache holds the same {len(cached)} images in another order"
    return (f"{len(missing)} of its {len(requested)} images are not in the cache"
            + (f" ({_examples(missing)})" if missing else '')
            + f", which holds {len(cached)} images" + (f", {len(others)} of them others ({_examples(others)})"
                                                        if others else ''))


def stale(model_identifier: str, entry: Optional[ActivationCacheEntry], stimuli_identifier, reason: str):
    """Raise the StaleActivationsError that names the cause and both fixes."""
    where = entry.how_to_clear() if entry is not None else (
        f"delete the files named '*identifier={model_identifier},stimuli_identifier={stimuli_identifier},*' "
        f"under {os.path.expanduser(os.getenv('RESULTCACHING_HOME', '~/.result_caching'))}")
    raise StaleActivationsError(
        f"cached activations of model {model_identifier!r} for stimulus set {stimuli_identifier!r} were "
        f"computed on other stimuli: {reason}. Brain-Score's activation cache is keyed by the stimulus "
        f"set's identifier, not by its images, so give this stimulus set a new identifier (e.g. "
        f"stimulus_set.identifier = '{stimuli_identifier}-v2'), or delete the cached activations to "
        f"recompute them: {where}")
