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
  with ``require_variance`` each of Brain-Score's trials is one draw (instead of a microsaccade).
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper

logger = logging.getLogger(__name__)

# Brain-Score's coordinate names for the flattened axes of a layer's output, by output rank - 1.
_FLATTENED_COORDS = {1: ('channel', 'channel_x', 'channel_y'), 2: ('channel', 'embedding'),
                     3: ('channel', 'channel_x', 'channel_y'), 4: ('channel_temporal', 'channel_x', 'channel_y', 'channel')}

_TIME_STEP = re.compile(r'-t(\d+)$')
V1_LAYERS = {'vone_block', 'vone_block.output'}


class _StopForward(Exception):
    """Raised from a hook once every requested layer has been recorded."""


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
        return super().from_paths(stimuli_paths, layers, stimuli_identifier=stimuli_identifier,
                                  require_variance=require_variance)

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
