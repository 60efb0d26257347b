"""The one module that reads (or, scoped, replaces) Brain-Score's private attributes.

Part of the brain model (brain/): Brain-Score's ``PytorchWrapper`` keeps its extractor, network and batch
size in private members and offers no accessors; its extractor keeps its microsaccades, batch hooks and
resolution privately, its activation cache behind a decorated private method, and a property benchmark
its metric. Every other module asks here, so a Brain-Score upgrade that renames one of them breaks in this
file only (and ``tests/`` exercise each function against the installed Brain-Score). Our own subclasses
still override Brain-Score's private *methods* (``_get_batch_activations`` ...): that is the subclass
contract Brain-Score's extractor is written for, not a reach-in.
"""
from __future__ import annotations

import copy
from typing import Tuple


def extractor_of(activations_model, missing_ok: bool = False):
    """The ``ActivationsExtractorHelper`` inside a Brain-Score activations model (ours or stock); with
    ``missing_ok``, None for an activations model that has none."""
    # PytorchWrapper.__init__ stores it here; no public accessor
    return getattr(activations_model, '_extractor', None) if missing_ok else activations_model._extractor


def batch_size_of(activations_model) -> int:
    """How many images the activations model runs at once."""
    return extractor_of(activations_model)._batch_size  # ActivationsExtractorHelper's constructor argument


def network_of(activations_model, missing_ok: bool = False):
    """The ``torch.nn.Module`` a ``PytorchWrapper`` runs; with ``missing_ok``, None for a wrapper of
    anything else."""
    # PytorchWrapper.__init__ stores it here; no public accessor
    return getattr(activations_model, '_model', None) if missing_ok else activations_model._model


def microsaccades_of(extractor):
    """The extractor's ``MicrosaccadeHelper``: its trial count and the per-image shifts it records."""
    return extractor._microsaccade_helper  # ActivationsExtractorHelper.__init__ stores it here; no accessor


def batch_hooks_of(extractor) -> dict:
    """The hooks registered with ``register_batch_activations_hook``, which every batch passes through."""
    return extractor._batch_activations_hooks  # the registry of register_batch_activations_hook; no accessor


def resolution_of(extractor):
    """The input resolution the extractor's activation cache is keyed by (None when not probed yet)."""
    return getattr(extractor, '_resolution', None)  # set by from_paths after probing; no accessor


def activation_cache_store() -> Tuple[object, object]:
    """(result_caching's storage object, the undecorated function) behind Brain-Score's cached
    ``ActivationsExtractorHelper._from_paths_stored``, to compute the cache key and path of an entry."""
    from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper
    wrapper = ActivationsExtractorHelper._from_paths_stored  # the decorated method; its closure holds both
    cells = dict(zip(wrapper.__code__.co_freevars, (cell.cell_contents for cell in wrapper.__closure__ or ())))
    return cells['self'], cells['function']


class RecordingMetric:
    """Passes every call through to Brain-Score's metric; keeps the first (model vs primate) call."""

    def __init__(self, metric):
        self.metric, self.first_call = metric, None

    def __call__(self, model_property, data_property):
        if self.first_call is None:
            self.first_call = (model_property.copy(), data_property.copy())
        return self.metric(model_property, data_property)

    def __getattr__(self, name):
        return getattr(self.metric, name)


def observing_metric(benchmark) -> Tuple[object, RecordingMetric]:
    """(a copy of a property benchmark whose metric records its inputs, the recorder). The loaded benchmark
    is left as it is: Brain-Score's ``PropertiesBenchmark`` hands the model's property distribution only
    to its private ``_similarity_metric`` and offers no other way to see it (the figures need it)."""
    observed = copy.copy(benchmark)
    recorder = RecordingMetric(benchmark._similarity_metric)  # PropertiesBenchmark.__init__ stores it here
    observed._similarity_metric = recorder
    return observed, recorder
