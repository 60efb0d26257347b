"""Score a brain model's V1 on the Marques2020 property benchmarks, offline, with Brain-Score's own
benchmark classes.

Part of scoring (scoring/v1_properties/), above the brain model: it builds our brain models
(``brain.model``) or loads any Brain-Score model, and runs the benchmarks on them.

Two things make the run fit a laptop: the local data registries (``registry.install_offline_data``)
and a V1 window (``brain.v1_window``: the VOneBlock units around the stimuli, the only ones a property
benchmark can select). Recording only the window (12 x 12 positions x 512 channels instead of
56 x 56 x 512) leaves the selected units and their responses unchanged and cuts memory 22-fold.

By default the benchmarks run within :func:`fast_scoring`: Brain-Score's benchmark classes and
analyses as they are, with our stimuli placed on the model's screen and preprocessed in memory by
Brain-Score's own operations instead of through 9,097 new files (``screen.py``), and the VOneBlock's
noise trials computed with less work (``VOneNetActivations.fast_scoring``). The activations, the
selected neurons and the scores are those of ``fast=False``, today's path through files, bit for bit
(``tests/test_v1_fast_path.py``).

Any Brain-Score model can be scored (:func:`build_v1_model`): ours are built here; any other identifier
is loaded with ``brainscore_vision.load_model``, and ``layer`` commits its V1 (a new ``ModelCommitment``
with ``region_layer_map={'V1': layer}`` over the loaded activations model), so Brain-Score's layer
selection, which scores every layer on an S3 benchmark, is never triggered. The V1 window applies only
where it is valid, i.e. V1 is a VOneBlock; elsewhere the full layer map is recorded, so the memory the
receptive-field set needs is estimated first (units x 3,528 images x 4 bytes, held about twice while
Brain-Score maps the receptive fields) and a run that cannot fit stops with ``V1MemoryError``.

Brain-Score's own entry points (``brainscore_vision.score``) call our brain model directly, without
this module's run: there ``brain.v1_window.property_window_for`` lets the model record the window for one
call at a time, for the Marques2020 property stimulus sets only (see ``VOneNetBrainModel.look_at``).
"""
from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from ...brain.brainscore_access import network_of, observing_metric
from ...brain.v1_window import VOBLOCK_LAYERS, around_property_stimuli
from ...brainscore_env import offline_defaults
from ...errors import BrainModelError, V1MemoryError, VOneNetError
from ...seeding import numpy_global_seed
from .registry import OFFLINE_BENCHMARKS, S3_ONLY_BENCHMARKS, install_offline_data

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """One benchmark's outcome, and the distributions behind it for the figure."""

    model: str
    settings: str
    benchmark: str
    score: float
    raw: float
    ceiling: float
    error: float
    property_name: str
    model_values: np.ndarray = field(repr=False)
    primate_values: np.ndarray = field(repr=False)
    bins: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        return {'model': self.model, 'settings': self.settings, 'benchmark': self.benchmark, 'score': self.score, 'raw': self.raw, 'ceiling': self.ceiling,
                'error': self.error, 'property': self.property_name,
                'model_neurons': int(len(self.model_values)), 'primate_neurons': int(len(self.primate_values))}


def resolve_benchmarks(names: Sequence[str]) -> List[str]:
    """Expand 'v1-properties' and check each id; S3-only ones are named as such."""
    resolved = []
    for name in names:
        if name in ('v1-properties', 'v1_properties', 'marques2020'):
            resolved += [b for b in OFFLINE_BENCHMARKS if b not in resolved]
        elif name in OFFLINE_BENCHMARKS:
            resolved.append(name)
        elif name in S3_ONLY_BENCHMARKS:
            raise VOneNetError(f"{name} compares against recordings that only Brain-Score's S3 holds; it runs "
                               f"where Brain-Score can load its data (brainscore_vision.score). Offline: "
                               f"{', '.join(OFFLINE_BENCHMARKS)}")
        else:
            raise VOneNetError(f"unknown V1 property benchmark {name!r}; use 'v1-properties' or one of "
                               f"{', '.join(OFFLINE_BENCHMARKS)}")
    return resolved


@contextmanager
def fast_scoring(model, progress: bool = True):
    """Within: the same scores with less work. Our stimulus sets are placed on the model's screen and
    preprocessed in memory (``screen.in_memory_screen``: Brain-Score's operations, no files), and our
    activations model computes the same activations with less work (``VOneNetActivations.fast_scoring``).
    Either part that does not apply to ``model`` (another preprocessing, another activations model)
    is left out, and that part runs as before."""
    from .screen import in_memory_screen
    activations_model = getattr(model, 'activations_model', None)
    with ExitStack() as stack:
        stack.enter_context(in_memory_screen(model, progress=progress))
        if hasattr(activations_model, 'fast_scoring'):
            stack.enter_context(activations_model.fast_scoring())
        yield


def score_brain_model(model, benchmarks: Sequence[str] = ('v1-properties',), seed: int = 0,
                      progress: bool = True, fast: bool = True) -> List[BenchmarkResult]:
    """Run the V1 property benchmarks on a brain model; returns one result per benchmark.

    ``fast`` (default): within :func:`fast_scoring`, which gives the very same scores (tested
    against ``fast=False``, which is the pipeline through files as Brain-Score runs it)."""
    identifiers = resolve_benchmarks(benchmarks)
    install_offline_data(progress=progress)
    activations_model = model.activations_model
    with ExitStack() as scopes:
        # Each stimulus set is recorded once per run anyway (the property functions are cached per
        # model identifier), so storing gigabytes of activations would only cost time and disk.
        if hasattr(activations_model, 'unstored'):  # ours; a stock activations model is left as it is
            scopes.enter_context(activations_model.unstored())
        scopes.enter_context(fast_scoring(model, progress=progress) if fast else nullcontext())
        return [_score_one(model, identifier, seed) for identifier in identifiers]


def _score_one(model, identifier: str, seed: int) -> BenchmarkResult:
    import brainscore_vision
    with offline_defaults():
        loaded = brainscore_vision.load_benchmark(identifier)
    benchmark, recorder = observing_metric(loaded)  # observe only: the metric still computes the score
    property_name = recorder.metric.property_name
    logger.info('scoring %s on %s', model.identifier, identifier)
    with numpy_global_seed(seed):
        score = benchmark(model)
    model_property, data_property = recorder.first_call
    return BenchmarkResult(
        model=model.identifier,
        settings=getattr(model.activations_model, 'settings_description', model.identifier),
        benchmark=identifier, score=float(score.values), raw=float(score.attrs['raw'].values),
        ceiling=float(score.attrs['ceiling'].values), error=float(score.attrs['raw'].attrs.get('error', np.nan)),
        property_name=property_name,
        model_values=np.asarray(model_property.loc[:, property_name].values, dtype=float),
        primate_values=np.asarray(data_property.loc[:, property_name].values, dtype=float),
        bins=np.asarray(data_property.attrs[property_name + '_bins'], dtype=float))


RECEPTIVE_FIELD_IMAGES = 3528  # the Marques2020_receptive_field set: the largest recording of the run
PEAK_FACTOR = 2  # Brain-Score's receptive-field mapping holds the recorded map and a blank-subtracted copy


@dataclass
class V1Plan:
    """What one model's V1 run records, and the memory its largest recording needs."""

    model: str
    layer: str
    windowed: bool
    units: Optional[int]
    estimate_bytes: Optional[int]
    available_bytes: Optional[int]

    def describe(self) -> str:
        if self.units is None:
            return f"{self.model}: V1 = {self.layer}; its size is unknown, so no memory estimate"
        how = 'V1 window (VOneBlock)' if self.windowed else 'full map'
        available = f", {self.available_bytes / 1e9:.1f} GB available" if self.available_bytes else ''
        return (f"{self.model}: V1 = {self.layer} ({how}): {self.units:,} units x {RECEPTIVE_FIELD_IMAGES} "
                f"receptive-field images x 4 bytes = {self.estimate_bytes / 1e9:.2f} GB{available}")


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of /proc/meminfo (Linux), else the
    free physical pages (``os.sysconf``), None if unknown. (Not psutil: this module travels in the
    submitted plugin, whose requirements name only what its code imports.)"""
    try:
        with open('/proc/meminfo') as meminfo:
            for line in meminfo:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os
        return int(os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'))
    except (AttributeError, OSError, ValueError):
        return None


def layer_units(network, layer: str, image_size: int = 224) -> Optional[int]:
    """Units of ``network``'s module ``layer`` for one image (a forward pass of zeros, stopped there)."""
    import torch
    modules = dict(network.named_modules())
    if layer not in modules:
        return None
    found = {}

    class _Stop(Exception):
        pass

    def hook(_module, _inputs, output):
        output = output[0] if isinstance(output, (tuple, list)) else output
        found['units'] = int(output[0].numel())
        raise _Stop

    handle = modules[layer].register_forward_hook(hook)
    parameter = next(network.parameters(), None)
    inputs = torch.zeros(1, 3, image_size, image_size, dtype=parameter.dtype if parameter is not None else None,
                         device=parameter.device if parameter is not None else None)
    try:
        with torch.no_grad():
            network(inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found.get('units')


def _is_ours(identifier: str) -> bool:
    from ...published.naming import resolve
    try:
        resolve(identifier)
    except VOneNetError:
        return False
    return True


def _check_known_to_brainscore(identifier: str) -> None:
    """Refuse, before any loading, a name neither ours nor registered by exactly one Brain-Score model plugin."""
    from brainscore_core.plugin_management.import_plugin import ImportPlugin
    from ...published.naming import IDENTIFIERS
    try:
        ImportPlugin('brainscore_vision', 'models', identifier)
    except AssertionError as error:  # Brain-Score's locate_plugin: no registration, or several
        raise BrainModelError(f"unknown brain model {identifier!r}: not ours ({', '.join(IDENTIFIERS)}) and Brain-Score "
                              f"cannot load it ({error})") from None


def load_brain_model(identifier: str, layer: Optional[str] = None):
    """Any Brain-Score model, loaded by ``brainscore_vision.load_model``; with ``layer``, V1 is committed to
    that layer (a new ``ModelCommitment``, ``region_layer_map={'V1': layer}``, over the loaded model's
    activations model and visual degrees), so no layer selection runs. Without ``layer`` the model must
    commit V1 itself: a ``ModelCommitment`` with no region map of its own would select V1's layer by
    scoring every layer on Brain-Score's S3 data, so that is refused, naming ``--layer``."""
    import brainscore_vision
    from brainscore_vision.model_helpers.brain_transformation import ModelCommitment, RegionLayerMap
    from ...brain.commitments import UnknownLayerError
    with offline_defaults():
        try:
            model = brainscore_vision.load_model(identifier)
        except AssertionError as error:  # Brain-Score's locate_plugin: no (or two) registrations
            raise BrainModelError(f"Brain-Score cannot load {identifier!r}: {error}") from None
    activations = getattr(model, 'activations_model', None)
    network = network_of(activations, missing_ok=True)
    candidates = list(getattr(model, 'layers', None) or [])
    if layer is None:
        region_map = getattr(getattr(model, 'layer_model', None), 'region_layer_map', None)
        if isinstance(region_map, RegionLayerMap) and 'V1' not in dict.keys(region_map):
            raise BrainModelError(
                f"{identifier} has no region map of its own: Brain-Score would pick its V1 layer by scoring "
                f"every layer on FreemanZiemba2013public.V1-pls, from S3. Commit V1 to a layer with --layer "
                f"(candidate layers: {', '.join(candidates) or 'see the model'})")
        return model
    if activations is None:
        raise BrainModelError(f"{identifier} ({type(model).__name__}) has no activations model, so V1 cannot be "
                              f"committed to {layer!r}; score it without --layer")
    if network is not None and layer not in dict(network.named_modules()):
        raise UnknownLayerError(f"{identifier} has no layer {layer!r}", [layer], candidates)
    visual_degrees = model.visual_degrees() if hasattr(model, 'visual_degrees') else 8
    return ModelCommitment(identifier=f'{identifier}@V1={layer}', activations_model=activations, layers=[layer],
                           region_layer_map={'V1': layer}, visual_degrees=visual_degrees)


def _v1_layer(model) -> str:
    commitment = getattr(model, 'commitment', None)
    if commitment is not None:
        return commitment.layer('V1')
    region_map = getattr(getattr(model, 'layer_model', None), 'region_layer_map', None)
    if region_map is not None:
        layer = region_map['V1']
        return layer if isinstance(layer, str) else ','.join(layer)
    return '?'


def plan_v1_run(model, windowed: bool) -> V1Plan:
    """The memory estimate of ``model``'s V1 run (windowed: the window's units)."""
    layer = _v1_layer(model)
    activations = getattr(model, 'activations_model', None)
    if windowed:
        r0, r1, c0, c1 = activations.v1_window
        units = (r1 - r0) * (c1 - c0) * model.network.vone_block.output_shape()[0]
    else:
        network = network_of(activations, missing_ok=True)
        commitment = getattr(model, 'commitment', None)
        size = commitment.image_size if commitment is not None else int(getattr(activations, 'image_size', 224))
        units = layer_units(network, layer, size) if network is not None and ',' not in layer else None
    estimate = None if units is None else units * RECEPTIVE_FIELD_IMAGES * 4
    return V1Plan(model=model.identifier, layer=layer, windowed=windowed, units=units, estimate_bytes=estimate,
                  available_bytes=available_memory())


def check_memory(plan: V1Plan) -> None:
    """Raise ``V1MemoryError`` when the run's largest recording cannot fit in the available memory."""
    if plan.estimate_bytes is None or plan.available_bytes is None:
        return
    needed = PEAK_FACTOR * plan.estimate_bytes
    if needed > plan.available_bytes:
        raise V1MemoryError(
            f"{plan.model}: scoring V1 = {plan.layer} records its full map, {plan.units:,} units, for "
            f"{RECEPTIVE_FIELD_IMAGES} receptive-field images: {plan.estimate_bytes / 1e9:.1f} GB, held about "
            f"{PEAK_FACTOR}x ({needed / 1e9:.1f} GB) while Brain-Score maps the receptive fields, but only "
            f"{plan.available_bytes / 1e9:.1f} GB is available. Use an earlier or smaller layer (--layer), or a "
            f"machine with more memory (the V1 window that makes VOneNets fit applies only to a VOneBlock V1)")


def build_v1_model(identifier: str, *, layer: Optional[str] = None, weights_path=None, pretrained: bool = True,
                   noise_seed: int = 0, batch_size: int = 32, window: bool = True,
                   progress: bool = True) -> Tuple[object, V1Plan]:
    """The brain model to score (ours, or any Brain-Score model) and its run's plan (window, memory).

    Ours: when the published weights cannot be had and V1 is the VOneBlock (fixed weights, seeded), the
    score cannot depend on the back-end: the model is built with an untrained back-end, its identifier
    tagged ``_untrained``, and a warning says so. For any other V1 layer the missing weights are an error.
    Raises ``V1MemoryError`` (before any recording) when the full map cannot fit.
    """
    if not _is_ours(identifier):
        _check_known_to_brainscore(identifier)
        if weights_path is not None or not pretrained:
            raise BrainModelError(f"{identifier} is not a VOneNet: --weights and --untrained apply to ours only")
        model = load_brain_model(identifier, layer)
    else:
        model = _our_v1_model(identifier, layer=layer, weights_path=weights_path, pretrained=pretrained,
                              noise_seed=noise_seed, batch_size=batch_size, window=window, progress=progress)
    windowed = getattr(getattr(model, 'activations_model', None), 'v1_window', None) is not None
    if windowed:
        _release_unused_stages(model.network)
    plan = plan_v1_run(model, windowed=windowed)
    check_memory(plan)
    return model, plan


def _our_v1_model(identifier: str, *, layer, weights_path, pretrained, noise_seed, batch_size, window, progress):
    """One of our brain models, built to score V1: windowed where V1 is the VOneBlock (unless ``window`` is
    off), and with an untrained back-end where the published weights cannot be had and cannot matter."""
    from ...brain.model import brain_model, region_layer_map
    from ...errors import WeightsUnavailableError
    from ...published.naming import UNTRAINED_TAG, resolve
    identifier = resolve(identifier)
    voneblock_v1 = (layer or region_layer_map(identifier)['V1']) in VOBLOCK_LAYERS

    def build(pretrained_back_end: bool):
        return brain_model(identifier, weights_path=weights_path, pretrained=pretrained_back_end,
                           noise_seed=noise_seed, batch_size=batch_size,
                           region_layers={'V1': layer} if layer else None, identify_by_settings=True,
                           progress=progress, v1_window=around_property_stimuli if window and voneblock_v1 else None)
    try:
        return build(pretrained)
    except WeightsUnavailableError as error:
        if weights_path is not None or (layer is not None and layer not in VOBLOCK_LAYERS):
            raise
        logger.warning("%s: published weights unavailable (%s). V1 is the fixed, seeded VOneBlock, so its "
                       "property scores do not depend on the back-end: scoring with an untrained back-end, "
                       "identifier tagged '%s'.", identifier, str(error).splitlines()[0], UNTRAINED_TAG)
        return build(False)


def score_v1_properties(identifier: str, benchmarks: Sequence[str] = ('v1-properties',), *, layer: Optional[str] = None,
                        weights_path=None, pretrained: bool = True, noise_seed: int = 0, seed: int = 0,
                        batch_size: int = 32, window: bool = True, progress: bool = True,
                        fast: bool = True, announce: Optional[Callable[[str], None]] = None) -> List[BenchmarkResult]:
    """Build ``identifier``'s brain model (ours or any Brain-Score model; ``layer`` scores another layer as
    V1) and score it (see :func:`build_v1_model`). ``announce`` receives the memory estimate before the run."""
    model, plan = build_v1_model(identifier, layer=layer, weights_path=weights_path, pretrained=pretrained,
                                 noise_seed=noise_seed, batch_size=batch_size, window=window, progress=progress)
    (announce or logger.info)(plan.describe())
    return score_brain_model(model, benchmarks, seed=seed, progress=progress, fast=fast)


class ReleasedStage(nn.Module):
    """Stands in for a stage of a network that a windowed V1 run never computes (with the V1 window
    set, the activations model records only the VOneBlock and refuses any other layer)."""

    def __init__(self, name: str):
        super().__init__()
        self.released = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"the network's {self.released!r} stage was released: this model was built to score "
                           f"its V1 (the VOneBlock) only")


def _release_unused_stages(network) -> None:
    """Give back the memory of every stage after the VOneBlock (a ResNet50 back-end is 0.1 GB), which
    counts in the run's peak while Brain-Score maps 3,528 receptive-field responses of 73,728 units."""
    from ...brain.extraction import release_free_memory
    for name, _ in list(network.named_children()):
        if name != 'vone_block':
            setattr(network, name, ReleasedStage(name))
    release_free_memory()
