"""VOneNets (CNNs with a fixed-weight primate V1 front-end) as Brain-Score brain models.

Everything but the error classes loads on first use (PEP 562), so ``import vonenet_brainscore`` and the
command line's ``--help`` do not pay for torch and Brain-Score.
"""
from .errors import (CheckpointError, CommitmentError, DataError, SettingError, StimulusError, SubmissionError,
                     UnknownModelError, VOneNetError, WeightsUnavailableError)

from .dependencies import VERSION as __version__

_LAZY = {
    'build_backend': 'backends', 'list_backends': 'backends', 'register_backend': 'backends',
    'strip_stem': 'backends',
    'VOneNet': 'model', 'build_vonenet': 'model', 'vonenet_from_backend': 'model',
    'VOneBlock': 'vone', 'VOneBlockConfig': 'vone', 'sample_gabor_parameters': 'vone',
    'InputError': 'vone.inputs', 'InputTypeError': 'vone.inputs', 'NonFiniteInputError': 'vone.inputs',
    'CATALOGUE': 'published.catalogue', 'get_model': 'published.catalogue', 'list_models': 'published.catalogue', 'model_record': 'published.catalogue',
    'brain_model': 'brain.model', 'list_identifiers': 'published.naming', 'map_layers': 'scoring.mapping',
    'load_recordings': 'scoring.recordings', 'neural_benchmark': 'scoring.predictivity',
    'score_v1_properties': 'scoring.v1_properties.score', 'validate': 'training.imagenet', 'train': 'training.imagenet',
    'evaluate_robustness': 'robustness', 'pgd': 'robustness',
    'build_submission': 'submission', 'check_submission': 'submission',
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
