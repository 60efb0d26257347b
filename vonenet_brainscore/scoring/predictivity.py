"""Neural predictivity on a user's recordings, with Brain-Score's own benchmark, metric and ceiling.

``neural_benchmark(recordings, 'IT')`` is a Brain-Score ``NeuralBenchmark``: it shows the stimuli to
a brain model (``start_recording`` + ``look_at``), maps the model's responses to the neurons with
cross-validated PLS or ridge regression (Brain-Score's ``pls``/``ridge`` metrics: Pearson r per
neuroid on held-out stimuli, median over neuroids, mean over splits) and normalises by the
split-half internal consistency of the repetitions (Spearman-Brown corrected), as Brain-Score
scores its own datasets: score = r^2 / ceiling. Any Brain-Score benchmark id works the same way
through ``load_brainscore_benchmark`` where Brain-Score can load its data. Part of ``scoring/``:
``recordings`` loads the data scored here, ``mapping`` runs these benchmarks on every layer.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from brainscore_core import Score
from brainscore_core.supported_data_standards.brainio.assemblies import (
    NeuroidAssembly, NeuronRecordingAssembly, walk_coords)
from brainscore_vision.benchmark_helpers.neural_common import NeuralBenchmark, average_repetition
from brainscore_vision.model_interface import BrainModel

from ..brain.commitments import recording_time_bins
from ..brainscore_env import offline_defaults
from ..errors import CommitmentError, DataError, StimulusError, VOneNetError

logger = logging.getLogger(__name__)

METRICS = ('pls', 'ridge')
DEFAULT_TIME_BIN = (70, 170)  # ms; Brain-Score's usual window for static images
MIN_STIMULI = 10              # 10-fold cross-validation needs at least one test stimulus per split


# --- preparing the recordings -------------------------------------------------------------------
def _rebuild(assembly, values, dims, drop=(), extra=None):
    """A NeuronRecordingAssembly with the same coords (minus ``drop``, plus ``extra``) over new values."""
    coords = {name: (coord_dims, values_) for name, coord_dims, values_ in walk_coords(assembly)
              if name not in drop and name not in dims and set(coord_dims) <= set(dims) and coord_dims}
    coords.update(extra or {})
    result = NeuronRecordingAssembly(values, coords=coords, dims=list(dims))
    result.attrs.update(assembly.attrs)
    return result


def _one_time_bin(assembly, time_bin: Optional[Tuple[int, int]]):
    """presentation x neuroid x time_bin with one bin: the chosen bin, the mean of all, or the default."""
    if 'time_bin' not in assembly.dims:
        start, end = time_bin or DEFAULT_TIME_BIN
        values = assembly.transpose('presentation', 'neuroid').values[..., None]
        return _rebuild(assembly, values, ('presentation', 'neuroid', 'time_bin'),
                        extra={'time_bin_start': ('time_bin', [start]), 'time_bin_end': ('time_bin', [end])})
    assembly = assembly.transpose('presentation', 'neuroid', 'time_bin')
    starts, ends = assembly['time_bin_start'].values, assembly['time_bin_end'].values
    if time_bin is not None:
        matches = np.flatnonzero((starts == time_bin[0]) & (ends == time_bin[1]))
        if not len(matches):
            raise DataError(f"time bin {tuple(time_bin)} is not in the recordings; bins: "
                            f"{', '.join(f'({s}, {e})' for s, e in zip(starts, ends))}")
        chosen = assembly.values[..., matches[:1]]
        start, end = time_bin
    else:
        if len(starts) > 1:
            logger.info('averaging %d time bins into one window (%s-%s ms); pass time_bin to pick one',
                        len(starts), starts.min(), ends.max())
        chosen = assembly.values.mean(axis=-1, keepdims=True)
        start, end = starts.min(), ends.max()
    return _rebuild(assembly, chosen, ('presentation', 'neuroid', 'time_bin'),
                    extra={'time_bin_start': ('time_bin', [start]), 'time_bin_end': ('time_bin', [end])})


def _with_stimulus_columns(assembly):
    """Stimulus set columns as presentation coords, as Brain-Score's loader merges them (a column with
    missing values is left out: NaN never equals NaN, so repetitions would not average together).
    Brain-Score averages repetitions by grouping over two or more coords, so one is added if needed."""
    stimulus_set = assembly.attrs['stimulus_set']
    present = {name for name, dims, _ in walk_coords(assembly) if dims == ('presentation',) and name != 'presentation'}
    table = stimulus_set.set_index(stimulus_set['stimulus_id'].astype(str))
    ids = np.asarray(assembly['stimulus_id'].values).astype(str)
    extra = {}
    for column in stimulus_set.columns:
        if column in present or column == 'stimulus_id' or table[column].isna().any():
            continue
        extra[column] = ('presentation', table[column].loc[ids].to_numpy())
    if len(present | set(extra)) - ('repetition' in present) < 2:
        order = {sid: i for i, sid in enumerate(table.index)}
        extra['stimulus_num'] = ('presentation', np.array([order[sid] for sid in ids]))
    if not extra:
        return assembly
    return _rebuild(assembly, assembly.values, assembly.dims, extra=extra)


def _per_stimulus_coords_only(assembly):
    """Drop presentation coords that differ between repetitions of a stimulus (e.g. trial times):
    Brain-Score averages repetitions over every other presentation coord."""
    frame = pd.DataFrame({name: np.asarray(values).astype(str) for name, dims, values in walk_coords(assembly)
                          if dims == ('presentation',) and name != 'presentation'})
    varying = [name for name in frame.columns if name not in ('stimulus_id', 'repetition')
               and (frame.groupby('stimulus_id')[name].nunique() > 1).any()]
    if varying:
        logger.info('dropping presentation coord(s) %s, which vary across repetitions', ', '.join(varying))
    return _rebuild(assembly, assembly.values, assembly.dims, drop=varying)


def _balanced_repetitions(assembly):
    """Only the repetition numbers every stimulus has: split halves must cover every stimulus."""
    frame = pd.DataFrame({'stimulus_id': assembly['stimulus_id'].values, 'repetition': assembly['repetition'].values})
    counts = frame.groupby('stimulus_id')['repetition'].apply(set)
    common = set.intersection(*counts.values)
    if len(common) < 2:
        return None
    keep = np.isin(frame['repetition'].values, sorted(common))
    if not keep.all():
        logger.info('ceiling from the %d repetitions every stimulus has (%d of %d presentations)',
                    len(common), int(keep.sum()), len(keep))
    return type(assembly)(assembly.isel(presentation=np.flatnonzero(keep)))


def region_recordings(recordings, region: str, time_bin: Optional[Tuple[int, int]] = None):
    """(repetition-level, repetition-averaged) presentation x neuroid assemblies of one region."""
    regions = list(dict.fromkeys(np.asarray(recordings['region'].values).astype(str)))
    if region not in regions:
        raise DataError(f"the recordings hold no neuroids of region {region!r}; their regions: {', '.join(regions)}")
    if getattr(recordings, 'stimulus_set', None) is None:
        raise DataError("the recordings carry no stimulus set; load them with "
                        "vonenet_brainscore.scoring.recordings.load_recordings(data, stimuli)")
    selected = recordings.isel(neuroid=np.flatnonzero(np.asarray(recordings['region'].values).astype(str) == region))
    selected = type(recordings)(selected)
    selected.attrs.update(recordings.attrs)
    selected = _one_time_bin(selected, time_bin)
    selected = _with_stimulus_columns(selected)
    selected = _per_stimulus_coords_only(selected)
    repeated = type(selected)(selected.squeeze('time_bin'))
    repeated.attrs.update(recordings.attrs)
    averaged = average_repetition(repeated)
    averaged = type(repeated)(averaged)
    averaged.attrs.update(recordings.attrs)
    if averaged.sizes['presentation'] < MIN_STIMULI:
        raise DataError(f"region {region}: {averaged.sizes['presentation']} stimuli are too few for "
                        f"cross-validated predictivity; record at least {MIN_STIMULI} (better 100+)")
    return repeated, averaged


def _metric(metric, splits: int, stratification_coord: Optional[str]):
    if not isinstance(metric, str):
        return metric  # a Brain-Score metric object: used as given
    if metric not in METRICS:
        raise DataError(f"unknown predictivity metric {metric!r}; use one of {', '.join(METRICS)} (Brain-Score's "
                        f"cross-validated PLS or ridge regression), or pass a Brain-Score metric object")
    from brainscore_vision import load_metric
    return load_metric(metric, crossvalidation_kwargs=dict(splits=splits, stratification_coord=stratification_coord))


def _ceiling(repeated, region: str) -> Callable[[], Score]:
    """Split-half internal consistency of the repetitions; 1 (no correction) without repetitions."""
    balanced = _balanced_repetitions(repeated)
    if balanced is None:
        def no_ceiling():
            logger.warning('region %s: no stimulus was shown twice, so there is no split-half ceiling; scores '
                           'are r^2 without ceiling correction', region)
            score = Score(1.)
            score.attrs['note'] = 'no repetitions: not ceiling-corrected'
            return score
        return functools.lru_cache(maxsize=None)(no_ceiling)
    from brainscore_vision import load_ceiling
    ceiler = load_ceiling('internal_consistency')
    # Brain-Score stores ceilings by benchmark identifier only when result caching is on: remember
    # it here too, so that scoring many layers computes it once.
    return functools.lru_cache(maxsize=None)(lambda: ceiler(balanced))


def neural_benchmark(recordings, region: str, metric: Union[str, object] = 'pls', *,
                     visual_degrees: float = 8., number_of_trials: int = 1,
                     time_bin: Optional[Tuple[int, int]] = None, splits: int = 10,
                     stratification_coord: Optional[str] = None, identifier: Optional[str] = None) -> NeuralBenchmark:
    """A Brain-Score NeuralBenchmark of one region of the user's recordings.

    ``recordings`` comes from ``load_recordings``. ``metric`` is 'pls' or 'ridge' (Brain-Score's
    cross-validated regression metrics) or a metric object. ``visual_degrees`` is how large the
    images were shown (Brain-Score rescales them to the model's field of view). Several time
    bins are averaged into one window unless ``time_bin=(start, end)`` picks one. Call it as
    ``benchmark(brain_model)``; the identifier carries a hash of the data, so result caches never
    mix datasets.
    """
    repeated, averaged = region_recordings(recordings, region, time_bin)
    similarity = _metric(metric, splits, stratification_coord)
    if stratification_coord is not None and \
            stratification_coord not in {name for name, dims, _ in walk_coords(averaged) if dims == ('presentation',)}:
        raise DataError(f"stratification coord {stratification_coord!r} is not a presentation coord of the "
                        f"recordings; add it or leave stratification off")
    metric_name = metric if isinstance(metric, str) else type(metric).__name__
    data_identifier = recordings.attrs.get('identifier', 'user-recordings')
    return NeuralBenchmark(identifier=identifier or f'{data_identifier}.{region}-{metric_name}', version=1,
                           assembly=averaged, similarity_metric=similarity, visual_degrees=visual_degrees,
                           number_of_trials=number_of_trials, ceiling_func=_ceiling(repeated, region),
                           parent=region, bibtex=None)


def load_brainscore_benchmark(identifier: str):
    """``brainscore_vision.load_benchmark(identifier)``, with an error that says why it failed."""
    import brainscore_vision
    try:
        with offline_defaults():
            return brainscore_vision.load_benchmark(identifier)
    except VOneNetError:
        raise
    except Exception as error:
        if isinstance(error, AssertionError) and 'No registrations' in str(error):
            raise DataError(f"unknown Brain-Score benchmark id {identifier!r}; ids look like 'MajajHong2015.IT-pls' "
                            f"(see brainscore_vision.benchmark_registry)") from None
        raise DataError(f"Brain-Score benchmark {identifier!r} could not be loaded ({type(error).__name__}: "
                        f"{str(error)[:300]}). Brain-Score benchmarks need their data from Brain-Score's servers: "
                        f"run where those can be reached, or score your own recordings (recordings + stimuli).") \
            from error


def benchmark_region(benchmark) -> Optional[str]:
    """The region a neural benchmark records from (its ``region``, else its parent), if any."""
    region = getattr(benchmark, 'region', None) or getattr(benchmark, 'parent', None)
    return str(region) if region is not None else None


# --- models that answer from precomputed responses ----------------------------------------------
class PrecomputedModel(BrainModel):
    """A BrainModel whose recordings come from a function of (stimuli, trials), e.g. cached features.

    It lets Brain-Score's benchmark code (screen placement, metric, ceiling) run unchanged on
    activations computed once and reused, instead of re-running the network per benchmark.
    """

    def __init__(self, identifier: str, responses: Callable, visual_degrees: float):
        self._identifier = identifier
        self._responses = responses
        self._visual_degrees = visual_degrees
        self.recording_region: Optional[str] = None
        self.recording_time_bins = None

    @property
    def identifier(self) -> str:
        return self._identifier

    def visual_degrees(self) -> float:
        return self._visual_degrees

    def start_task(self, task, *args, **kwargs):
        if task != BrainModel.Task.passive:
            raise CommitmentError(f"{self.identifier} answers neural recordings only (layer-to-region mapping "
                                  f"scores neural benchmarks); task {task} needs the full brain model")

    def start_recording(self, recording_target: str, time_bins: Sequence[Tuple[int, int]]):
        self.recording_region, self.recording_time_bins = recording_target, recording_time_bins(time_bins)

    def look_at(self, stimuli, number_of_trials: int = 1, require_variance: bool = False):
        if self.recording_region is None:
            raise CommitmentError("call start_recording(region, time_bins) before look_at")
        features = self._responses(stimuli, number_of_trials)
        return responses_for_stimuli(features, stimuli, self.recording_region, self.recording_time_bins)


def responses_for_stimuli(features, stimuli, region: str, time_bins) -> NeuroidAssembly:
    """``features`` (presentation x neuroid, by stimulus_id) in the stimulus set's order, with its
    columns as presentation coords (as Brain-Score's extractor attaches them)."""
    feature_ids = np.asarray(features['stimulus_id'].values).astype(str)
    position = {sid: i for i, sid in enumerate(feature_ids)}
    wanted = np.asarray(stimuli['stimulus_id'].values).astype(str)
    missing = [sid for sid in wanted if sid not in position]
    if missing:
        raise StimulusError(f"no precomputed responses to {len(missing)} stimulus id(s), e.g. "
                            f"{', '.join(map(repr, missing[:5]))}")
    features = features.transpose('presentation', 'neuroid')
    values = np.asarray(features.values)[[position[sid] for sid in wanted]]
    coords = {name: (dims, vals) for name, dims, vals in walk_coords(features) if dims == ('neuroid',)}
    coords['region'] = ('neuroid', np.array([region] * values.shape[1], dtype=object))
    for column in stimuli.columns:
        coords[column] = ('presentation', stimuli[column].values)
    coords['stimulus_id'] = ('presentation', np.asarray(stimuli['stimulus_id'].values))
    if sum(dims == ('presentation',) for dims, _ in coords.values()) < 2:  # brainio needs 2+ coords a dim
        coords['stimulus_num'] = ('presentation', np.arange(len(wanted)))
    if len(time_bins) == 1:
        return NeuroidAssembly(values, coords=coords, dims=['presentation', 'neuroid'])
    coords['time_bin_start'] = ('time_bin', [b[0] for b in time_bins])
    coords['time_bin_end'] = ('time_bin', [b[1] for b in time_bins])
    values = np.repeat(values[..., None], len(time_bins), axis=-1)  # feed-forward: same response per bin
    return NeuroidAssembly(values, coords=coords, dims=['presentation', 'neuroid', 'time_bin'])


# --- scoring ------------------------------------------------------------------------------------
def _benchmark(benchmark):
    return load_brainscore_benchmark(benchmark) if isinstance(benchmark, str) else benchmark


def score_activations(activations, benchmark, visual_degrees: float = 8.) -> Score:
    """Score precomputed responses (presentation x neuroid with ``stimulus_id``) on a neural benchmark.

    The responses must cover the benchmark's stimuli as the model would see them, i.e. images
    shown at the benchmark's visual degrees when ``visual_degrees`` equals them.
    """
    benchmark = _benchmark(benchmark)
    model = PrecomputedModel(f"precomputed-{activations.attrs.get('identifier', 'activations')}",
                             lambda stimuli, trials: activations, visual_degrees)
    return benchmark(model)


def score_layer(model, layer: str, benchmark, *, region: Optional[str] = None, pretrained: bool = True) -> Score:
    """Score one layer of a brain model as ``region`` (default: the benchmark's region).

    ``model`` is a Brain-Score identifier (built with ``brain_model``) or a ``VOneNetBrainModel``;
    the layer is committed to the region for this call only and the benchmark runs as usual.
    """
    from ..brain.model import brain_model
    benchmark = _benchmark(benchmark)
    region = region or benchmark_region(benchmark)
    if region is None:
        raise CommitmentError(f"benchmark {getattr(benchmark, 'identifier', benchmark)!r} names no region; pass "
                              f"region='V1'/'V4'/'IT'/...")
    if isinstance(model, str):
        candidate = brain_model(model, pretrained=pretrained, region_layers={region: layer})
    else:
        candidate = with_region_layer(model, region, layer)
    return benchmark(candidate)


def with_region_layer(model, region: str, layer: str):
    """The same VOneNetBrainModel (same network and extractor) with ``layer`` committed to ``region``."""
    from ..brain.model import VOneNetBrainModel
    commitment = model.commitment
    if layer not in dict(model.network.named_modules()):
        raise CommitmentError(f"{model.identifier} has no layer {layer!r}; candidate layers: "
                              f"{', '.join(commitment.candidate_layers)}")
    commitment = commitment.with_region_layers({region: layer})
    return VOneNetBrainModel(f'{model.identifier}[{region}={layer}]', model.activations_model, commitment)
