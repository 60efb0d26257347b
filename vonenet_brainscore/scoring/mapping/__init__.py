"""Layer-to-region mapping (in ``scoring/``, beside predictivity and the V1 property suite): every
candidate layer scored on every region's benchmarks.

``features`` records and reduces the layers, ``run`` (``map_layers``) scores them, ``result``
(``LayerMapping``) reads and writes the scores.

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

Names load on first use (PEP 562), so importing the package costs nothing.
"""
_LAZY = {
    'map_layers': 'run', 'network_order': 'run', 'V1_ALIASES': 'run',
    'LayerMapping': 'result', 'DegenerateScoreWarning': 'result', 'degenerate_reason': 'result',
    'DEGENERATE_MARK': 'result', 'SCORE_TOLERANCE': 'result', 'V1_PROPERTIES': 'result',
    'extract_features': 'features', 'principal_components': 'features', 'CountSketch': 'features',
    'LayerFeatures': 'features', 'LayerFeatureCache': 'features', 'MIN_FEATURES': 'features',
}
"""Public name -> the module of this package that defines it."""


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = list(_LAZY)
