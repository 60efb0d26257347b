"""``map_layers``: the benchmarks to run, every layer scored on each through the cached features, the V1
property suite on the layers asked for, and the ``LayerMapping`` they make.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from tqdm import tqdm

from ...brain.commitments import UnknownLayerError, layer_hint
from ...brain.extraction import split_time_step
from ...errors import CommitmentError, DataError, VOneNetError
from ..predictivity import PrecomputedModel, benchmark_region, load_brainscore_benchmark, neural_benchmark
from .features import LayerFeatureCache
from .result import V1_PROPERTIES, DegenerateScoreWarning, LayerMapping

logger = logging.getLogger(__name__)

V1_ALIASES = ('v1-properties', 'v1_properties', 'marques2020', V1_PROPERTIES)


def network_order(network, layers: Sequence[str]) -> List[str]:
    """Layers in the order their outputs are computed (a stage after its last block)."""
    index = {name: i for i, name in enumerate(name for name, _ in network.named_modules())}

    def key(layer):
        base, step = split_time_step(layer)
        last = max(i for name, i in index.items() if name == base or name.startswith(base + '.'))
        return last, -base.count('.'), step or 0
    return sorted(layers, key=key)


def _layers(model, layers: Optional[Sequence[str]]) -> List[str]:
    commitment = model.commitment
    if layers is None:
        layers = list(dict.fromkeys([*commitment.candidate_layers, *commitment.region_layers.values()]))
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise CommitmentError("no layers to map; pass layer names or leave layers=None for the candidate layers")
    modules = {name for name, _ in model.network.named_modules()}
    unknown = [layer for layer in layers if split_time_step(layer)[0] not in modules]
    if unknown:
        raise UnknownLayerError(f"{model.identifier} has no layer(s) {', '.join(map(repr, unknown))}; "
                                f"{layer_hint(model.network, commitment.candidate_layers)}",
                                unknown, commitment.candidate_layers)
    return network_order(model.network, layers)


def _score_values(score) -> Tuple[float, float, float]:
    """(ceiled, raw, ceiling) from a Brain-Score score; NaN where a benchmark does not report one."""
    def value(x):
        try:
            return float(np.asarray(getattr(x, 'values', x)).mean())
        except (TypeError, ValueError):
            return math.nan
    raw = score.attrs.get('raw', math.nan) if hasattr(score, 'attrs') else math.nan
    ceiling = score.attrs.get('ceiling', math.nan) if hasattr(score, 'attrs') else math.nan
    return value(score), value(raw), value(ceiling)


def _v1_property_results(model, layer: str, seed: int, progress: bool) -> List[dict]:
    """The offline V1 property suite on ``layer`` as V1 (the brain model's own extraction)."""
    from ...brain.model import VOneNetBrainModel
    from ...brain.v1_window import v1_window_for
    from ..v1_properties.score import score_brain_model
    commitment = model.commitment.with_region_layers({'V1': layer})
    activations = model.activations_model
    # Property results are cached per model identifier: name the layer in it.
    candidate = VOneNetBrainModel(f'{activations.settings_identifier},V1={layer}', activations, commitment)
    with activations.windowed(v1_window_for(candidate)):
        return [result.as_dict() for result in score_brain_model(candidate, ['v1-properties'], seed=seed,
                                                                 progress=progress)]


def map_layers(identifier_or_model, recordings=None, benchmarks: Sequence = (), layers: Optional[Sequence[str]] = None,
               include_v1_properties: Union[bool, Sequence[str]] = False, metric: str = 'pls', progress: bool = True,
               *, stimuli=None, pretrained: bool = True, weights_path=None, batch_size: int = 16,
               visual_degrees: float = 8., time_bin: Optional[Tuple[int, int]] = None, n_components: int = 1000,
               max_memory_gb: float = 2., sketch_dim: Optional[int] = None, seed: int = 0) -> LayerMapping:
    """Score every candidate layer on every benchmark; see ``LayerMapping`` for the result.

    ``identifier_or_model``: a Brain-Score identifier (built with ``brain_model``; ``pretrained``,
    ``weights_path`` and ``batch_size`` pass through) or a ``VOneNetBrainModel``. ``recordings``: an
    assembly from ``load_recordings`` or the path of its NetCDF file (then ``stimuli`` is the CSV or
    image folder); each of its regions is one benchmark (``metric`` 'pls' or 'ridge', images shown
    at ``visual_degrees``). ``benchmarks``: Brain-Score benchmark ids or objects (ids run where
    Brain-Score can load their data); 'v1-properties' there is the same as ``include_v1_properties``.
    ``layers``: default the commitment's candidate layers plus the committed ones.
    ``include_v1_properties``: True runs the offline V1 property suite on every layer, a list of
    layers on those only (minutes per layer, see the package doc). ``n_components``,
    ``max_memory_gb`` and ``sketch_dim`` bound memory (see the package doc).
    """
    from ...brain.model import brain_model
    from ..recordings import load_recordings

    benchmarks, include_v1_properties = _split_v1_aliases(benchmarks, include_v1_properties)
    if recordings is None and not benchmarks and not include_v1_properties:
        raise DataError("nothing to map against: pass recordings (with stimuli), Brain-Score benchmark ids, "
                        "or include_v1_properties=True")
    if isinstance(recordings, (str, Path)):
        if stimuli is None:
            raise DataError(f"recordings {recordings} need their stimuli: pass stimuli=<CSV or image folder>")
        recordings = load_recordings(recordings, stimuli)
    model = brain_model(identifier_or_model, pretrained=pretrained, weights_path=weights_path,
                        batch_size=batch_size, progress=progress) \
        if isinstance(identifier_or_model, str) else identifier_or_model
    layers = _layers(model, layers)
    suite = _suite(recordings, benchmarks, metric, visual_degrees, time_bin)
    cache = LayerFeatureCache(model.activations_model, layers, progress=progress, n_components=n_components,
                              max_memory_gb=max_memory_gb, sketch_dim=sketch_dim)
    table = _score_suite(model, suite, layers, cache, progress)
    v1_results: Dict[str, List[dict]] = {}
    if include_v1_properties:
        layers, v1_results = _score_v1_properties(model, layers, include_v1_properties, table, seed, progress)
    mapping = LayerMapping(model=model.identifier, scores=table.frame(layers, 'scores'),
                           raw=table.frame(layers, 'raws'), ceilings=table.ceilings, regions=table.regions,
                           committed=dict(model.commitment.region_layers),
                           metric=metric if isinstance(metric, str) else type(metric).__name__,
                           layer_info=cache.layer_info(), v1_properties=v1_results)
    for message in mapping.degenerate_messages():
        warnings.warn(message, DegenerateScoreWarning, stacklevel=2)
    return mapping


def _split_v1_aliases(benchmarks, include_v1_properties):
    """'v1-properties' (or an alias) among the benchmark ids means ``include_v1_properties``."""
    benchmarks = list(benchmarks or ())
    if any(isinstance(b, str) and b in V1_ALIASES for b in benchmarks):
        benchmarks = [b for b in benchmarks if not (isinstance(b, str) and b in V1_ALIASES)]
        include_v1_properties = include_v1_properties or True
    return benchmarks, include_v1_properties


def _suite(recordings, benchmarks, metric, visual_degrees, time_bin) -> List[Tuple[object, Optional[str], bool]]:
    """(benchmark, region, whether it came from a Brain-Score id): one per region of the recordings, then
    each Brain-Score benchmark."""
    suite = []
    if recordings is not None:
        regions = list(dict.fromkeys(np.asarray(recordings['region'].values).astype(str)))
        for region in regions:
            suite.append((neural_benchmark(recordings, region, metric, visual_degrees=visual_degrees,
                                           time_bin=time_bin), region, False))
    for benchmark in benchmarks:
        loaded = load_brainscore_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
        suite.append((loaded, benchmark_region(loaded), isinstance(benchmark, str)))
    return suite


class _ScoreTable:
    """Scores, raw scores and ceilings as they come in, by (layer, benchmark column)."""

    def __init__(self):
        self.columns: List[str] = []
        self.scores: Dict[Tuple[str, str], float] = {}
        self.raws: Dict[Tuple[str, str], float] = {}
        self.ceilings: Dict[str, float] = {}
        self.regions: Dict[str, Optional[str]] = {}

    def add_column(self, name: str, region: Optional[str]) -> None:
        self.columns.append(name)
        self.regions[name] = region

    def frame(self, layers: Sequence[str], which: str) -> pd.DataFrame:
        values = getattr(self, which)
        return pd.DataFrame([[values.get((layer, column), math.nan) for column in self.columns] for layer in layers],
                            index=pd.Index(layers, name='layer'), columns=self.columns)


def _score_suite(model, suite, layers: Sequence[str], cache: LayerFeatureCache, progress: bool) -> _ScoreTable:
    """Each benchmark run once per layer on a stand-in model that answers with that layer's cached features."""
    current = {'layer': layers[0]}
    candidate = PrecomputedModel(
        f'{model.identifier}:layer-mapping',
        lambda stimuli, trials: cache.features(stimuli, trials).assembly(current['layer']),
        model.visual_degrees())
    table = _ScoreTable()
    bar = tqdm(total=len(suite) * len(layers), desc='layer mapping', disable=not progress)
    for benchmark, region, from_id in suite:
        name = benchmark.identifier
        table.add_column(name, region)
        for layer in layers:
            current['layer'] = layer
            bar.set_postfix_str(f'{name} {layer}', refresh=False)
            score = _run_benchmark(benchmark, candidate, from_id)
            table.scores[layer, name], table.raws[layer, name], table.ceilings[name] = _score_values(score)
            bar.update(1)
    bar.close()
    return table


def _run_benchmark(benchmark, candidate, from_id: bool):
    """The benchmark's score; a Brain-Score benchmark loaded by id that fails says its data need the servers."""
    try:
        return benchmark(candidate)
    except VOneNetError:
        raise
    except Exception as error:
        if not from_id:
            raise
        raise DataError(f"Brain-Score benchmark {benchmark.identifier!r} failed ({type(error).__name__}: "
                        f"{str(error)[:300]}); its data come from Brain-Score's servers, so run where those can be "
                        f"reached") from error


def _score_v1_properties(model, layers: List[str], which, table: _ScoreTable, seed: int, progress: bool):
    """The V1 property suite on ``which`` layers (True: all) as a column of ``table``; returns the layers
    (those asked for added) and each layer's property results."""
    v1_layers = layers if which is True else list(which)
    unknown = [layer for layer in v1_layers if layer not in layers]
    if unknown:
        layers = _layers(model, [*layers, *unknown])
    logger.info('V1 property suite on %d layer(s); minutes per layer', len(v1_layers))
    results: Dict[str, List[dict]] = {}
    for layer in tqdm(v1_layers, desc='V1 properties', disable=not progress):
        results[layer] = _v1_property_results(model, layer, seed, progress)
        table.scores[layer, V1_PROPERTIES] = float(np.mean([r['score'] for r in results[layer]]))
        table.raws[layer, V1_PROPERTIES] = float(np.mean([r['raw'] for r in results[layer]]))
    table.add_column(V1_PROPERTIES, 'V1')
    table.ceilings[V1_PROPERTIES] = math.nan
    return layers, results
