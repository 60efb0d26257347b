"""Activation extraction for Brain-Score that does no needless work and treats noise as trials.

Differences from Brain-Score's stock ``PytorchWrapper`` (same assemblies, same coordinates):
- batches are not padded to ``batch_size`` (3 images cost 3 forward passes, not 64);
- the forward pass stops after the last stage that holds a requested layer;
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
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper

logger = logging.getLogger(__name__)

_TIME_STEP = re.compile(r'-t(\d+)$')


class _StopForward(Exception):
    """Raised from a hook once every requested layer has been recorded."""


def split_time_step(layer: str):
    """``'model.V4.output-t2'`` -> ``('model.V4.output', 2)``; plain names give ``(name, None)``."""
    match = _TIME_STEP.search(layer)
    return (layer[:match.start()], int(match.group(1))) if match else (layer, None)


def image_noise_seed(base_seed: int, trial: int, image: np.ndarray) -> int:
    """A 63-bit seed from the noise seed, the trial and the image's bytes."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=8,
                             key=f'{base_seed}:{trial}'.encode()).digest()
    return int.from_bytes(digest, 'little') >> 1


class LeanExtractor(ActivationsExtractorHelper):
    """Brain-Score's extractor without batch padding, and with noise trials for stochastic models."""

    owner: 'VOneNetActivations'

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

    def _pad(self, batch_images, batch_size):
        return batch_images, 0

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
    def stochastic(self) -> bool:
        block = getattr(self._model, 'vone_block', None)
        return block is not None and block.noise_mode is not None

    # --- trials ---------------------------------------------------------------------------------
    @contextmanager
    def trials(self, number_of_trials: int):
        """Average ``number_of_trials`` noise draws per image; the cache identifier records how many."""
        if number_of_trials < 1:
            raise ValueError(f"number_of_trials must be >= 1, got {number_of_trials}")
        previous = self._trials
        self._trials = number_of_trials if self.stochastic else 1
        self.identifier = self._base_identifier + (f',trials={self._trials}' if self.stochastic else '')
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
        totals: Dict[str, np.ndarray] = OrderedDict()
        for trial in trials:
            if self.stochastic:
                block.fixed_noise = self._trial_noise(images, trial)
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

    def _trial_noise(self, images, trial: int) -> torch.Tensor:
        """Standard-normal noise for each image, drawn from its own seeded generator."""
        shape = self._model.vone_block.output_shape(images[0].shape[-1])
        noise = torch.empty((len(images),) + shape)
        for index, image in enumerate(images):
            generator = torch.Generator().manual_seed(image_noise_seed(self._noise_seed, trial, np.asarray(image)))
            torch.randn(shape, generator=generator, out=noise[index])
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
