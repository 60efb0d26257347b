"""VOneNets (CNNs with a fixed-weight primate V1 front-end) as Brain-Score brain models.

The public API, on the top floor beside ``cli``: each name below lives in the module of the pipeline
that owns it (``vone/`` and ``backends/`` -> ``model`` -> ``published/`` -> ``brain/`` -> ``scoring/``,
``training/``, ``robustness/`` -> ``submission/``). Everything but the error classes loads on first use
(PEP 562), so ``import vonenet_brainscore`` and the command line's ``--help`` do not pay for torch and
Brain-Score.
"""
from .errors import (CheckpointError, CommitmentError, DataError, SettingError, StimulusError, SubmissionError,
                     UnknownModelError, VOneNetError, WeightsUnavailableError)

from .dependencies import VERSION as __version__

_LAZY = {
    # backends: the package itself, whose import registers the built-in back-ends
    'build_backend': 'backends', 'list_backends': 'backends', 'register_backend': 'backends',
    'strip_stem': 'backends',
    'VOneNet': 'model', 'build_vonenet': 'model', 'vonenet_from_backend': 'model',
    'VOneBlock': 'vone.block', 'VOneBlockConfig': 'vone.block', 'sample_gabor_parameters': 'vone.params',
    'InputError': 'vone.inputs', 'InputTypeError': 'vone.inputs', 'NonFiniteInputError': 'vone.inputs',
    'CATALOGUE': 'published.catalogue', 'get_model': 'published.catalogue', 'list_models': 'published.catalogue',
    'model_record': 'published.catalogue', 'list_identifiers': 'published.naming',
    'brain_model': 'brain.model',
    'map_layers': 'scoring.mapping.run', 'load_recordings': 'scoring.recordings',
    'neural_benchmark': 'scoring.predictivity', 'score_v1_properties': 'scoring.v1_properties.score',
    'validate': 'training.evaluate', 'train': 'training.train',
    'evaluate_robustness': 'robustness.evaluate', 'pgd': 'robustness.attacks',
    'build_submission': 'submission', 'check_submission': 'submission.website',
}
"""Public name -> the module (relative to this package) that defines it."""


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ['VOneNetError', 'UnknownModelError', 'WeightsUnavailableError', 'CheckpointError', 'CommitmentError',
           'StimulusError', 'DataError', 'SettingError', 'SubmissionError', '__version__'] + list(_LAZY)
