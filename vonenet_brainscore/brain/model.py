"""VOneNets as Brain-Score ``BrainModel``s, following the commitments in ``commitments/``.

``brain_model('vonenet_resnet50')`` loads the published weights, or fails with an error that says
how to provide them: a registered model never scores an untrained back-end under the published
model's name. ``pretrained=False`` builds the untrained model on purpose and tags its identifier
``_untrained``.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly, walk_coords  # noqa: E402
from brainscore_vision.model_helpers.brain_transformation.behavior import (  # noqa: E402
    BehaviorArbiter, LabelBehavior, OddOneOut, ProbabilitiesMapping)
from brainscore_vision.model_interface import BrainModel  # noqa: E402

from .commitments import Commitment, UnknownLayerError, layer_hint, load_commitment, unknown_layers  # noqa: E402
from ..errors import CommitmentError  # noqa: E402
from .extraction import VOneNetActivations  # noqa: E402
from ..published.naming import (IDENTIFIERS, NONOISE_SUFFIX, UNTRAINED_TAG, BrainModelSpec,  # noqa: E402,F401
                          brain_identifier, list_identifiers, spec)
from ..preprocessing import brainscore_preprocessing  # noqa: E402
from ..published.catalogue import get_model, model_record  # noqa: E402


def region_layer_map(identifier: str) -> Dict[str, str]:
    """The committed region -> layer map of a brain model (from commitments/)."""
    return dict(load_commitment(spec(identifier).model).region_layers)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _load_network(model_spec: BrainModelSpec, weights_path, pretrained: bool, progress: bool,
                  vone_settings: Optional[dict] = None):
    """The network, and a short description of its weights for the cache identifier."""
    overrides = dict(vone_settings or {})
    if not model_spec.noise:
        if overrides.get('noise_mode') is not None:
            raise ValueError(f"{model_spec.identifier} has its VOneBlock noise off; vone_settings cannot switch it "
                             f"on (use {model_spec.identifier[:-len(NONOISE_SUFFIX)]!r})")
        overrides['noise_mode'] = None
    if not pretrained:
        return get_model(model_spec.model, pretrained=False, **overrides), 'untrained-init0'
    record = model_record(model_spec.model)
    # No fallback: without its weights a published model's name must not be scored (WeightsUnavailableError
    # says how to provide them).
    network = get_model(model_spec.model, weights_path=weights_path, progress=progress, **overrides)
    path = Path(weights_path) if weights_path is not None else record.cache_path
    return network, f'sha1-{_file_digest(path)}'


def brain_model(identifier: str, *, weights_path=None, pretrained: bool = True, noise_seed: int = 0,
                batch_size: int = 16, device: Optional[str] = None, region_map: Optional[str] = None,
                region_layers: Optional[Dict[str, str]] = None, progress: bool = True,
                v1_window: Optional[Tuple[int, int, int, int]] = None,
                identify_by_settings: bool = False, vone_settings: Optional[dict] = None) -> 'VOneNetBrainModel':
    """A Brain-Score BrainModel for ``identifier`` (see ``list_identifiers()``).

    ``weights_path``: a local checkpoint in the published format. Without it the published weights are
    loaded from the cache or downloaded; when they cannot be had, ``WeightsUnavailableError`` says how to
    provide them. ``pretrained=False``: the untrained model on purpose (identifier tagged ``_untrained``).
    ``noise_seed`` seeds the VOneBlock noise draws. ``region_map``
    picks an alternative map from the commitments (e.g. ``'voneresnet-50'``, Brain-Score's
    layer-selected one) and ``region_layers`` overrides single regions (e.g. ``{'V1': 'bottleneck'}``).
    ``v1_window`` = (r0, r1, c0, c1) records V1 (the VOneBlock) only at those output units, computing
    only them (see ``VOneBlock.units_within``). ``identify_by_settings`` makes the model's identifier
    the full settings string, for result caches keyed by model identifier (Brain-Score's property
    benchmarks cache per model identifier). ``vone_settings`` overrides VOneBlock settings (e.g.
    ``{'gabor_seed': 1}``); they enter the activations identifier like every other setting.
    """
    model_spec = spec(identifier)
    commitment = load_commitment(model_spec.model)
    if region_map is not None:
        commitment = commitment.with_region_map(region_map)
    if region_layers:
        commitment = commitment.with_region_layers(region_layers)
    network, weights = _load_network(model_spec, weights_path, pretrained, progress, vone_settings)
    overridden = unknown_layers(network, (region_layers or {}).values())
    if overridden:  # the caller's names, not the commitments file, are at fault
        asked = ', '.join(f'{region} -> {layer!r}' for region, layer in region_layers.items() if layer in overridden)
        raise UnknownLayerError(f"{identifier} has no layer {', '.join(map(repr, overridden))} (asked for as "
                                f"region_layers {asked}); {layer_hint(network, commitment.candidate_layers)}",
                                overridden, commitment.candidate_layers)
    commitment.check_layers(network)
    public_identifier = identifier + (UNTRAINED_TAG if weights.startswith('untrained') else '')
    config = network.vone_block.config
    settings = [f'weights={weights}', f'noise={config.noise_mode}', f'gabor_seed={config.gabor_seed}',
                f'colour_seed={config.colour_seed}']
    if config.noise_mode is not None:
        settings += [f'noise_scale={config.noise_scale}', f'noise_level={config.noise_level}',
                     f'noise_seed={noise_seed}']
    if region_map is not None or region_layers:
        settings.append('map=' + ','.join(f'{r}:{l}' for r, l in commitment.region_layers.items()))
    # Result caches use identifiers in file names, so the settings enter as a short digest.
    description = ','.join(settings)
    digest = hashlib.sha1(description.encode()).hexdigest()[:10]
    activations = VOneNetActivations(
        network, identifier=f"{public_identifier}@{digest}",
        preprocessing=brainscore_preprocessing(commitment.image_size), batch_size=batch_size,
        noise_seed=noise_seed, device=device)
    activations.settings_description = description
    if v1_window is not None:
        if commitment.layer('V1') not in ('vone_block', 'vone_block.output'):
            raise CommitmentError(f"v1_window crops the VOneBlock, but V1 is committed to {commitment.layer('V1')!r}")
        activations.set_v1_window(v1_window)
    return VOneNetBrainModel(public_identifier, activations, commitment, identify_by_settings)


class VOneNetBrainModel(BrainModel):
    """Regions record from their committed layers; recurrent areas map time steps to time bins;
    behaviour reads the committed readout layer (and the logits for ImageNet labels)."""

    def __init__(self, identifier: str, activations_model: VOneNetActivations, commitment: Commitment,
                 identify_by_settings: bool = False):
        self._identifier = identifier
        self._identify_by_settings = identify_by_settings
        self.activations_model = activations_model
        self.commitment = commitment
        activations_model._extractor.set_visual_degrees(commitment.visual_degrees)  # for microsaccades
        readout = commitment.behavioral_readout_layer
        self.behavior_model = BehaviorArbiter({
            BrainModel.Task.label: LabelBehavior(identifier, activations_model),
            BrainModel.Task.probabilities: ProbabilitiesMapping(identifier, activations_model, readout),
            BrainModel.Task.odd_one_out: OddOneOut(identifier, activations_model, readout),
        })
        self.do_behavior = False
        self.recording_region: Optional[str] = None
        self.recording_time_bins: Optional[List[Tuple[int, int]]] = None

    @property
    def identifier(self) -> str:
        return self.activations_model.settings_identifier if self._identify_by_settings else self._identifier

    @property
    def network(self):
        return self.activations_model._model

    def visual_degrees(self) -> float:
        return self.commitment.visual_degrees

    def start_task(self, task: BrainModel.Task, *args, **kwargs):
        if task == BrainModel.Task.passive:
            self.do_behavior = False
            return
        self.behavior_model.start_task(task, *args, **kwargs)
        self.do_behavior = True

    def start_recording(self, recording_target: str, time_bins: Sequence[Tuple[int, int]]):
        self.commitment.layer(recording_target)  # raises CommitmentError for an uncommitted region
        bins = [tuple(int(t) for t in np.asarray(b).tolist()) for b in time_bins]
        if not bins:
            raise ValueError("start_recording needs at least one (start, end) time bin")
        self.recording_region, self.recording_time_bins = recording_target, bins
        self.do_behavior = False

    def look_at(self, stimuli, number_of_trials: int = 1, require_variance: bool = False):
        """Responses to ``stimuli``. A stochastic model averages ``number_of_trials`` noise draws, or
        with ``require_variance`` returns every draw (trial-level presentations).

        A V1 recording (V1 = the VOneBlock) of one of the Marques2020 property stimulus sets records only
        the V1 window, for this call (see :meth:`_property_window`)."""
        with self._property_window(stimuli), self.activations_model.trials(number_of_trials, require_variance):
            if self.do_behavior:
                return self.behavior_model.look_at(stimuli, number_of_trials=number_of_trials,
                                                   require_variance=require_variance)
            if self.recording_region is None:
                raise CommitmentError("call start_recording(region, time_bins) or start_task(...) before look_at")
            return self._record(stimuli, number_of_trials, require_variance)

    @contextmanager
    def _property_window(self, stimuli):
        """For one call: the V1 window where it is valid (``v1_properties.score.property_window_for``).

        When Brain-Score's own entry point (``brainscore_vision.score``) runs a Marques2020 property
        benchmark, it calls this model directly, without our scoring run that sets the window: the full
        56 x 56 x 512 VOneBlock map for the 3,528 receptive-field images would be a 22.7 GB assembly. The
        benchmarks keep only units whose receptive field lies within 0.15 deg of the stimulus centre, all
        inside the window (see the ``v1_properties.score`` module docstring), so the selected units and the
        scores are those of the full map, at about 1 GB. The decision is made per call and undone after it
        (no mode is left switched on): any other stimulus set, region or layer records as before. Within
        the call the activations are computed as in our own run (``fast_scoring``, the same values bit
        for bit) and not stored in Brain-Score's activations cache (the benchmarks cache their results).
        """
        from ..scoring.v1_properties.score import property_window_for
        window = property_window_for(self, stimuli)
        if window is None:
            yield
            return
        activations = self.activations_model
        extractor = activations._extractor
        store = extractor.store_activations
        activations.set_v1_window(window)
        extractor.store_activations = False
        try:
            with activations.fast_scoring():
                yield
        finally:
            activations.set_v1_window(None)
            extractor.store_activations = store

    def _record(self, stimuli, number_of_trials, require_variance):
        region = self.recording_region
        layer = self.commitment.layer(region)
        step_bins = self.commitment.region_time_bins(region)
        layers = [layer] if not step_bins else [f'{layer}-t{step}' for step in range(len(step_bins))]
        activations = self.activations_model(stimuli, layers=layers, number_of_trials=number_of_trials,
                                             require_variance=require_variance)
        if step_bins:
            chosen = [nearest_step(step_bins, requested) for requested in self.recording_time_bins]
            responses = _per_time_bin(activations, layer, chosen, self.recording_time_bins)
        else:
            responses = _per_time_bin(activations, layer, [None] * len(self.recording_time_bins),
                                      self.recording_time_bins)
        responses['region'] = 'neuroid', [region] * responses.sizes['neuroid']
        return responses


def nearest_step(step_bins: Sequence[Tuple[int, int]], requested: Tuple[int, int]) -> int:
    """The recurrent step whose committed time bin has its centre nearest the requested bin's."""
    centre = (requested[0] + requested[1]) / 2
    return int(np.argmin([abs((start + end) / 2 - centre) for start, end in step_bins]))


def _per_time_bin(activations, layer: str, steps: List[Optional[int]], time_bins) -> NeuroidAssembly:
    """presentation x neuroid (one bin) or presentation x neuroid x time_bin, from per-step layers."""
    if steps == [None]:  # feed-forward, one bin: the extractor's assembly is already the answer
        return activations
    layer_coord = activations['layer'].values

    def block(step):
        if step is None:
            return activations
        return activations.isel(neuroid=np.flatnonzero(layer_coord == f'{layer}-t{step}'))

    first = block(steps[0])
    coords = {}
    for coord, dims, values in walk_coords(first):
        if coord == 'layer':
            values = np.full(len(values), layer, dtype=object)
        elif coord == 'neuroid_id' and steps[0] is not None:
            values = np.array([v.replace(f'{layer}-t{steps[0]}', layer, 1) for v in values], dtype=object)
        coords[coord] = (dims, values)
    first = first.transpose('presentation', 'neuroid')
    if len(time_bins) == 1:
        return NeuroidAssembly(first.values, coords=coords, dims=['presentation', 'neuroid'])
    data = np.stack([block(step).transpose('presentation', 'neuroid').values for step in steps], axis=-1)
    coords['time_bin_start'] = ('time_bin', [b[0] for b in time_bins])
    coords['time_bin_end'] = ('time_bin', [b[1] for b in time_bins])
    return NeuroidAssembly(data, coords=coords, dims=['presentation', 'neuroid', 'time_bin'])
