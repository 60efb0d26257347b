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
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

from brainscore_vision.model_helpers.activations import core as brainscore_core
from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper, lstrip_local
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper

from .errors import StimulusError

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


def image_noise_seed(base_seed: int, trial: int, digest: bytes) -> int:
    """A 63-bit seed from the noise seed, the trial and the image's fingerprint."""
    key = hashlib.blake2b(digest, digest_size=8, key=f'{base_seed}:{trial}'.encode()).digest()
    return int.from_bytes(key, 'little') >> 1


class LeanExtractor(ActivationsExtractorHelper):
    """Brain-Score's extractor without batch padding, and with noise trials for stochastic models."""

    owner: 'VOneNetActivations'
    store_activations = True  # False: never write activations to Brain-Score's result cache

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
            return super().from_paths(stimuli_paths, layers, stimuli_identifier=stimuli_identifier,
                                      require_variance=require_variance)
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
        if not (require_variance and self.owner.stochastic):
            return super()._get_batch_activations(inputs, layer_names, batch_size, require_variance, trial_number)
        # The VOneBlock's own noise supplies the trial-to-trial variance: the image stays put.
        helper = self._microsaccade_helper
        for path in inputs:
            helper.microsaccades['pixels'][path] = [(0., 0.)] * helper.number_of_trials
            helper.microsaccades['degrees'][path] = [(0., 0.)] * helper.number_of_trials
        with self.owner.single_trial(trial_number):
            return self.get_activations(self.preprocess(inputs), layer_names)


class VOneNetActivations(PytorchWrapper):
    """A ``PytorchWrapper`` over a VOneNet (see the module docstring for what it does differently)."""

    def __init__(self, model: nn.Module, identifier: str, preprocessing, batch_size: int = 16,
                 noise_seed: int = 0, device: Optional[str] = None):
        self._noise_seed = noise_seed
        self._trials = 1
        self._trial_number: Optional[int] = None
        self.v1_window: Optional[Tuple[int, int, int, int]] = None
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

    # --- forward --------------------------------------------------------------------------------
    def get_activations(self, images, layer_names):
        batch = torch.from_numpy(np.stack(images)) if not isinstance(images, torch.Tensor) else images
        batch = batch.to(self._device, dtype=next(self._model.parameters()).dtype)
        self._model.eval()
        trials = [self._trial_number] if self._trial_number is not None else range(self._trials)
        block = getattr(self._model, 'vone_block', None)
        digests = [image_digest(np.asarray(image)) for image in images] if self.stochastic else None
        if block is not None and set(layer_names) <= V1_LAYERS:
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

    def _v1_activations(self, digests, batch, layer_names, trials) -> Dict[str, np.ndarray]:
        """The VOneBlock alone: its linear part once per batch, then only the noise per trial."""
        block = self._model.vone_block
        with torch.no_grad():
            if self.v1_window is None:
                gabors = block.gabors_f(batch)
            else:
                r0, r1, c0, c1 = self.v1_window
                half, stride = block.config.ksize // 2, block.stride
                crop = batch[:, :, r0 * stride - half:(r1 - 1) * stride + half + 1,
                             c0 * stride - half:(c1 - 1) * stride + half + 1]
                gabors = block.gabors_f(crop, padding=0)
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
