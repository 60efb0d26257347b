"""Activation extraction for Brain-Score that does no needless work and treats noise as trials.

Part of the brain model (brain/): ``brain.model`` records every region through :class:`VOneNetActivations`.
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
- V1 can be recorded in a window of the VOneBlock's map only (``v1_window`` for the model's life,
  ``windowed(window)`` for a scope), computing only those units;
- cached activations are never served for other stimuli (``brain.activation_cache``).

What changes the activations beyond the network (the V1 window, the trials, whether they are stored)
is one immutable :class:`Recording`, replaced only inside the scopes ``windowed``, ``trials`` and
``unstored`` and restored when they end; the cache identifier is derived from it, so it always records
everything that changes the activations.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper

from ..seeding import image_noise_seed
from ..vone.block import NEURONAL_NOISE_EPS
from .activation_cache import check_manifest, fingerprint, locate_entry, path_difference, stale, unique_stimuli
from .brainscore_access import batch_hooks_of, extractor_of, microsaccades_of, network_of
from .v1_window import VOBLOCK_LAYERS, Window

logger = logging.getLogger(__name__)

# Brain-Score's coordinate names for the flattened axes of a layer's output, by output rank - 1.
_FLATTENED_COORDS = {1: ('channel', 'channel_x', 'channel_y'), 2: ('channel', 'embedding'),
                     3: ('channel', 'channel_x', 'channel_y'), 4: ('channel_temporal', 'channel_x', 'channel_y', 'channel')}

_TIME_STEP = re.compile(r'-t(\d+)$')
# fast scoring answers a repeated request from memory when its activations take at most this much
REPEAT_LIMIT_BYTES = 512 * 2 ** 20


class _StopForward(Exception):
    """Raised from a hook once every requested layer has been recorded."""


@dataclass(frozen=True)
class Recording:
    """What a recording computes beyond the network's settings, and whether it is kept.

    ``window``: V1 only at these VOneBlock output units; ``trials``: (number_of_trials, require_variance)
    as a Brain-Score call asks for them, None outside any call (one draw); both enter the cache identifier.
    ``store``: whether Brain-Score may write the activations to its result cache (it changes no value)."""

    window: Optional[Window] = None
    trials: Optional[Tuple[int, bool]] = None
    store: bool = True

    def averaged_draws(self, stochastic: bool) -> int:
        """Noise draws averaged per image (each of Brain-Score's trials is one draw with ``require_variance``)."""
        if self.trials is None or not stochastic or self.trials[1]:
            return 1
        return self.trials[0]

    def identifier(self, settings: str, stochastic: bool) -> str:
        """The cache identifier: the network's settings, the window, then the trials."""
        identifier = settings + window_suffix(self.window)
        if self.trials is None:
            return identifier
        number, require_variance = self.trials
        return identifier + (f',trial_draws={number}' if require_variance else
                             f',trials={number}' if stochastic else '')


def window_suffix(window: Optional[Window]) -> str:
    """What a V1 window adds to an identifier."""
    return '' if window is None else ',v1_window=' + ':'.join(map(str, window))


def split_time_step(layer: str):
    """``'model.V4.output-t2'`` -> ``('model.V4.output', 2)``; plain names give ``(name, None)``."""
    match = _TIME_STEP.search(layer)
    return (layer[:match.start()], int(match.group(1))) if match else (layer, None)


def image_digest(image: np.ndarray) -> bytes:
    """A fingerprint of an image's content: noise belongs to the image, not to its batch position."""
    return hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16).digest()


def release_free_memory() -> None:
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
    """Brain-Score's extractor without batch padding, and with noise trials for stochastic models.

    Its owner (the :class:`VOneNetActivations` that built it) decides what is computed; the extractor
    reads it through the owner's public members only."""

    owner: 'VOneNetActivations'
    _last = None  # fast scoring: (key, activations) of the last request, served again to the same request

    def forget_repeat(self) -> None:
        """Drop the last request's activations that fast scoring keeps to answer a repeat."""
        self._last = None

    def _repeat_key(self, stimuli_paths, layers, require_variance):
        """Fast scoring only: what identifies a request whose images are all served from memory (their
        content fixed for the run), so the same request can be answered again without recomputing."""
        serves = getattr(self.preprocess, 'serves', None)
        if not self.owner.fast or serves is None or not serves(stimuli_paths):
            return None
        return (self.identifier, tuple(map(str, stimuli_paths)), tuple(layers or ()), bool(require_variance),
                microsaccades_of(self).number_of_trials)

    def __call__(self, stimuli, layers, stimuli_identifier=None, number_of_trials: int = 1,
                 require_variance: bool = False):
        if not require_variance:  # Brain-Score keeps the last call's trial count; a plain call has one
            microsaccades_of(self).number_of_trials = 1
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
        trials = microsaccades_of(self).number_of_trials
        reordered = OrderedDict()
        for layer, values in batch_activations.items():
            images = values.shape[0] // trials
            reordered[layer] = values.reshape((trials, images) + values.shape[1:]).swapaxes(0, 1).reshape(values.shape)
        return reordered

    def from_paths(self, stimuli_paths, layers, stimuli_identifier=None, require_variance=None):
        if not self.owner.stores_activations:  # no stimuli identifier: Brain-Score neither stores nor filters
            stimuli_identifier = None
        if not stimuli_identifier:  # nothing is cached, so nothing can be stale
            return self._uncached(stimuli_paths, layers, require_variance)
        stimuli = unique_stimuli(stimuli_paths)
        entry = locate_entry(self, stimuli_identifier, require_variance)
        files = None
        if entry is not None and entry.exists():  # refuse before any work (or a merge into the entry)
            files = check_manifest(self.identifier, entry, stimuli)
        activations = super().from_paths(stimuli_paths, layers, stimuli_identifier=stimuli_identifier,
                                         require_variance=require_variance)
        cached = list(unique_stimuli(activations['stimulus_path'].values))
        if cached != list(stimuli):  # an entry written before manifests, or by another version
            stale(self.identifier, entry, stimuli_identifier, path_difference(cached, list(stimuli)))
        if entry is not None and entry.exists() and files is not True:
            entry.write_manifest(stimuli, files or [fingerprint(path) for path in stimuli.values()])
        return activations

    def _uncached(self, stimuli_paths, layers, require_variance):
        """``from_paths`` where nothing is cached; in fast scoring a repeated request is served again."""
        key = self._repeat_key(stimuli_paths, layers, require_variance)
        if key is not None and self._last is not None and self._last[0] == key:
            return self._last[1].copy(deep=True)
        activations = super().from_paths(stimuli_paths, layers, stimuli_identifier=None,
                                         require_variance=require_variance)
        self._last = None
        if key is not None and activations.nbytes <= REPEAT_LIMIT_BYTES:
            self._last = (key, activations.copy(deep=True))
        return activations

    def _pad(self, batch_images, batch_size):
        return batch_images, 0

    def _get_activations_batched(self, paths, layers, batch_size: int, require_variance: bool):
        """Brain-Score's loop; in fast scoring, without copying each batch twice (its arrays are
        written straight into the preallocated layer arrays, and batch buffers are reused)."""
        if not self.owner.fast or require_variance:
            return super()._get_activations_batched(paths, layers, batch_size=batch_size,
                                                    require_variance=require_variance)
        shifts = microsaccades_of(self).number_of_trials
        total = len(paths) * shifts
        collected = None
        for start in tqdm(range(0, len(paths), batch_size), unit_scale=batch_size, desc='activations'):
            inputs = paths[start:start + batch_size]
            per_shift = OrderedDict()
            # buffers may be reused when each batch's arrays are copied out before the next is computed
            reuse = shifts == 1 and not batch_hooks_of(self)
            for shift in range(shifts):
                activations = self._fast_batch_activations(inputs, layers, reuse)
                for layer, values in activations.items():
                    per_shift.setdefault(layer, []).append(values)
            batch = OrderedDict((layer, values[0] if len(values) == 1 else np.concatenate(values))
                                for layer, values in per_shift.items())
            for hook in batch_hooks_of(self).copy().values():
                batch = hook(batch)
            if collected is None:
                collected = OrderedDict((layer, np.empty((total,) + values.shape[1:], dtype=values.dtype))
                                        for layer, values in batch.items())
            begin = start * shifts
            for layer, values in batch.items():
                collected[layer][begin:begin + len(values)] = values
        self.owner.release_buffers()
        release_free_memory()  # the batches' freed buffers, before Brain-Score's analysis allocates its own
        return collected

    def _package_layer(self, layer_activations: np.ndarray, layer: str, stimuli_paths, require_variance: bool = False):
        """Brain-Score's layer assembly (same values and coordinates), built without per-neuroid
        Python objects: the neuroid MultiIndex is assembled from its codes directly."""
        helper = microsaccades_of(self)
        runs_per_image = helper.number_of_trials if require_variance else 1
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
                        **helper.build_microsaccade_coords(stimuli_paths)}
        array = xr.DataArray(activations, coords={'neuroid': index, **presentation}, dims=['presentation', 'neuroid'])
        return NeuroidAssembly(array)

    def _get_batch_activations(self, inputs, layer_names, batch_size: int, require_variance: bool = False,
                               trial_number: int = 1):
        if not require_variance and self.owner.fast:
            return self._fast_batch_activations(inputs, layer_names, reuse=False)
        if not (require_variance and self.owner.stochastic):
            return super()._get_batch_activations(inputs, layer_names, batch_size, require_variance, trial_number)
        # The VOneBlock's own noise supplies the trial-to-trial variance: the image stays put.
        helper = microsaccades_of(self)
        for path in inputs:
            helper.microsaccades['pixels'][path] = [(0., 0.)] * helper.number_of_trials
            helper.microsaccades['degrees'][path] = [(0., 0.)] * helper.number_of_trials
        return self.get_activations(self.preprocess(inputs), layer_names, trial=trial_number)

    def _fast_batch_activations(self, inputs, layer_names, reuse: bool):
        """Brain-Score's ``_get_batch_activations`` without variance, less a copy of the batch: the
        preprocessed images go to the model as they are, with the digests an in-memory preprocessing
        already holds, and each image's (absent) microsaccade is recorded as Brain-Score records it."""
        images = self.preprocess(inputs)
        helper = microsaccades_of(self)
        for path in inputs:  # what MicrosaccadeHelper.translate_images records when no variance is asked for
            helper.microsaccades['pixels'][path] = [(0., 0.)]
            helper.microsaccades['degrees'][path] = [(0., 0.)]
        known = getattr(self.preprocess, 'digests', None)
        activations = self.get_activations(images, layer_names, digests=known(inputs) if known else None,
                                           reuse_buffers=reuse)
        assert isinstance(activations, OrderedDict)
        return activations


class VOneNetActivations(PytorchWrapper):
    """A ``PytorchWrapper`` over a VOneNet (see the module docstring for what it does differently).

    ``v1_window`` = (r0, r1, c0, c1): V1 recorded only at those VOneBlock output units for the model's
    life (see :meth:`windowed`)."""

    def __init__(self, model: nn.Module, identifier: str, preprocessing, batch_size: int = 16,
                 noise_seed: int = 0, device: Optional[str] = None, v1_window: Optional[Window] = None):
        self._noise_seed = noise_seed
        self._settings = identifier
        self._recording = Recording()
        self.fast = False  # see fast_scoring()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._workers = 1
        self._buffers: Dict[tuple, np.ndarray] = {}
        self._fused_checked: Dict[tuple, bool] = {}
        super().__init__(model=model, preprocessing=preprocessing, identifier=identifier, batch_size=batch_size)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        model.to(self.device)
        self._stages = self._stage_order(model)
        self._module_names = {id(module): name for name, module in model.named_modules()}
        if v1_window is not None:
            self._recording = Recording(window=self._checked_window(v1_window))
            self.identifier = self._recording.identifier(self._settings, self.stochastic)

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

    # --- what others read ---------------------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        return network_of(self)

    @property
    def extractor(self) -> LeanExtractor:
        return extractor_of(self)

    @property
    def settings_identifier(self) -> str:
        """The identifier with every setting that changes activations (without the trial count)."""
        return self._settings + window_suffix(self._recording.window)

    @property
    def stochastic(self) -> bool:
        block = getattr(self.network, 'vone_block', None)
        return block is not None and block.noise_mode is not None

    @property
    def v1_window(self) -> Optional[Window]:
        """The V1 window in force: the model's own, or that of the :meth:`windowed` scope it is in."""
        return self._recording.window

    @property
    def stores_activations(self) -> bool:
        """Whether Brain-Score may write these activations to its result cache (False within :meth:`unstored`)."""
        return self._recording.store

    def release_buffers(self) -> None:
        """Give back the batch buffers fast scoring reuses (after a stimulus set is recorded)."""
        self._buffers.clear()

    # --- scopes: what a recording computes --------------------------------------------------------
    @contextmanager
    def _recording_as(self, **changes):
        """Within: the recording with ``changes`` (and the identifier that records them); then the previous."""
        previous = self._recording
        self._recording = replace(previous, **changes)
        self.identifier = self._recording.identifier(self._settings, self.stochastic)
        try:
            yield self
        finally:
            self._recording = previous
            self.identifier = previous.identifier(self._settings, self.stochastic)

    def _checked_window(self, window: Window) -> Window:
        block = self.network.vone_block
        side = block.output_shape()[1]
        r0, r1, c0, c1 = window
        half, stride = block.config.ksize // 2, block.stride
        if not (0 <= r0 < r1 <= side and 0 <= c0 < c1 <= side) or \
                min(r0, c0) * stride - half < 0 or (max(r1, c1) - 1) * stride + half >= block.config.image_size:
            raise ValueError(f"V1 window {window} must lie inside the {side} x {side} output map, away "
                             f"from the border by the filter half-width ({half} px)")
        return tuple(window)

    def windowed(self, window: Optional[Window]):
        """Within: V1 recorded only at output rows ``r0:r1`` and columns ``c0:c1`` (computing only those),
        or, with None, the whole map.

        The VOneBlock then runs on the input crop those units see, with no padding, so the values
        equal the full map's at those positions; the cache identifier records the window. Noise
        for the window is drawn at the window's size (same distribution, other draws).
        """
        return self._recording_as(window=None if window is None else self._checked_window(window))

    def trials(self, number_of_trials: int, require_variance: bool = False):
        """Within: ``number_of_trials`` noise draws averaged per image (or, with ``require_variance``,
        one draw per trial Brain-Score asks for); the cache identifier records which."""
        if number_of_trials < 1:
            raise ValueError(f"number_of_trials must be >= 1, got {number_of_trials}")
        return self._recording_as(trials=(number_of_trials, bool(require_variance)))

    def unstored(self):
        """Within: activations are never written to Brain-Score's result cache (a run that records each
        stimulus set once, and caches its results, would only spend time and disk on them)."""
        return self._recording_as(store=False)

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
            self.extractor.forget_repeat()
            if pool is not None:
                pool.shutdown(wait=True)

    # --- forward --------------------------------------------------------------------------------
    def get_activations(self, images, layer_names, digests=None, reuse_buffers: bool = False,
                        trial: Optional[int] = None):
        """Activations of ``layer_names`` for a batch of preprocessed images. ``digests``: the images'
        ``image_digest`` values when already known (otherwise computed here). ``reuse_buffers``
        (fast scoring): the arrays returned may be overwritten by the next call. ``trial``: that one
        noise draw (one of Brain-Score's trials), instead of the recording's average."""
        if self.fast and isinstance(images, np.ndarray):
            batch = torch.from_numpy(images)
        else:
            batch = torch.from_numpy(np.stack(images)) if not isinstance(images, torch.Tensor) else images
        network = self.network
        batch = batch.to(self.device, dtype=next(network.parameters()).dtype)
        network.eval()
        trials = [trial] if trial is not None else range(self._recording.averaged_draws(self.stochastic))
        block = getattr(network, 'vone_block', None)
        if not self.stochastic:
            digests = None
        elif digests is None:
            digests = [image_digest(np.asarray(image)) for image in images]
        elif len(digests) != len(batch):
            raise ValueError(f"{len(digests)} image digests for a batch of {len(batch)} images")
        if block is not None and set(layer_names) <= set(VOBLOCK_LAYERS):
            if self.fast:
                return self._v1_activations_fast(digests, batch, layer_names, list(trials), reuse_buffers)
            return self._v1_activations(digests, batch, layer_names, trials)
        if self.v1_window is not None:
            raise ValueError(f"a V1 window is set, so only {sorted(VOBLOCK_LAYERS)} can be recorded, not {layer_names}")
        return self._network_activations(block, digests, batch, layer_names, trials)

    def _network_activations(self, block, digests, batch, layer_names, trials) -> Dict[str, np.ndarray]:
        """Any layers: one forward pass per noise draw, the draws averaged."""
        totals: Dict[str, np.ndarray] = OrderedDict()
        for trial in trials:
            if self.stochastic:
                with block.noise_source.frozen(self._trial_noise(digests, trial, block.output_shape(batch.shape[-1]))):
                    outputs = self._forward_recording(batch, layer_names)
            else:
                outputs = self._forward_recording(batch, layer_names)
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
        block = self.network.vone_block
        with torch.no_grad():
            crop, padding = self._v1_input(block, batch)
            gabors = block.gabors_f(crop, padding)
            if not self.stochastic:
                mean = block.output(block.noise_f(gabors))
            else:
                mean = None
                for trial in trials:
                    with block.noise_source.frozen(self._trial_noise(digests, trial, tuple(gabors.shape[1:]))):
                        response = block.output(block.noise_f(gabors))  # noise_f never writes into gabors
                    mean = response if mean is None else mean.add_(response)
                if len(trials) > 1:
                    mean /= len(trials)
        values = mean.cpu().numpy()
        return OrderedDict((name, values) for name in layer_names)

    def _v1_activations_fast(self, digests, batch, layer_names, trials, reuse_buffers) -> Dict[str, np.ndarray]:
        """``_v1_activations`` with less work (see ``fast_scoring``): the same values, bit for bit."""
        block = self.network.vone_block
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
        key = (block.config.noise_scale, block.config.noise_level)
        if key not in self._fused_checked:
            generator = torch.Generator().manual_seed(0)
            matches = True
            with torch.no_grad():
                for shape in ((3, 32, 12, 12), (2, 7, 5, 3)):
                    gabors = torch.randn(shape, generator=generator) * 3
                    digests = [bytes([index]) * 16 for index in range(shape[0])]
                    reference = None
                    for trial in range(3):  # what _v1_activations does after the Gabor stage
                        with block.noise_source.frozen(self._trial_noise(digests, trial, tuple(shape[1:]))):
                            response = block.output(block.noise_f(gabors))
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
        scale, level = np.float32(block.config.noise_scale), np.float32(block.config.noise_level)
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
        return noise.to(self.device)

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
                self.network(batch)
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
