"""Score a brain model's V1 on the Marques2020 property benchmarks, offline, with Brain-Score's own
benchmark classes.

Two things make the run fit a laptop: the local data registries (``registry.install_offline_data``)
and a V1 window. Every property benchmark keeps only units whose receptive-field centre lies within
0.15 deg of the stimulus centre (0.5, 0.5) deg. A VOneBlock unit responds only to patches inside
its filter (half-width 12 px = 0.43 deg at 8 deg / 224 px) and the mapping patches have radius
1/6 deg, so its mapped centre lies within 0.60 deg of the unit per axis; units farther than
0.60 + 0.15 deg (plus 0.1 deg for the 448 -> 224 px resampling) can never be selected. Recording
only the window (12 x 12 positions x 512 channels instead of 56 x 56 x 512) leaves the selected
units and their responses unchanged and cuts memory 22-fold.

By default the benchmarks run within :func:`fast_scoring`: Brain-Score's benchmark classes and
analyses as they are, with our stimuli placed on the model's screen and preprocessed in memory by
Brain-Score's own operations instead of through 9,097 new files (``screen.py``), and the VOneBlock's
noise trials computed with less work (``VOneNetActivations.fast_scoring``). The activations, the
selected neurons and the scores are those of ``fast=False``, today's path through files, bit for bit
(``tests/test_v1_fast_path.py``).
"""
from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from torch import nn

from ..brainscore_env import offline_defaults
from ..errors import VOneNetError
from .registry import OFFLINE_BENCHMARKS, S3_ONLY_BENCHMARKS, install_offline_data

logger = logging.getLogger(__name__)

STIMULUS_CENTRE_DEG = (0.5, 0.5)  # (y, x) of every Marques2020 property stimulus
WINDOW_RADIUS_DEG = 0.85          # 0.43 filter + 0.17 patch + 0.15 selection + 0.1 resampling


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
def _seeded_numpy(seed: int):
    """Brain-Score's bootstrap draws from numpy's global RNG: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class _RecordingMetric:
    """Passes every call through to Brain-Score's metric; keeps the first (model vs primate) call."""

    def __init__(self, metric):
        self.metric, self.first_call = metric, None

    def __call__(self, model_property, data_property):
        if self.first_call is None:
            self.first_call = (model_property.copy(), data_property.copy())
        return self.metric(model_property, data_property)

    def __getattr__(self, name):
        return getattr(self.metric, name)


def v1_window_for(model) -> Optional[tuple]:
    """The V1 window for a brain model whose V1 is its VOneBlock, else None."""
    if model.commitment.layer('V1') not in ('vone_block', 'vone_block.output'):
        return None
    return model.network.vone_block.units_within(STIMULUS_CENTRE_DEG, WINDOW_RADIUS_DEG)


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
    # Each stimulus set is recorded once per run anyway (the property functions are cached per
    # model identifier), so storing gigabytes of activations would only cost time and disk.
    extractor = getattr(model.activations_model, '_extractor', None)
    lean = hasattr(extractor, 'store_activations')  # ours; a stock extractor is left as it is
    if lean:
        store, extractor.store_activations = extractor.store_activations, False
    try:
        with fast_scoring(model, progress=progress) if fast else nullcontext():
            results = _score_each(model, identifiers, seed)
    finally:
        if lean:
            extractor.store_activations = store
    return results


def _score_each(model, identifiers, seed) -> List[BenchmarkResult]:
    import brainscore_vision
    results = []
    for identifier in identifiers:
        with offline_defaults():
            benchmark = brainscore_vision.load_benchmark(identifier)
        recorder = _RecordingMetric(benchmark._similarity_metric)
        benchmark._similarity_metric = recorder  # observe only: the metric still computes the score
        property_name = recorder.metric.property_name
        logger.info('scoring %s on %s', model.identifier, identifier)
        with _seeded_numpy(seed):
            score = benchmark(model)
        model_property, data_property = recorder.first_call
        results.append(BenchmarkResult(
            model=model.identifier,
            settings=getattr(model.activations_model, 'settings_description', model.identifier),
            benchmark=identifier, score=float(score.values), raw=float(score.attrs['raw'].values),
            ceiling=float(score.attrs['ceiling'].values), error=float(score.attrs['raw'].attrs.get('error', np.nan)),
            property_name=property_name,
            model_values=np.asarray(model_property.loc[:, property_name].values, dtype=float),
            primate_values=np.asarray(data_property.loc[:, property_name].values, dtype=float),
            bins=np.asarray(data_property.attrs[property_name + '_bins'], dtype=float)))
    return results


VOBLOCK_LAYERS = ('vone_block', 'vone_block.output')


def score_v1_properties(identifier: str, benchmarks: Sequence[str] = ('v1-properties',), *, layer: Optional[str] = None,
                        weights_path=None, pretrained: bool = True, noise_seed: int = 0, seed: int = 0,
                        batch_size: int = 32, window: bool = True, progress: bool = True,
                        fast: bool = True) -> List[BenchmarkResult]:
    """Build ``identifier``'s brain model (``layer`` scores another layer as V1) and score it.

    When the published weights cannot be had and V1 is the VOneBlock (fixed weights, seeded), the score
    cannot depend on the back-end: the model is built with an untrained back-end, its identifier tagged
    ``_untrained``, and a warning says so. For any other V1 layer the missing weights are an error.
    """
    from ..brain import brain_model
    from ..errors import WeightsUnavailableError
    from ..identifiers import UNTRAINED_TAG

    def build(pretrained_back_end: bool):
        return brain_model(identifier, weights_path=weights_path, pretrained=pretrained_back_end,
                           noise_seed=noise_seed, batch_size=batch_size,
                           region_layers={'V1': layer} if layer else None, identify_by_settings=True,
                           progress=progress)
    try:
        model = build(pretrained)
    except WeightsUnavailableError as error:
        if weights_path is not None or (layer is not None and layer not in VOBLOCK_LAYERS):
            raise
        logger.warning("%s: published weights unavailable (%s). V1 is the fixed, seeded VOneBlock, so its "
                       "property scores do not depend on the back-end: scoring with an untrained back-end, "
                       "identifier tagged '%s'.", identifier, str(error).splitlines()[0], UNTRAINED_TAG)
        model = build(False)
    if window:
        cropped = v1_window_for(model)
        if cropped is not None:
            model.activations_model.set_v1_window(cropped)
            _release_unused_stages(model.network)
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
    from ..extraction import _release_free_memory
    for name, _ in list(network.named_children()):
        if name != 'vone_block':
            setattr(network, name, ReleasedStage(name))
    _release_free_memory()
