"""VOneNets as Brain-Score ``BrainModel``s, following the commitments in ``commitments/``.

Part of the brain model (brain/), the top of that floor: ``brain_model`` builds the network (published/),
its commitment (``brain.commitments``), its preprocessing and its activations model (``brain.extraction``),
and :class:`VOneNetBrainModel` answers Brain-Score's calls. A Brain-Score plugin imports only this module
(``brain.plugin.vendoring`` follows its imports).

``brain_model('vonenet_resnet50')`` loads the published weights, or fails with an error that says
how to provide them: a registered model never scores an untrained back-end under the published
model's name. ``pretrained=False`` builds the untrained model on purpose and tags its identifier
``_untrained``.
"""
from __future__ import annotations

import hashlib
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly, walk_coords
from brainscore_vision.model_helpers.brain_transformation.behavior import (
    BehaviorArbiter, LabelBehavior, OddOneOut, ProbabilitiesMapping)
from brainscore_vision.model_interface import BrainModel

from ..errors import CommitmentError
from ..preprocessing import brainscore_preprocessing
from ..published.catalogue import get_model, model_record
from ..published.naming import NONOISE_SUFFIX, UNTRAINED_TAG, BrainModelSpec, spec
from .brainscore_access import extractor_of, network_of
from .commitments import (Commitment, UnknownLayerError, layer_hint, load_commitment, recording_time_bins,
                          unknown_layers)
from .extraction import VOneNetActivations
from .v1_window import VOBLOCK_LAYERS, Window, property_window_for


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


def _commitment(model_spec: BrainModelSpec, region_map: Optional[str],
                region_layers: Optional[Dict[str, str]]) -> Commitment:
    """The model's commitment, with the alternative map and the single regions the caller asked for."""
    commitment = load_commitment(model_spec.model)
    if region_map is not None:
        commitment = commitment.with_region_map(region_map)
    if region_layers:
        commitment = commitment.with_region_layers(region_layers)
    return commitment


def _check_network(identifier: str, network, commitment: Commitment, region_layers: Optional[Dict[str, str]]):
    """Refuse, naming the culprit, layers the network does not have and a screen it was not built for."""
    overridden = unknown_layers(network, (region_layers or {}).values())
    if overridden:  # the caller's names, not the commitments file, are at fault
        asked = ', '.join(f'{region} -> {layer!r}' for region, layer in region_layers.items() if layer in overridden)
        raise UnknownLayerError(f"{identifier} has no layer {', '.join(map(repr, overridden))} (asked for as "
                                f"region_layers {asked}); {layer_hint(network, commitment.candidate_layers)}",
                                overridden, commitment.candidate_layers)
    commitment.check_layers(network)
    commitment.check_screen(network)


def _settings_description(network, weights: str, noise_seed: int, commitment: Commitment, remapped: bool) -> str:
    """Every setting that changes the activations, for the cache identifier."""
    config = network.vone_block.config
    settings = [f'weights={weights}', f'noise={config.noise_mode}', f'gabor_seed={config.gabor_seed}',
                f'colour_seed={config.colour_seed}']
    if config.noise_mode is not None:
        settings += [f'noise_scale={config.noise_scale}', f'noise_level={config.noise_level}',
                     f'noise_seed={noise_seed}']
    if remapped:
        settings.append('map=' + ','.join(f'{r}:{l}' for r, l in commitment.region_layers.items()))
    return ','.join(settings)


def _v1_window(v1_window, network, commitment: Commitment) -> Optional[Window]:
    """The window asked for (or computed from the VOneBlock by a function), valid only for a VOneBlock V1."""
    if v1_window is None:
        return None
    if commitment.layer('V1') not in VOBLOCK_LAYERS:
        raise CommitmentError(f"v1_window crops the VOneBlock, but V1 is committed to {commitment.layer('V1')!r}")
    return v1_window(network.vone_block) if callable(v1_window) else tuple(v1_window)


def brain_model(identifier: str, *, weights_path=None, pretrained: bool = True, noise_seed: int = 0,
                batch_size: int = 16, device: Optional[str] = None, region_map: Optional[str] = None,
                region_layers: Optional[Dict[str, str]] = None, progress: bool = True,
                v1_window: Union[Window, Callable[[object], Window], None] = None,
                identify_by_settings: bool = False, vone_settings: Optional[dict] = None) -> 'VOneNetBrainModel':
    """A Brain-Score BrainModel for ``identifier`` (see ``list_identifiers()``).

    ``weights_path``: a local checkpoint in the published format. Without it the published weights are
    loaded from the cache or downloaded; when they cannot be had, ``WeightsUnavailableError`` says how to
    provide them. ``pretrained=False``: the untrained model on purpose (identifier tagged ``_untrained``).
    ``noise_seed`` seeds the VOneBlock noise draws. ``region_map``
    picks an alternative map from the commitments (e.g. ``'voneresnet-50'``, Brain-Score's
    layer-selected one) and ``region_layers`` overrides single regions (e.g. ``{'V1': 'bottleneck'}``).
    ``v1_window`` = (r0, r1, c0, c1), or a function of the VOneBlock that gives them (e.g.
    ``v1_window.around_property_stimuli``), records V1 (the VOneBlock) only at those output units,
    computing only them (see ``VOneBlock.units_within``). ``identify_by_settings`` makes the model's
    identifier the full settings string, for result caches keyed by model identifier (Brain-Score's
    property benchmarks cache per model identifier). ``vone_settings`` overrides VOneBlock settings (e.g.
    ``{'gabor_seed': 1}``); they enter the activations identifier like every other setting. Visual degrees,
    image size and normalisation are the commitment's; a network built for another screen is refused.
    """
    model_spec = spec(identifier)
    commitment = _commitment(model_spec, region_map, region_layers)
    network, weights = _load_network(model_spec, weights_path, pretrained, progress, vone_settings)
    _check_network(identifier, network, commitment, region_layers)
    public_identifier = identifier + (UNTRAINED_TAG if weights.startswith('untrained') else '')
    description = _settings_description(network, weights, noise_seed, commitment,
                                        remapped=region_map is not None or bool(region_layers))
    # Result caches use identifiers in file names, so the settings enter as a short digest.
    digest = hashlib.sha1(description.encode()).hexdigest()[:10]
    preprocessing = brainscore_preprocessing(commitment.image_size, commitment.normalize_mean,
                                             commitment.normalize_std)
    activations = VOneNetActivations(
        network, identifier=f"{public_identifier}@{digest}", preprocessing=preprocessing, batch_size=batch_size,
        noise_seed=noise_seed, device=device, v1_window=_v1_window(v1_window, network, commitment))
    activations.settings_description = description
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
        extractor_of(activations_model).set_visual_degrees(commitment.visual_degrees)  # for microsaccades
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
        return network_of(self.activations_model)

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
        self.recording_region, self.recording_time_bins = recording_target, recording_time_bins(time_bins)
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
        """For one call: the V1 window where it is valid (``v1_window.property_window_for``).

        When Brain-Score's own entry point (``brainscore_vision.score``) runs a Marques2020 property
        benchmark, it calls this model directly, without our scoring run that sets the window: the full
        56 x 56 x 512 VOneBlock map for the 3,528 receptive-field images would be a 22.7 GB assembly. The
        benchmarks keep only units whose receptive field lies within 0.15 deg of the stimulus centre, all
        inside the window (see the ``brain.v1_window`` module docstring), so the selected units and the
        scores are those of the full map, at about 1 GB. The window, and the two settings below, hold for
        this call only (scopes of the activations model): any other stimulus set, region or layer records
        as before. Within the call the activations are computed as in our own run (``fast_scoring``, the
        same values bit for bit) and not stored in Brain-Score's activations cache (the benchmarks cache
        their results).
        """
        window = property_window_for(self, stimuli)
        with ExitStack() as scopes:
            if window is not None:
                activations = self.activations_model
                for scope in (activations.windowed(window), activations.unstored(), activations.fast_scoring()):
                    scopes.enter_context(scope)
            yield

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
