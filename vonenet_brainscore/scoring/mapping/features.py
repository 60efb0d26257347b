"""Layer features for the mapping: every layer's activations for a stimulus set from one pass of the
network, each reduced (kept, principal components, or count-sketched then reduced) as the package
docstring explains, and cached per stimulus set for every benchmark that shows it.
"""
from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ...brain.brainscore_access import batch_size_of, extractor_of

logger = logging.getLogger(__name__)

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


@dataclass
class _Recording:
    """Where each layer's rows go while the batches stream in: the plan, made from the first batch."""

    images: int
    layers: Sequence[str]
    n_components: int
    max_bytes: float
    sketch_dim: int
    sizes: Dict[str, int] = field(default_factory=dict)
    plan: Dict[str, str] = field(default_factory=dict)
    stored: Dict[str, np.ndarray] = field(default_factory=dict)
    sketches: Dict[str, CountSketch] = field(default_factory=dict)

    def add(self, start: int, batch: Dict[str, np.ndarray]) -> None:
        if not self.plan:
            self._allocate(batch)
        for layer, values in batch.items():
            flat = values.reshape(values.shape[0], -1)
            rows = slice(start, start + flat.shape[0])
            self.stored[layer][rows] = self.sketches[layer](flat) if layer in self.sketches else flat

    def _allocate(self, batch: Dict[str, np.ndarray]) -> None:
        self.sizes = {layer: int(np.prod(values.shape[1:])) for layer, values in batch.items()}
        self.plan = _plan(self.sizes, self.images, self.n_components, self.max_bytes)
        for layer in self.layers:
            sketched = self.plan[layer] == 'sketch'
            width = self.sketch_dim if sketched else self.sizes[layer]
            self.stored[layer] = np.empty((self.images, width), dtype=np.float32)
            if sketched:
                self.sketches[layer] = CountSketch(self.sizes[layer], self.sketch_dim, zlib.crc32(layer.encode()))
        logger.info('layer features: %s', ', '.join(f'{l} {self.sizes[l]} ({self.plan[l]})' for l in self.layers))


def _record(activations_model, paths: List[str], layers: Sequence[str], recording: _Recording,
            number_of_trials: int, progress: bool) -> None:
    """One pass of the network over ``paths`` in batches, every layer at once, into ``recording``. A V1
    window records only part of the VOneBlock, so it is lifted meanwhile: the whole layer is mapped."""
    extractor, batch_size = extractor_of(activations_model), batch_size_of(activations_model)
    with activations_model.windowed(None), activations_model.trials(number_of_trials):
        bar = tqdm(total=len(paths), desc='layer activations', unit='image', disable=not progress)
        for start in range(0, len(paths), batch_size):
            batch = activations_model.get_activations(extractor.preprocess(paths[start:start + batch_size]),
                                                      list(layers))
            recording.add(start, batch)
            del batch
            bar.update(min(batch_size, len(paths) - start))
        bar.close()


def _reduce(recording: _Recording, layer: str, n_stimuli: int) -> Tuple[np.ndarray, dict]:
    """A layer's features as kept or on their principal components (zero-padded to MIN_FEATURES), and how."""
    values = recording.stored.pop(layer)
    plan = recording.plan[layer]
    if plan == 'raw':
        features, explained = values, 1.
    else:
        features, explained = principal_components(values, recording.n_components)
    info = {'features': recording.sizes[layer], 'components': int(features.shape[1]), 'reduction': plan,
            'explained_variance': round(explained, 6)}
    if features.shape[1] < MIN_FEATURES:  # few stimuli: keep PLS's 25 components well defined
        padding = np.zeros((n_stimuli, MIN_FEATURES - features.shape[1]), dtype=np.float32)
        features = np.concatenate([features, padding], axis=1)
    if plan == 'sketch':
        info['sketch_dim'] = recording.sketch_dim
    return features, info


def extract_features(activations_model, stimulus_set, layers: Sequence[str], *, n_components: int = 1000,
                     max_memory_gb: float = 2., sketch_dim: Optional[int] = None, number_of_trials: int = 1,
                     progress: bool = True) -> LayerFeatures:
    """Every layer's features for a stimulus set from one pass of the network (see the package doc)."""
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    ids = [str(sid) for sid in stimulus_set['stimulus_id']]
    paths = [str(stimulus_set.get_stimulus(sid)) for sid in stimulus_set['stimulus_id']]
    recording = _Recording(len(paths), layers, n_components, max_memory_gb * 2 ** 30, sketch_dim or 4 * n_components)
    _record(activations_model, paths, layers, recording, number_of_trials, progress)
    features, info = {}, {}
    for layer in tqdm(list(layers), desc='layer principal components', disable=not progress):
        features[layer], info[layer] = _reduce(recording, layer, len(ids))
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

    def layer_info(self) -> Dict[str, Dict[str, dict]]:
        """``{stimulus set (identifier-digest): {layer: how it was reduced, and over how many stimuli}}``
        for every stimulus set extracted so far."""
        return {f'{key[0] or "stimuli"}-{key[1][:8]}': {
            layer: {**info, 'stimuli': len(features.stimulus_ids)} for layer, info in features.info.items()}
            for key, features in self._cache.items()}
