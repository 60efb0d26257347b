"""Activation extraction for Brain-Score that does no needless work and treats noise as trials.

Differences from Brain-Score's stock ``PytorchWrapper`` (same assemblies, same coordinates):
- batches are not padded to ``batch_size`` (3 images cost 3 forward passes, not 64);
- the forward pass stops after the last stage that holds a requested layer;
- layers are packaged with vectorised coordinates and a ready-made neuroid index (Brain-Score
  builds per-neuroid Python lists and factorises them: seconds for a 1.6 M-unit V1 map);
- a layer that runs several times (a recurrent CORnet-S area) can be read per time step by asking
  for ``<layer>-t<step>``;
- a stochastic VOneBlock draws its noise per image from (noise seed, trial, image content), so
  responses are reproducible whatever the batch size or order. ``trials(n)`` averages n draws;
  with ``require_variance`` each of Brain-Score's trials is one draw (instead of a microsaccade);
- cached activations are never served for other stimuli. Brain-Score's activation cache
  (result_caching) is keyed by model and stimulus-set identifier, not by the images: the same
  identifier over other files used to end in a bare ``AssertionError`` (a stimulus set) or return the
  old activations under the old paths (a list of paths), and files rewritten in place were served
  stale. Next to each cache entry a small ``<entry>.stimuli.json`` records the stimulus paths and the
  files' size, modification time and BLAKE2 hash; a request whose paths or file contents differ
  raises ``StaleActivationsError`` before any work, saying how to fix it. Unchanged size and
  modification time count as unchanged content (as in make and rsync); otherwise the hash decides.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

from brainscore_vision.model_helpers.activations import core as brainscore_core
from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper, lstrip_local
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper

from ..errors import StimulusError
from ..seeding import image_noise_seed
from ..vone.block import NEURONAL_NOISE_EPS

logger = logging.getLogger(__name__)

# Brain-Score's coordinate names for the flattened axes of a layer's output, by output rank - 1.
_FLATTENED_COORDS = {1: ('channel', 'channel_x', 'channel_y'), 2: ('channel', 'embedding'),
                     3: ('channel', 'channel_x', 'channel_y'), 4: ('channel_temporal', 'channel_x', 'channel_y', 'channel')}

_TIME_STEP = re.compile(r'-t(\d+)$')
V1_LAYERS = {'vone_block', 'vone_block.output'}


class _StopForward(Exception):
    """Raised from a hook once every requested layer has been recorded."""


class StaleActivationsError(StimulusError):
    """Brain-Score's activation cache holds, under this stimulus set's identifier, activations of other stimuli."""


MANIFEST_SUFFIX = '.stimuli.json'
# fast scoring answers a repeated request from memory when its activations take at most this much
REPEAT_LIMIT_BYTES = 512 * 2 ** 20
_MANIFEST_VERSION = 1
_SHOWN = 3  # example paths in an error message


def _file_hash(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(path: str) -> Optional[list]:
    """[size, mtime_ns, hash] of a file, or None if it cannot be read."""
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns, _file_hash(path)]
    except OSError:
        return None


def _unique_stimuli(paths) -> "OrderedDict[str, str]":
    """Brain-Score's comparison key of each path (``lstrip_local``: the part from ``.brainio`` on) ->
    the path as given, once each, in order."""
    unique: "OrderedDict[str, str]" = OrderedDict()
    for path in paths:
        unique.setdefault(lstrip_local(str(path)), str(path))
    return unique


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
        directory = os.path.dirname(self.manifest_path)
        try:
            handle, temporary = tempfile.mkstemp(dir=directory, prefix='.stimuli-', suffix='.part')
            try:
                with os.fdopen(handle, 'w', encoding='utf-8') as file:
                    json.dump(manifest, file)
                os.replace(temporary, self.manifest_path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:
            logger.warning(f"could not record the stimuli of the activation cache entry {self.path} ({error}); "
                           f"a later request under stimulus set {self.stimuli_identifier!r} cannot be checked "
                           f"against them")


def split_time_step(layer: str):
    """``'model.V4.output-t2'`` -> ``('model.V4.output', 2)``; plain names give ``(name, None)``."""
    match = _TIME_STEP.search(layer)
    return (layer[:match.start()], int(match.group(1))) if match else (layer, None)


def image_digest(image: np.ndarray) -> bytes:
    """A fingerprint of an image's content: noise belongs to the image, not to its batch position."""
    return hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16).digest()


def _release_free_memory() -> None:
    """Give memory freed by the process back to the system (glibc keeps freed blocks of up to 32 MB
    in its heaps, and batch buffers are that size); nothing where the C library has no malloc_trim."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            import ctypes.util
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class LeanExtractor(ActivationsExtractorHelper):
    """Brain-Score's extractor without batch padding, and with noise trials for stochastic models."""

    owner: 'VOneNetActivations'
    store_activations = True  # False: never write activations to Brain-Score's result cache
    _last = None  # fast scoring: (key, activations) of the last request, served again to the same request

    def _repeat_key(self, stimuli_paths, layers, require_variance):
        """Fast scoring only: what identifies a request whose images are all served from memory (their
        content fixed for the run), so the same request can be answered again without recomputing."""
        serves = getattr(self.preprocess, 'serves', None)
        if not getattr(self.owner, 'fast', False) or serves is None or not serves(stimuli_paths):
            return None
        return (self.identifier, tuple(map(str, stimuli_paths)), tuple(layers or ()), bool(require_variance),
                self._microsaccade_helper.number_of_trials)

    def __call__(self, stimuli, layers, stimuli_identifier=None, number_of_trials: int = 1,
                 require_variance: bool = False):
        if not require_variance:  # Brain-Score keeps the last call's trial count; a plain call has one
            self._microsaccade_helper.number_of_trials = 1
        handle = self.register_batch_activations_hook(self._image_major) \
            if require_variance and number_of_trials > 1 else None
        try:
            return super().__call__(stimuli, layers, stimuli_identifier=stimuli_identifier,
                                    number_of_trials=number_of_trials, require_variance=require_variance)
        finally:
            if handle is not None:
                handle.remove()

    def _image_major(self, batch_activations):
        """Reorder a batch's rows from trial-major (how Brain-Score computes them) to image-major (how
        it labels them: each path repeated once per trial), so every row carries its own image's label."""
        trials = self._microsaccade_helper.number_of_trials
        reordered = OrderedDict()
        for layer, values in batch_activations.items():
            images = values.shape[0] // trials
            reordered[layer] = values.reshape((trials, images) + values.shape[1:]).swapaxes(0, 1).reshape(values.shape)
        return reordered

    def from_paths(self, stimuli_paths, layers, stimuli_identifier=None, require_variance=None):
        if not self.store_activations:  # no stimuli identifier: Brain-Score neither stores nor filters
            stimuli_identifier = None
        if not stimuli_identifier:  # nothing is cached, so nothing can be stale
            key = self._repeat_key(stimuli_paths, layers, require_variance)
            if key is not None and self._last is not None and self._last[0] == key:
                return self._last[1].copy(deep=True)
            activations = super().from_paths(stimuli_paths, layers, stimuli_identifier=stimuli_identifier,
                                             require_variance=require_variance)
            self._last = None
            if key is not None and activations.nbytes <= REPEAT_LIMIT_BYTES:
                self._last = (key, activations.copy(deep=True))
            return activations
        stimuli = _unique_stimuli(stimuli_paths)
        entry = self.cache_entry(stimuli_identifier, require_variance)
        files = None
        if entry is not None and entry.exists():  # refuse before any work (or a merge into the entry)
            files = self._check_manifest(entry, stimuli)
        activations = super().from_paths(stimuli_paths, layers, stimuli_identifier=stimuli_identifier,
                                         require_variance=require_variance)
        cached = list(_unique_stimuli(activations['stimulus_path'].values))
        if cached != list(stimuli):  # an entry written before manifests, or by another version
            self._stale(entry, stimuli_identifier, self._path_difference(cached, list(stimuli)))
        if entry is not None and entry.exists() and files is not True:
            entry.write_manifest(stimuli, files or [_fingerprint(path) for path in stimuli.values()])
        return activations

    # --- stale-cache guard --------------------------------------------------------------------------
    def cache_entry(self, stimuli_identifier, require_variance=None) -> Optional[ActivationCacheEntry]:
        """The result_caching entry that ``from_paths`` reads and writes for this stimulus set, or None
        when nothing is cached. Built with result_caching's own key and path functions, from the
        arguments Brain-Score's ``from_paths`` passes to its cached ``_from_paths_stored``."""
        import result_caching
        try:
            wrapper = ActivationsExtractorHelper._from_paths_stored
            cells = dict(zip(wrapper.__code__.co_freevars, (cell.cell_contents for cell in wrapper.__closure__ or ())))
            storage, function = cells['self'], cells['function']
            model_key = getattr(brainscore_core, 'model_cache_identifier', lambda identifier: identifier)
            stimuli_key = getattr(brainscore_core, 'stimulus_set_cache_identifier', lambda identifier: identifier)
            model = model_key(self.identifier) if self.identifier else None
            stimuli = stimuli_key(stimuli_identifier) if stimuli_identifier else None
            if not (model and stimuli):
                return None
            call_args = storage.getcallargs(
                function, self, identifier=model, layers=None, stimuli_identifier=stimuli,
                resolution=getattr(self, '_resolution', None) or brainscore_core.NO_RESOLUTION,
                stimuli_paths=None, require_variance=require_variance)
            key = storage.get_function_identifier(function, call_args)
            if not result_caching.is_enabled(key):
                return None
            s3 = getattr(result_caching, 's3_enabled', lambda: False)()
            return ActivationCacheEntry(key, None if s3 else storage.storage_path(key), stimuli_identifier)
        except Exception as error:  # noqa: BLE001 - another result_caching: keep the check on the result
            logger.debug(f"activation cache entry not located ({type(error).__name__}: {error})")
            return None

    def _check_manifest(self, entry: ActivationCacheEntry, stimuli: "OrderedDict[str, str]"):
        """Raise StaleActivationsError if the entry was computed on other paths or other file contents.

        Returns True when the manifest stands as it is, the refreshed file records when only
        modification times changed, and None when there is no manifest to check against."""
        manifest = entry.read_manifest()
        if manifest is None:
            return None
        if manifest['paths'] != list(stimuli):
            self._stale(entry, entry.stimuli_identifier, self._path_difference(manifest['paths'], list(stimuli)))
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
            self._stale(entry, entry.stimuli_identifier,
                        f"{len(changed)} of its {len(stimuli)} image files changed since their activations were "
                        f"cached ({_examples(changed)})")
        return files if refreshed else True

    @staticmethod
    def _path_difference(cached: list, requested: list) -> str:
        in_cache, in_request = set(cached), set(requested)
        missing = [path for path in requested if path not in in_cache]
        others = [path for path in cached if path not in in_request]
        if not missing and not others:
            return f"the cache holds the same {len(cached)} images in another order"
        return (f"{len(missing)} of its {len(requested)} images are not in the cache"
                + (f" ({_examples(missing)})" if missing else '')
                + f", which holds {len(cached)} images" + (f", {len(others)} of them others ({_examples(others)})"
                                                            if others else ''))

    def _stale(self, entry: Optional[ActivationCacheEntry], stimuli_identifier, reason: str):
        where = entry.how_to_clear() if entry is not None else (
            f"delete the files named '*identifier={self.identifier},stimuli_identifier={stimuli_identifier},*' "
            f"under {os.path.expanduser(os.getenv('RESULTCACHING_HOME', '~/.result_caching'))}")
        raise StaleActivationsError(
            f"cached activations of model {self.identifier!r} for stimulus set {stimuli_identifier!r} were "
            f"computed on other stimuli: {reason}. Brain-Score's activation cache is keyed by the stimulus "
            f"set's identifier, not by its images, so give this stimulus set a new identifier (e.g. "
            f"stimulus_set.identifier = '{stimuli_identifier}-v2'), or delete the cached activations to "
            f"recompute them: {where}")

    def _pad(self, batch_images, batch_size):
        return batch_images, 0

    def _get_activations_batched(self, paths, layers, batch_size: int, require_variance: bool):
        """Brain-Score's loop; in fast scoring, without copying each batch twice (its arrays are
        written straight into the preallocated layer arrays, and batch buffers are reused)."""
        if not getattr(self.owner, 'fast', False) or require_variance:
            return super()._get_activations_batched(paths, layers, batch_size=batch_size,
                                                    require_variance=require_variance)
        shifts = self._microsaccade_helper.number_of_trials
        total = len(paths) * shifts
        collected = None
        for start in tqdm(range(0, len(paths), batch_size), unit_scale=batch_size, desc='activations'):
            inputs = paths[start:start + batch_size]
            per_shift = OrderedDict()
            # buffers may be reused when each batch's arrays are copied out before the next is computed
            reuse = shifts == 1 and not self._batch_activations_hooks
            for shift in range(shifts):
                activations = self._fast_batch_activations(inputs, layers, reuse)
                for layer, values in activations.items():
                    per_shift.setdefault(layer, []).append(values)
            batch = OrderedDict((layer, values[0] if len(values) == 1 else np.concatenate(values))
                                for layer, values in per_shift.items())
            for hook in self._batch_activations_hooks.copy().values():
                batch = hook(batch)
            if collected is None:
                collected = OrderedDict((layer, np.empty((total,) + values.shape[1:], dtype=values.dtype))
                                        for layer, values in batch.items())
            begin = start * shifts
            for layer, values in batch.items():
                collected[layer][begin:begin + len(values)] = values
        self.owner._buffers.clear()
        _release_free_memory()  # the batches' freed buffers, before Brain-Score's analysis allocates its own
        return collected

    def _package_layer(self, layer_activations: np.ndarray, layer: str, stimuli_paths, require_variance: bool = False):
        """Brain-Score's layer assembly (same values and coordinates), built without per-neuroid
        Python objects: the neuroid MultiIndex is assembled from its codes directly."""
        runs_per_image = self._microsaccade_helper.number_of_trials if require_variance else 1
        if layer_activations.shape[0] != len(stimuli_paths) * runs_per_image:
            raise ValueError(f"{layer}: {layer_activations.shape[0]} activation rows for "
                             f"{len(stimuli_paths)} stimuli x {runs_per_image} runs")
        stimuli_paths = np.repeat(stimuli_paths, runs_per_image)
        activations = layer_activations.reshape(layer_activations.shape[0], -1)
        n = activations.shape[1]
        axes = layer_activations.shape[1:]
        # (name, level, codes): constant levels have one value, unique ones one per neuroid
        levels = [('neuroid_num', np.arange(n), np.arange(n)),
                  ('model', np.array([self.identifier], dtype=object), np.zeros(n, dtype=np.int8)),
                  ('layer', np.array([layer], dtype=object), np.zeros(n, dtype=np.int8))]
        names = _FLATTENED_COORDS.get(len(axes))
        if names is not None:
            grid = np.indices(axes).reshape(len(axes), n)
            for i, name in enumerate(names):
                if i < len(axes):
                    levels.append((name, np.arange(axes[i]), grid[i]))
                else:  # a fully connected layer has no x or y: NaN, as in Brain-Score
                    levels.append((name, np.array([], dtype=float), np.full(n, -1, dtype=np.int8)))
        prefix = f"{self.identifier}.{layer}."
        ids = np.empty(n, dtype=object)
        ids[:] = [prefix + str(number) for number in range(n)]
        levels.append(('neuroid_id', ids, np.arange(n)))
        index = pd.MultiIndex(levels=[level for _, level, _ in levels], codes=[codes for _, _, codes in levels],
                              names=[name for name, _, _ in levels], verify_integrity=False)
        presentation = {'stimulus_path': ('presentation', stimuli_paths),
                        **self._microsaccade_helper.build_microsaccade_coords(stimuli_paths)}
        array = xr.DataArray(activations, coords={'neuroid': index, **presentation}, dims=['presentation', 'neuroid'])
        return NeuroidAssembly(array)

    def _get_batch_activations(self, inputs, layer_names, batch_size: int, require_variance: bool = False,
                               trial_number: int = 1):
        if not require_variance and getattr(self.owner, 'fast', False):
            return self._fast_batch_activations(inputs, layer_names, reuse=False)
        if not (require_variance and self.owner.stochastic):
            return super()._get_batch_activations(inputs, layer_names, batch_size, require_variance, trial_number)
        # The VOneBlock's own noise supplies the trial-to-trial variance: the image stays put.
        helper = self._microsaccade_helper
        for path in inputs:
            helper.microsaccades['pixels'][path] = [(0., 0.)] * helper.number_of_trials
            helper.microsaccades['degrees'][path] = [(0., 0.)] * helper.number_of_trials
        with self.owner.single_trial(trial_number):
            return self.get_activations(self.preprocess(inputs), layer_names)

    def _fast_batch_activations(self, inputs, layer_names, reuse: bool):
        """Brain-Score's ``_get_batch_activations`` without variance, less a copy of the batch: the
        preprocessed images go to the model as they are, with the digests an in-memory preprocessing
        already holds, and each image's (absent) microsaccade is recorded as Brain-Score records it."""
        images = self.preprocess(inputs)
        helper = self._microsaccade_helper
        for path in inputs:  # what MicrosaccadeHelper.translate_images records when no variance is asked for
            helper.microsaccades['pixels'][path] = [(0., 0.)]
            helper.microsaccades['degrees'][path] = [(0., 0.)]
        known = getattr(self.preprocess, 'digests', None)
        activations = self.get_activations(images, layer_names, digests=known(inputs) if known else None,
                                           reuse_buffers=reuse)
        assert isinstance(activations, OrderedDict)
        return activations


class VOneNetActivations(PytorchWrapper):
    """A ``PytorchWrapper`` over a VOneNet (see the module docstring for what it does differently)."""

    def __init__(self, model: nn.Module, identifier: str, preprocessing, batch_size: int = 16,
                 noise_seed: int = 0, device: Optional[str] = None):
        self._noise_seed = noise_seed
        self._trials = 1
        self._trial_number: Optional[int] = None
        self.v1_window: Optional[Tuple[int, int, int, int]] = None
        self.fast = False  # see fast_scoring()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._workers = 1
        self._buffers: Dict[tuple, np.ndarray] = {}
        self._fused_checked: Dict[tuple, bool] = {}
        super().__init__(model=model, preprocessing=preprocessing, identifier=identifier, batch_size=batch_size)
        if device is not None:
            self._device = torch.device(device)
            self._model.to(self._device)
        self._base_identifier = identifier
        self._stages = self._stage_order(model)
        self._module_names = {id(module): name for name, module in model.named_modules()}

    # --- construction -------------------------------------------------------------------------
    def _build_extractor(self, identifier, preprocessing, get_activations, *args, **kwargs):
        extractor = LeanExtractor(identifier=identifier, get_activations=get_activations,
                                  preprocessing=preprocessing, *args, **kwargs)
        extractor.owner = self
        return extractor

    @staticmethod
    def _stage_order(model: nn.Module) -> List[str]:
        """Top-level stages in execution order: the VOneNet's children, the back-end's expanded."""
        stages = []
        for name, child in model.named_children():
            if name == 'model':
                stages += [f'model.{sub}' for sub, _ in child.named_children()] or ['model']
            else:
                stages.append(name)
        return stages

    @property
    def settings_identifier(self) -> str:
        """The identifier with every setting that changes activations (without the trial count)."""
        return self._base_identifier

    @property
    def stochastic(self) -> bool:
        block = getattr(self._model, 'vone_block', None)
        return block is not None and block.noise_mode is not None

    def set_v1_window(self, window: Optional[Tuple[int, int, int, int]]) -> None:
        """Record V1 only at output rows ``r0:r1`` and columns ``c0:c1`` (computing only those).

        The VOneBlock then runs on the input crop those units see, with no padding, so the values
        equal the full map's at those positions; the cache identifier records the window. Noise
        for the window is drawn at the window's size (same distribution, other draws).
        """
        if window is not None:
            block = self._model.vone_block
            side = block.output_shape()[1]
            r0, r1, c0, c1 = window
            half, stride = block.config.ksize // 2, block.stride
            if not (0 <= r0 < r1 <= side and 0 <= c0 < c1 <= side) or \
                    min(r0, c0) * stride - half < 0 or (max(r1, c1) - 1) * stride + half >= block.input_size:
                raise ValueError(f"V1 window {window} must lie inside the {side} x {side} output map, away "
                                 f"from the border by the filter half-width ({half} px)")
        self.v1_window = tuple(window) if window is not None else None
        suffix = '' if window is None else ',v1_window=' + ':'.join(map(str, window))
        self._base_identifier = self._base_identifier.split(',v1_window=')[0] + suffix
        self.identifier = self._base_identifier

    # --- trials ---------------------------------------------------------------------------------
    @contextmanager
    def trials(self, number_of_trials: int, require_variance: bool = False):
        """Average ``number_of_trials`` noise draws per image (or, with ``require_variance``, let
        Brain-Score ask for each draw); the cache identifier records which."""
        if number_of_trials < 1:
            raise ValueError(f"number_of_trials must be >= 1, got {number_of_trials}")
        previous = self._trials
        self._trials = number_of_trials if self.stochastic and not require_variance else 1
        suffix = (f',trial_draws={number_of_trials}' if require_variance else
                  f',trials={number_of_trials}' if self.stochastic else '')
        self.identifier = self._base_identifier + suffix
        try:
            yield self
        finally:
            self._trials = previous
            self.identifier = self._base_identifier

    @contextmanager
    def single_trial(self, trial_number: int):
        self._trial_number = trial_number
        try:
            yield
        finally:
            self._trial_number = None

    @contextmanager
    def fast_scoring(self, workers: Optional[int] = None):
        """Within: the same activations, computed with less work (what the V1 property benchmarks use).

        - The VOneBlock's linear part is computed once for all inputs of one uniform value (the
          receptive-field set's images are mostly uniform grey inside the V1 window; the 'grouped'
          Gabor stage gives an image the same output whatever else is in its batch).
        - The noise of each trial costs one pass: the trial-independent part of the neuronal noise
          (gain, offset, the square root of the rate) is computed once per image, and each image's
          draws are made and averaged in cache, with the very operations, in the same order and
          precision, of ``noise_f``.
        - The work is spread over ``workers`` threads (default: torch's thread count) by images, each
          running single-threaded torch operations: no OpenMP barriers, which lose most of their
          speed when another process competes for the cores.
        - Digests an in-memory preprocessing already holds are not recomputed; batch buffers are
          reused and batches are not copied twice; a request repeated with the same images (all
          served from memory) is answered from the last result.
        Outside it, everything runs as before (the reference the equivalence tests compare with).
        """
        previous = self.fast
        workers = max(1, int(workers if workers is not None else torch.get_num_threads()))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='vone-noise') if workers > 1 else None
        self.fast, self._pool, self._workers = True, pool, workers
        try:
            yield self
        finally:
            self.fast, self._pool, self._workers = previous, None, 1
            self._buffers = {}
            self._extractor._last = None
            if pool is not None:
                pool.shutdown(wait=True)

    # --- forward --------------------------------------------------------------------------------
    def get_activations(self, images, layer_names, digests=None, reuse_buffers: bool = False):
        """Activations of ``layer_names`` for a batch of preprocessed images. ``digests``: the images'
        ``image_digest`` values when already known (otherwise computed here). ``reuse_buffers``
        (fast scoring): the arrays returned may be overwritten by the next call."""
        if self.fast and isinstance(images, np.ndarray):
            batch = torch.from_numpy(images)
        else:
            batch = torch.from_numpy(np.stack(images)) if not isinstance(images, torch.Tensor) else images
        batch = batch.to(self._device, dtype=next(self._model.parameters()).dtype)
        self._model.eval()
        trials = [self._trial_number] if self._trial_number is not None else range(self._trials)
        block = getattr(self._model, 'vone_block', None)
        if not self.stochastic:
            digests = None
        elif digests is None:
            digests = [image_digest(np.asarray(image)) for image in images]
        elif len(digests) != len(batch):
            raise ValueError(f"{len(digests)} image digests for a batch of {len(batch)} images")
        if block is not None and set(layer_names) <= V1_LAYERS:
            if self.fast:
                return self._v1_activations_fast(digests, batch, layer_names, list(trials), reuse_buffers)
            return self._v1_activations(digests, batch, layer_names, trials)
        if self.v1_window is not None:
            raise ValueError(f"a V1 window is set, so only {sorted(V1_LAYERS)} can be recorded, not {layer_names}")
        totals: Dict[str, np.ndarray] = OrderedDict()
        for trial in trials:
            if self.stochastic:
                block.fixed_noise = self._trial_noise(digests, trial, block.output_shape(batch.shape[-1]))
            try:
                outputs = self._forward_recording(batch, layer_names)
            finally:
                if block is not None:
                    block.fixed_noise = None
            for name, value in outputs.items():
                if name in totals:
                    totals[name] += value
                else:  # own the buffer only when later trials will be added into it
                    totals[name] = value.copy() if len(trials) > 1 else value
        if len(trials) > 1:
            for name in totals:
                totals[name] /= len(trials)
        return totals

    def _v1_input(self, block, batch: torch.Tensor):
        """(input, padding) for the VOneBlock's Gabor stage: the whole batch with the block's padding, or,
        with a V1 window, the crop its units see (output (i, j) reads rows stride * i -+ half) unpadded."""
        if self.v1_window is None:
            return batch, None
        r0, r1, c0, c1 = self.v1_window
        half, stride = block.config.ksize // 2, block.stride
        return batch[:, :, r0 * stride - half:(r1 - 1) * stride + half + 1,
                     c0 * stride - half:(c1 - 1) * stride + half + 1], 0

    def _v1_activations(self, digests, batch, layer_names, trials) -> Dict[str, np.ndarray]:
        """The VOneBlock alone: its linear part once per batch, then only the noise per trial."""
        block = self._model.vone_block
        with torch.no_grad():
            crop, padding = self._v1_input(block, batch)
            gabors = block.gabors_f(crop, padding)
            if not self.stochastic:
                mean = block.output(block.noise_f(gabors))
            else:
                mean = None
                for trial in trials:
                    block.fixed_noise = self._trial_noise(digests, trial, tuple(gabors.shape[1:]))
                    try:
                        response = block.output(block.noise_f(gabors))  # noise_f never writes into gabors
                    finally:
                        block.fixed_noise = None
                    mean = response if mean is None else mean.add_(response)
                if len(trials) > 1:
                    mean /= len(trials)
        values = mean.cpu().numpy()
        return OrderedDict((name, values) for name in layer_names)

    def _v1_activations_fast(self, digests, batch, layer_names, trials, reuse_buffers) -> Dict[str, np.ndarray]:
        """``_v1_activations`` with less work (see ``fast_scoring``): the same values, bit for bit."""
        block = self._model.vone_block
        fused = self.stochastic and block.noise_mode == 'neuronal' and type(block.output) is nn.Identity and \
            isinstance(block.noise, nn.ReLU) and batch.device.type == 'cpu' and batch.dtype == torch.float32 and \
            self._fused_noise_matches(block)
        if self.stochastic and not fused:
            return self._v1_activations(digests, batch, layer_names, trials)
        crop, padding = self._v1_input(block, batch)
        threads = torch.get_num_threads()
        if self._pool is not None:  # parallel over images in our threads, each torch op single-threaded
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                distinct, where = self._distinct_inputs(block, crop, padding)
                gabors = self._gabors(block, crop if distinct is None else crop[distinct], padding)
                if not self.stochastic:
                    if distinct is not None:
                        gabors = gabors.index_select(0, torch.as_tensor(where))
                    values = block.output(block.noise_f(gabors)).cpu().numpy()
                else:
                    values = self._neuronal_trials(block, gabors.numpy(), where, digests, trials, reuse_buffers)
        finally:
            if self._pool is not None:
                torch.set_num_threads(threads)
        return OrderedDict((name, values) for name in layer_names)

    @staticmethod
    def _distinct_inputs(block, crop: torch.Tensor, padding):
        """(rows of ``crop`` to compute, the computed row each row takes) when inputs that are one
        uniform value (most receptive-field stimuli inside the V1 window) can share one computation;
        (None, identity) otherwise. Only for the 'grouped' method, whose output for an image does not
        depend on the rest of its batch, and float32 inputs (compared bit for bit)."""
        everything = list(range(len(crop)))
        if len(crop) < 2 or crop.dtype != torch.float32 or block.method_for(crop, padding) != 'grouped':
            return None, everything
        bits = crop.reshape(len(crop), -1).contiguous().view(torch.int32)  # uniform: one bit pattern throughout
        low, high = bits.amin(dim=1).tolist(), bits.amax(dim=1).tolist()
        distinct, where, first_of = [], [], {}
        for index, (lo, hi) in enumerate(zip(low, high)):
            if lo == hi and lo in first_of:
                where.append(first_of[lo])
                continue
            if lo == hi:
                first_of[lo] = len(distinct)
            where.append(len(distinct))
            distinct.append(index)
        return (None, everything) if len(distinct) == len(crop) else (distinct, where)

    def _gabors(self, block, crop: torch.Tensor, padding) -> torch.Tensor:
        """``block.gabors_f(crop, padding)``; with worker threads, in parts of the batch computed at
        once ('grouped' gives each image the output it has in any batch; other methods run whole)."""
        workers = self._workers if self._pool is not None else 1
        if workers < 2 or len(crop) < 2 * workers or block.method_for(crop, padding) != 'grouped':
            return block.gabors_f(crop, padding)

        def part(rows):
            with torch.no_grad():  # grad mode is per thread
                return block.gabors_f(crop[rows[0]:rows[-1] + 1], padding)
        parts = [rows for rows in np.array_split(np.arange(len(crop)), workers) if len(rows)]
        return torch.cat([future.result() for future in [self._pool.submit(part, rows) for rows in parts]])

    def _fused_noise_matches(self, block) -> bool:
        """Whether ``_neuronal_trials`` gives ``noise_f``'s bits on this machine, checked once per
        noise setting on random responses of both signs (and on sizes with and without a vector tail)
        before it is used; where it does not, the trials run as in ``_v1_activations``."""
        key = (block.noise_scale, block.noise_level)
        if key not in self._fused_checked:
            generator = torch.Generator().manual_seed(0)
            matches = True
            with torch.no_grad():
                for shape in ((3, 32, 12, 12), (2, 7, 5, 3)):
                    gabors = torch.randn(shape, generator=generator) * 3
                    digests = [bytes([index]) * 16 for index in range(shape[0])]
                    reference = None
                    for trial in range(3):  # what _v1_activations does after the Gabor stage
                        block.fixed_noise = self._trial_noise(digests, trial, tuple(shape[1:]))
                        try:
                            response = block.output(block.noise_f(gabors))
                        finally:
                            block.fixed_noise = None
                        reference = response if reference is None else reference.add_(response)
                    reference /= 3
                    fused = self._neuronal_trials(block, gabors.numpy(), list(range(shape[0])), digests,
                                                  [0, 1, 2], reuse_buffers=False)
                    matches = matches and fused.tobytes() == reference.numpy().tobytes()
            if not matches:
                logger.warning("the fused noise trials do not reproduce VOneBlock.noise_f bit for bit on this "
                               "machine; running them as noise_f does")
            self._fused_checked[key] = matches
        return self._fused_checked[key]

    def _buffer(self, name: str, shape: tuple, reuse: bool) -> np.ndarray:
        if not reuse:
            return np.empty(shape, dtype=np.float32)
        key = (name, shape)
        if key not in self._buffers:
            self._buffers[key] = np.empty(shape, dtype=np.float32)
        return self._buffers[key]

    def _neuronal_trials(self, block, gabors: np.ndarray, where, digests, trials, reuse_buffers) -> np.ndarray:
        """For each image (``gabors[where[i]]`` its linear responses), the mean over ``trials`` of
        ``block.output(block.noise_f(g))`` with the image's seeded draws, as ``_v1_activations``
        computes it, operation for operation, in float32 (numpy for the IEEE operations, whose results
        are torch's; torch for the square root, which on some CPUs is not correctly rounded):
        x = g * scale; x += level; x += noise * sqrt(relu(x) + eps); x -= level; x /= scale; relu;
        the trials summed in order, then divided by their number. The terms that do not depend on the
        trial are computed once per image, and each image is done in cache, in ``workers`` threads."""
        shape = tuple(gabors.shape[1:])
        mean = self._buffer('mean', (len(where),) + shape, reuse_buffers)
        scale, level = np.float32(block.noise_scale), np.float32(block.noise_level)
        eps, zero, count = np.float32(NEURONAL_NOISE_EPS), np.float32(0), np.float32(len(trials))

        def work(indices):
            noise, root_ = torch.empty(shape), torch.empty(shape)
            drawn, root = noise.numpy(), root_.numpy()
            base, response = (np.empty(shape, dtype=np.float32) for _ in range(2))
            for index in indices:
                np.multiply(gabors[where[index]], scale, out=base)   # x = x * noise_scale
                np.add(base, level, out=base)                        # x += noise_level
                np.maximum(base, zero, out=root)                     # sqrt(relu(x) + eps)
                np.add(root, eps, out=root)
                torch.sqrt(root_, out=root_)  # torch's: its float32 sqrt is not numpy's, correctly rounded one
                total = mean[index]
                for position, trial in enumerate(trials):
                    generator = torch.Generator().manual_seed(image_noise_seed(self._noise_seed, trial, digests[index]))
                    torch.randn(shape, generator=generator, out=noise)
                    np.multiply(drawn, root, out=response)           # x += noise * sqrt(...)
                    np.add(base, response, out=response)
                    np.subtract(response, level, out=response)       # x -= noise_level
                    np.divide(response, scale, out=response)         # x /= noise_scale
                    np.maximum(response, zero, out=response)         # relu
                    if position == 0:
                        total[...] = response
                    else:
                        np.add(total, response, out=total)
                if len(trials) > 1:
                    np.divide(total, count, out=total)

        images = np.arange(len(where))
        if self._pool is None or len(images) < 2:
            work(images)
        else:
            chunks = [chunk for chunk in np.array_split(images, self._workers) if len(chunk)]
            for future in [self._pool.submit(work, chunk) for chunk in chunks]:
                future.result()
        return mean

    def _trial_noise(self, digests, trial: int, shape: tuple) -> torch.Tensor:
        """Standard-normal noise of ``shape`` for each image, from its own seeded generator."""
        noise = torch.empty((len(digests),) + tuple(shape))
        for index, digest in enumerate(digests):
            generator = torch.Generator().manual_seed(image_noise_seed(self._noise_seed, trial, digest))
            torch.randn(tuple(shape), generator=generator, out=noise[index])
        return noise.to(self._device)

    def _forward_recording(self, batch: torch.Tensor, layer_names) -> Dict[str, np.ndarray]:
        """One forward pass that records the requested layers and stops once it has them all."""
        recorded: Dict[str, List[torch.Tensor]] = {}
        requests = [(name,) + split_time_step(name) for name in layer_names]
        modules = {base: self.get_layer(base) for _, base, _ in requests}
        stop_stage = self._last_stage(modules.values())
        hooks = []

        def record(base):
            def hook(_module, _inputs, output):
                recorded.setdefault(base, []).append(output.detach())
            return hook

        for base, module in modules.items():
            hooks.append(module.register_forward_hook(record(base)))
        if stop_stage is not None:
            def stop(_module, _inputs, _output):
                raise _StopForward
            hooks.append(self.get_layer(stop_stage).register_forward_hook(stop))
        try:
            with torch.no_grad():
                self._model(batch)
        except _StopForward:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        results = OrderedDict()
        for name, base, step in requests:
            calls = recorded.get(base)
            if not calls or (step is not None and step >= len(calls)):
                raise ValueError(f"layer {name!r} was not computed: {base} ran {len(calls or [])} time(s) "
                                 f"in the forward pass")
            tensor = calls[step if step is not None else -1]
            results[name] = tensor.cpu().numpy()
        return results

    def _last_stage(self, modules) -> Optional[str]:
        """The stage after which the forward pass can stop, or None if it must run to the end."""
        positions = []
        for module in modules:
            name = self._module_names.get(id(module), '')
            stage = next((s for s in self._stages if name == s or name.startswith(s + '.')), None)
            if stage is None:
                return None
            positions.append(self._stages.index(stage))
        last = max(positions)
        return None if last == len(self._stages) - 1 else self._stages[last]
