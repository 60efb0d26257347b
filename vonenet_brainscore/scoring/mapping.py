"""Layer-to-region mapping: every candidate layer scored on every region's benchmarks.

Cost and memory. The network runs once per stimulus set for the whole layer set (one forward
pass per batch records every layer and stops after the deepest); each layer is then reduced and
the reduced features serve every benchmark and region on those stimuli. Brain-Score's layer
selection reduces big layers to 1000 principal components fitted on ImageNet images; here they are
fitted on the stimuli themselves:

- a layer with at most ``n_components`` features is used as is (as Brain-Score does);
- a bigger layer is kept whole while the layers kept so far fit ``max_memory_gb``, then projected
  on its principal components over the stimuli (computed from the images' Gram matrix). With no
  more stimuli than ``n_components + 1`` this is an exact rotation, so PLS and ridge scores equal
  those on the full layer;
- layers that do not fit are streamed: each batch is count-sketched (a fixed sparse random
  projection that preserves inner products on average) to ``sketch_dim`` features, then reduced
  the same way. Memory: ``stimuli x sketch_dim`` floats per layer.

Peak memory is about ``max_memory_gb`` plus one batch of every layer's activations. The offline
V1 property suite (``include_v1_properties``) runs its own stimuli per layer through the full
brain model: about 3 minutes for the VOneBlock with Brain-Score's result caching on, far more for
deep layers (the whole network on ~9000 images), so it is opt-in and can be limited to a few layers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..brain.commitments import UnknownLayerError, layer_hint
from ..errors import CommitmentError, DataError, VOneNetError
from ..brain.extraction import split_time_step
from .predictivity import (PrecomputedModel, benchmark_region, load_brainscore_benchmark, neural_benchmark)

logger = logging.getLogger(__name__)

V1_PROPERTIES = 'V1-properties'
# A ceiled score is a fraction of the ceiling; beyond this rounding margin outside [0, 1] it is not one.
SCORE_TOLERANCE = 5e-4
DEGENERATE_MARK = '!'
V1_ALIASES = ('v1-properties', 'v1_properties', 'marques2020', V1_PROPERTIES)
MIN_FEATURES = 25  # Brain-Score's PLS fits 25 components; fewer features (few stimuli) are zero-padded


# --- principal components -----------------------------------------------------------------------
def principal_components(features: np.ndarray, n_components: int) -> Tuple[np.ndarray, float]:
    """Scores of the rows on their leading principal components, and the variance they explain.

    Computed from the smaller of the Gram (stimuli x stimuli) and covariance matrices, in float64
    chunks of at most 64 MB, so a layer with millions of features never gets a float64 copy.
    """
    n, d = features.shape
    mean = features.mean(axis=0, dtype=np.float64)
    if n <= d:
        chunk = max(256, (1 << 26) // (8 * n))
        gram = np.zeros((n, n))
        for start in range(0, d, chunk):
            block = features[:, start:start + chunk].astype(np.float64) - mean[start:start + chunk]
            gram += block @ block.T
        values, vectors = np.linalg.eigh(gram)
        values, vectors = values[::-1], vectors[:, ::-1]
        keep = _keep(values, n_components)
        scores = vectors[:, :keep] * np.sqrt(np.maximum(values[:keep], 0))
    else:
        chunk = max(64, (1 << 26) // (8 * d))
        covariance = np.zeros((d, d))
        for start in range(0, n, chunk):
            block = features[start:start + chunk].astype(np.float64) - mean
            covariance += block.T @ block
        values, vectors = np.linalg.eigh(covariance)
        values, vectors = values[::-1], vectors[:, ::-1]
        keep = _keep(values, n_components)
        scores = np.empty((n, keep))
        for start in range(0, n, chunk):
            scores[start:start + chunk] = (features[start:start + chunk].astype(np.float64) - mean) @ vectors[:, :keep]
    total = values[values > 0].sum()
    explained = float(values[:keep].clip(0).sum() / total) if total > 0 else 0.
    return scores.astype(np.float32), explained


def _keep(values: np.ndarray, n_components: int) -> int:
    """Components with non-negligible variance (a constant layer keeps one, all zeros)."""
    if values[0] <= 0:
        return 1
    return max(1, min(n_components, int((values > values[0] * 1e-10).sum())))


class CountSketch:
    """A fixed sparse random projection (each feature to one of ``dim`` outputs with a random sign):
    inner products are preserved on average, and projecting a batch costs one pass over it."""

    def __init__(self, features: int, dim: int, seed: int):
        from scipy import sparse
        rng = np.random.default_rng(seed)
        buckets = rng.integers(0, dim, size=features)
        signs = rng.choice(np.array([-1., 1.], dtype=np.float32), size=features)
        self.matrix = sparse.csr_matrix((signs, (np.arange(features), buckets)), shape=(features, dim),
                                        dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch @ self.matrix, dtype=np.float32)


# --- features, once per stimulus set ------------------------------------------------------------
@dataclass
class LayerFeatures:
    """One stimulus set's reduced activations of every layer, and how each was reduced."""

    stimulus_ids: List[str]
    features: Dict[str, np.ndarray] = field(repr=False)
    info: Dict[str, dict]

    def assembly(self, layer: str):
        from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
        values = self.features[layer]
        count = values.shape[1]
        return NeuroidAssembly(values, dims=['presentation', 'neuroid'], coords={
            'stimulus_id': ('presentation', np.asarray(self.stimulus_ids, dtype=object)),
            'stimulus_num': ('presentation', np.arange(len(self.stimulus_ids))),  # brainio needs 2+ coords a dim
            'neuroid_id': ('neuroid', np.array([f'{layer}.{i}' for i in range(count)], dtype=object)),
            'layer': ('neuroid', np.array([layer] * count, dtype=object)),
            'neuroid_num': ('neuroid', np.arange(count))})


def _plan(sizes: Dict[str, int], images: int, n_components: int, max_bytes: float) -> Dict[str, str]:
    """'raw' (small), 'pca' (kept whole, then PCA) or 'sketch' (streamed) per layer, smallest first."""
    plan, used = {}, 0.
    for layer in sorted(sizes, key=sizes.get):
        need = 4. * images * sizes[layer]
        if sizes[layer] <= n_components:
            plan[layer] = 'raw'
            used += need
        elif used + need <= max_bytes:
            plan[layer] = 'pca'
            used += need
        else:
            plan[layer] = 'sketch'
    return plan


def extract_features(activations_model, stimulus_set, layers: Sequence[str], *, n_components: int = 1000,
                     max_memory_gb: float = 2., sketch_dim: Optional[int] = None, number_of_trials: int = 1,
                     progress: bool = True) -> LayerFeatures:
    """Every layer's features for a stimulus set from one pass of the network (see the module doc)."""
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    ids = [str(sid) for sid in stimulus_set['stimulus_id']]
    paths = [str(stimulus_set.get_stimulus(sid)) for sid in stimulus_set['stimulus_id']]
    extractor = activations_model._extractor
    batch_size = extractor._batch_size
    sketch_dim = sketch_dim or 4 * n_components
    window = getattr(activations_model, 'v1_window', None)
    if window is not None:  # a V1 window records only part of the VOneBlock: map the whole layer
        activations_model.set_v1_window(None)
    stored: Dict[str, np.ndarray] = {}
    sketches: Dict[str, CountSketch] = {}
    plan: Dict[str, str] = {}
    sizes: Dict[str, int] = {}
    try:
        with activations_model.trials(number_of_trials):
            bar = tqdm(total=len(paths), desc='layer activations', unit='image', disable=not progress)
            for start in range(0, len(paths), batch_size):
                batch = activations_model.get_activations(extractor.preprocess(paths[start:start + batch_size]),
                                                          list(layers))
                if not plan:
                    sizes = {layer: int(np.prod(values.shape[1:])) for layer, values in batch.items()}
                    plan = _plan(sizes, len(paths), n_components, max_memory_gb * 2 ** 30)
                    for layer in layers:
                        width = sketch_dim if plan[layer] == 'sketch' else sizes[layer]
                        stored[layer] = np.empty((len(paths), width), dtype=np.float32)
                        if plan[layer] == 'sketch':
                            sketches[layer] = CountSketch(sizes[layer], sketch_dim, zlib.crc32(layer.encode()))
                    logger.info('layer features: %s', ', '.join(f'{l} {sizes[l]} ({plan[l]})' for l in layers))
                for layer, values in batch.items():
                    flat = values.reshape(values.shape[0], -1)
                    rows = slice(start, start + flat.shape[0])
                    stored[layer][rows] = sketches[layer](flat) if layer in sketches else flat
                del batch
                bar.update(min(batch_size, len(paths) - start))
            bar.close()
    finally:
        if window is not None:
            activations_model.set_v1_window(window)
    features, info = {}, {}
    for layer in tqdm(list(layers), desc='layer principal components', disable=not progress):
        values = stored.pop(layer)
        if plan[layer] == 'raw':
            features[layer], explained = values, 1.
        else:
            features[layer], explained = principal_components(values, n_components)
        info[layer] = {'features': sizes[layer], 'components': int(features[layer].shape[1]),
                       'reduction': plan[layer], 'explained_variance': round(explained, 6)}
        if features[layer].shape[1] < MIN_FEATURES:  # few stimuli: keep PLS's 25 components well defined
            padding = np.zeros((len(ids), MIN_FEATURES - features[layer].shape[1]), dtype=np.float32)
            features[layer] = np.concatenate([features[layer], padding], axis=1)
        if plan[layer] == 'sketch':
            info[layer]['sketch_dim'] = sketch_dim
        del values
    return LayerFeatures(ids, features, info)


class LayerFeatureCache:
    """Features per stimulus set (and trial count), computed on first use and reused by every benchmark."""

    def __init__(self, activations_model, layers: Sequence[str], progress: bool = True, **settings):
        self.activations_model = activations_model
        self.layers = list(layers)
        self.progress = progress
        self.settings = settings
        self._cache: Dict[tuple, LayerFeatures] = {}
        self.extractions = 0

    def _key(self, stimuli, trials: int) -> tuple:
        ids = tuple(str(s) for s in stimuli['stimulus_id'])
        paths = tuple(str(stimuli.get_stimulus(s)) for s in stimuli['stimulus_id'])
        digest = hashlib.sha1(repr((ids, paths)).encode()).hexdigest()
        return getattr(stimuli, 'identifier', None), digest, trials

    def features(self, stimuli, number_of_trials: int = 1) -> LayerFeatures:
        trials = number_of_trials if self.activations_model.stochastic else 1
        key = self._key(stimuli, trials)
        if key not in self._cache:
            logger.info('extracting %d layers for %d stimuli (%s)', len(self.layers), len(stimuli), key[0])
            self._cache[key] = extract_features(self.activations_model, stimuli, self.layers,
                                                number_of_trials=trials, progress=self.progress, **self.settings)
            self.extractions += 1
        return self._cache[key]


# --- the mapping --------------------------------------------------------------------------------
class DegenerateScoreWarning(UserWarning):
    """A layer's score on a region cannot be read as a fraction of the ceiling, so it is no candidate
    for the best layer: a negative correlation (r^2 / ceiling turns it positive), a ceiling <= 0 or
    NaN, or a score outside [0, 1]."""


def degenerate_reason(score: float, raw: float, ceiling: float, ceiled: bool = True) -> Optional[str]:
    """Why a (ceiled score, raw score, ceiling) triple is degenerate, or None when it reads normally.

    ``ceiled``: the column divides by a ceiling (False for the V1 property mean, ceiled per benchmark).
    A score that was not computed (NaN with no ceiling problem) is missing, not degenerate.
    """
    reasons = []
    if ceiled and ceiling is not None and not pd.isna(ceiling) and ceiling <= 0:
        reasons.append(f'ceiling {ceiling:.3g} <= 0')
    elif ceiled and (ceiling is None or pd.isna(ceiling)) and not (pd.isna(score) and pd.isna(raw)):
        reasons.append('ceiling is NaN')
    if raw is not None and not pd.isna(raw) and raw < 0:
        reasons.append(f'negative correlation (raw {raw:.3f}; r^2 / ceiling would count it as positive)')
    if score is not None and not pd.isna(score) and (not np.isfinite(score) or score < -SCORE_TOLERANCE
                                                      or score > 1 + SCORE_TOLERANCE):
        reasons.append(f'score {score:.3g} outside [0, 1]')
    return '; '.join(reasons) or None


@dataclass
class LayerMapping:
    """Scores of every layer (rows) on every benchmark (columns), with what is needed to read them."""

    model: str
    scores: pd.DataFrame          # ceiled scores (Brain-Score's r^2 / ceiling for neural benchmarks)
    raw: pd.DataFrame             # raw scores (median Pearson r for neural benchmarks)
    ceilings: Dict[str, float]
    regions: Dict[str, Optional[str]]   # benchmark -> region
    committed: Dict[str, str]           # region -> committed layer
    metric: str = 'pls'
    layer_info: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # stimulus set -> layer -> info
    v1_properties: Dict[str, List[dict]] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return self.scores

    def region_scores(self) -> pd.DataFrame:
        """layer x region: the mean over each region's benchmarks."""
        columns = {}
        for benchmark, region in self.regions.items():
            columns.setdefault(region or benchmark, []).append(benchmark)
        return pd.DataFrame({region: self.scores[names].mean(axis=1) for region, names in columns.items()})

    def degenerate(self) -> Dict[Tuple[str, str], str]:
        """``{(layer, benchmark): reason}`` for every score that cannot be read as a fraction of the
        ceiling (see ``degenerate_reason``); these are left out of the best-layer choice."""
        found = {}
        for benchmark in self.scores.columns:
            ceiling = self.ceilings.get(benchmark, math.nan)
            for layer in self.scores.index:
                reason = degenerate_reason(self.scores.loc[layer, benchmark], self.raw.loc[layer, benchmark]
                                           if benchmark in self.raw.columns else math.nan, ceiling,
                                           ceiled=benchmark != V1_PROPERTIES)
                if reason:
                    found[layer, benchmark] = reason
        return found

    def _region_of(self, benchmark: str) -> str:
        return self.regions.get(benchmark) or benchmark

    def degenerate_messages(self) -> List[str]:
        """One line per (layer, region) with a degenerate score, naming the benchmark and why."""
        by_region: Dict[Tuple[str, str], List[str]] = {}
        for (layer, benchmark), reason in self.degenerate().items():
            by_region.setdefault((layer, self._region_of(benchmark)), []).append(f'{benchmark}: {reason}')
        return [f"layer {layer!r} on region {region}: {'; '.join(notes)}; left out of the best-layer choice"
                for (layer, region), notes in by_region.items()]

    def best_layers(self) -> pd.DataFrame:
        """Per region: the best-scoring layer next to the committed one, with both scores.

        A layer with a degenerate score on any of the region's benchmarks (``degenerate``) is no
        candidate; ``excluded_layers`` names those layers.
        """
        rows = []
        per_region = self.region_scores()
        excluded: Dict[str, List[str]] = {}
        for layer, benchmark in self.degenerate():
            names = excluded.setdefault(self._region_of(benchmark), [])
            if layer not in names:
                names.append(layer)
        for region in per_region.columns:
            column = per_region[region]
            committed = self.committed.get(region)
            candidates = column.drop(index=[layer for layer in excluded.get(region, []) if layer in column.index])
            best = candidates.idxmax() if candidates.notna().any() else None
            rows.append({'region': region, 'best_layer': best,
                         'best_score': float(column[best]) if best is not None else math.nan,
                         'committed_layer': committed,
                         'committed_score': float(column[committed]) if committed in column.index else math.nan,
                         'benchmarks': ', '.join(b for b, r in self.regions.items() if (r or b) == region),
                         'excluded_layers': ', '.join(excluded.get(region, []))})
        return pd.DataFrame(rows).set_index('region')

    def formatted_scores(self, digits: int = 3) -> pd.DataFrame:
        """The score table as text, degenerate scores marked with a trailing ``!`` (see ``degenerate``)."""
        degenerate = self.degenerate()
        return pd.DataFrame(
            [[('n/a' if pd.isna(value) else f'{value:.{digits}f}')
              + (f' {DEGENERATE_MARK}' if (layer, benchmark) in degenerate else '')
              for benchmark, value in row.items()] for layer, row in self.scores.iterrows()],
            index=self.scores.index, columns=self.scores.columns)

    def as_dict(self) -> dict:
        def clean(frame):
            return {layer: {b: (None if pd.isna(v) else float(v)) for b, v in row.items()}
                    for layer, row in frame.iterrows()}
        best = self.best_layers().reset_index()
        return {'model': self.model, 'metric': self.metric, 'layers': list(self.scores.index),
                'benchmarks': [{'identifier': b, 'region': self.regions[b],
                                'ceiling': None if pd.isna(self.ceilings.get(b, math.nan)) else self.ceilings[b]}
                               for b in self.scores.columns],
                'scores': clean(self.scores), 'raw': clean(self.raw),
                'best_layers': json.loads(best.to_json(orient='records')),
                'committed': self.committed, 'layer_info': self.layer_info, 'v1_properties': self.v1_properties,
                'degenerate': [{'layer': layer, 'benchmark': benchmark, 'region': self._region_of(benchmark),
                                'reason': reason} for (layer, benchmark), reason in self.degenerate().items()]}

    def to_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    def to_csv(self, path) -> Path:
        """The layer x benchmark table of ceiled scores (rows in network order)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.scores.rename_axis('layer').to_csv(path)
        return path

    def plot_heatmap(self, path, title: Optional[str] = None) -> Path:
        """Layers (rows, network order) x benchmarks; boxes mark each column's best layer, * the committed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
        values = self.scores.to_numpy(dtype=float)
        layers, benchmarks = list(self.scores.index), list(self.scores.columns)
        flagged = self.degenerate()
        degenerate = np.array([[(layer, benchmark) in flagged for benchmark in benchmarks]
                               for layer in layers], dtype=bool).reshape(values.shape)
        readable = np.where(degenerate, np.nan, values)  # degenerate cells: grey, hatched, never the best
        figure = Figure(figsize=(max(5., 2.6 + 1.3 * len(benchmarks)), 1.8 + 0.32 * len(layers)))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        finite = readable[np.isfinite(readable)]
        vmax = max(float(finite.max()) if finite.size else 1., 1e-6)
        image = axes.imshow(np.ma.masked_invalid(readable), aspect='auto', cmap='viridis', vmin=0, vmax=vmax)
        axes.set_xticks(range(len(benchmarks)))
        axes.set_xticklabels(benchmarks, rotation=30, ha='right', fontsize=8)
        axes.set_yticks(range(len(layers)))
        axes.set_yticklabels(layers, fontsize=8)
        for col, benchmark in enumerate(benchmarks):
            committed = self.committed.get(self.regions.get(benchmark) or '')
            column = readable[:, col]
            for row in range(len(layers)):
                value = values[row, col]
                text = 'n/a' if np.isnan(value) else f'{value:.2f}'
                if degenerate[row, col]:
                    text += DEGENERATE_MARK
                    axes.add_patch(Rectangle((col - .5, row - .5), 1, 1, facecolor='0.75', edgecolor='0.45',
                                             hatch='///', linewidth=0))
                if layers[row] == committed:
                    text += '*'
                axes.text(col, row, text, ha='center', va='center', fontsize=7,
                          color='black' if degenerate[row, col] or (np.isfinite(value) and value > 0.6 * vmax)
                          else 'white')
            if np.isfinite(column).any():
                best = int(np.nanargmax(column))
                axes.add_patch(Rectangle((col - .5, best - .5), 1, 1, fill=False, edgecolor='red', linewidth=2))
        figure.colorbar(image, ax=axes, label='score (ceiled)')
        legend = 'red box: best layer, *: committed layer'
        if degenerate.any():
            legend += f'\n{DEGENERATE_MARK} grey: degenerate, never best (r < 0, ceiling <= 0 or NaN, or outside [0, 1])'
        axes.set_title(title or f'{self.model}\n{legend}', fontsize=8)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
        return path

    def save(self, directory) -> Dict[str, Path]:
        """layer_mapping.csv, layer_mapping.json and layer_mapping.png in ``directory``."""
        directory = Path(directory)
        return {'csv': self.to_csv(directory / 'layer_mapping.csv'),
                'json': self.to_json(directory / 'layer_mapping.json'),
                'heatmap': self.plot_heatmap(directory / 'layer_mapping.png')}


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
    from ..brain.model import VOneNetBrainModel
    from .v1_properties.score import score_brain_model, v1_window_for
    commitment = replace(model.commitment, region_layers={**model.commitment.region_layers, 'V1': layer},
                         time_bins=None if model.commitment.time_bins is None else
                         {r: b for r, b in model.commitment.time_bins.items() if r != 'V1'})
    activations = model.activations_model
    # Property results are cached per model identifier: name the layer in it.
    candidate = VOneNetBrainModel(f'{activations.settings_identifier},V1={layer}', activations, commitment)
    previous = activations.v1_window
    window = v1_window_for(candidate)
    activations.set_v1_window(window)
    try:
        return [result.as_dict() for result in score_brain_model(candidate, ['v1-properties'], seed=seed,
                                                                 progress=progress)]
    finally:
        activations.set_v1_window(previous)


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
    layers on those only (minutes per layer, see the module doc). ``n_components``,
    ``max_memory_gb`` and ``sketch_dim`` bound memory (see the module doc).
    """
    from ..brain.model import brain_model
    from .recordings import load_recordings

    benchmarks = list(benchmarks or ())
    if any(isinstance(b, str) and b in V1_ALIASES for b in benchmarks):
        benchmarks = [b for b in benchmarks if not (isinstance(b, str) and b in V1_ALIASES)]
        include_v1_properties = include_v1_properties or True
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

    suite: List[Tuple[object, Optional[str], bool]] = []  # (benchmark, region, from Brain-Score id)
    if recordings is not None:
        regions = list(dict.fromkeys(np.asarray(recordings['region'].values).astype(str)))
        for region in regions:
            suite.append((neural_benchmark(recordings, region, metric, visual_degrees=visual_degrees,
                                           time_bin=time_bin), region, False))
    for benchmark in benchmarks:
        loaded = load_brainscore_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
        suite.append((loaded, benchmark_region(loaded), isinstance(benchmark, str)))

    cache = LayerFeatureCache(model.activations_model, layers, progress=progress, n_components=n_components,
                              max_memory_gb=max_memory_gb, sketch_dim=sketch_dim)
    current = {'layer': layers[0]}
    candidate = PrecomputedModel(
        f'{model.identifier}:layer-mapping',
        lambda stimuli, trials: cache.features(stimuli, trials).assembly(current['layer']),
        model.visual_degrees())

    columns, scores, raws, ceilings, regions_of = [], {}, {}, {}, {}
    bar = tqdm(total=len(suite) * len(layers), desc='layer mapping', disable=not progress)
    for benchmark, region, from_id in suite:
        name = benchmark.identifier
        columns.append(name)
        regions_of[name] = region
        for layer in layers:
            current['layer'] = layer
            bar.set_postfix_str(f'{name} {layer}', refresh=False)
            try:
                score = benchmark(candidate)
            except VOneNetError:
                raise
            except Exception as error:
                if not from_id:
                    raise
                raise DataError(f"Brain-Score benchmark {name!r} failed ({type(error).__name__}: {str(error)[:300]}); "
                                f"its data come from Brain-Score's servers, so run where those can be reached") \
                    from error
            scores[layer, name], raws[layer, name], ceilings[name] = _score_values(score)
            bar.update(1)
    bar.close()

    v1_results: Dict[str, List[dict]] = {}
    if include_v1_properties:
        v1_layers = layers if include_v1_properties is True else list(include_v1_properties)
        unknown = [layer for layer in v1_layers if layer not in layers]
        if unknown:
            layers = _layers(model, [*layers, *unknown])
        logger.info('V1 property suite on %d layer(s); minutes per layer', len(v1_layers))
        for layer in tqdm(v1_layers, desc='V1 properties', disable=not progress):
            v1_results[layer] = _v1_property_results(model, layer, seed, progress)
            scores[layer, V1_PROPERTIES] = float(np.mean([r['score'] for r in v1_results[layer]]))
            raws[layer, V1_PROPERTIES] = float(np.mean([r['raw'] for r in v1_results[layer]]))
        columns.append(V1_PROPERTIES)
        regions_of[V1_PROPERTIES] = 'V1'
        ceilings[V1_PROPERTIES] = math.nan

    def frame(values):
        return pd.DataFrame([[values.get((layer, column), math.nan) for column in columns] for layer in layers],
                            index=pd.Index(layers, name='layer'), columns=columns)
    layer_info = {f'{key[0] or "stimuli"}-{key[1][:8]}': {
        layer: {**info, 'stimuli': len(features.stimulus_ids)} for layer, info in features.info.items()}
        for key, features in cache._cache.items()}
    mapping = LayerMapping(model=model.identifier, scores=frame(scores), raw=frame(raws), ceilings=ceilings,
                           regions=regions_of, committed=dict(model.commitment.region_layers),
                           metric=metric if isinstance(metric, str) else type(metric).__name__,
                           layer_info=layer_info, v1_properties=v1_results)
    for message in mapping.degenerate_messages():
        warnings.warn(message, DegenerateScoreWarning, stacklevel=2)
    return mapping
