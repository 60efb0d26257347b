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
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

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


def score_brain_model(model, benchmarks: Sequence[str] = ('v1-properties',), seed: int = 0,
                      progress: bool = True) -> List[BenchmarkResult]:
    """Run the V1 property benchmarks on a brain model; returns one result per benchmark."""
    import brainscore_vision
    identifiers = resolve_benchmarks(benchmarks)
    install_offline_data(progress=progress)
    results = []
    # Each stimulus set is recorded once per run anyway (the property functions are cached per
    # model identifier), so storing gigabytes of activations would only cost time and disk.
    extractor = getattr(model.activations_model, '_extractor', None)
    lean = hasattr(extractor, 'store_activations')  # ours; a stock extractor is left as it is
    if lean:
        store, extractor.store_activations = extractor.store_activations, False
    try:
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
    finally:
        if lean:
            extractor.store_activations = store
    return results


VOBLOCK_LAYERS = ('vone_block', 'vone_block.output')


def score_v1_properties(identifier: str, benchmarks: Sequence[str] = ('v1-properties',), *, layer: Optional[str] = None,
                        weights_path=None, pretrained: bool = True, noise_seed: int = 0, seed: int = 0,
                        batch_size: int = 32, window: bool = True, progress: bool = True) -> List[BenchmarkResult]:
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
    return score_brain_model(model, benchmarks, seed=seed, progress=progress)
