"""VOneNets (CNNs with a fixed-weight primate V1 front-end) as Brain-Score brain models."""
from .backends import build_backend, list_backends, register_backend, strip_stem
from .errors import (CheckpointError, CommitmentError, DataError, SettingError, StimulusError, SubmissionError,
                     UnknownModelError, VOneNetError, WeightsUnavailableError)
from .vone.inputs import InputError, InputTypeError, NonFiniteInputError
from .model import VOneNet, build_vonenet, vonenet_from_backend
from .vone import VOneBlock, VOneBlockConfig, sample_gabor_parameters
from .zoo import CATALOGUE, get_model, list_models, model_record

__version__ = '0.1.0'

# Brain-Score is heavy to import: the brain-model API loads on first use.
_LAZY = {'brain_model': 'brain', 'list_identifiers': 'brain', 'map_layers': 'mapping',
         'load_recordings': 'recordings', 'neural_benchmark': 'predictivity',
         'score_v1_properties': 'v1_properties.score', 'validate': 'imagenet', 'train': 'imagenet',
         'evaluate_robustness': 'robustness', 'pgd': 'robustness'}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ['VOneBlock', 'VOneBlockConfig', 'VOneNet', 'build_vonenet', 'vonenet_from_backend',
           'sample_gabor_parameters', 'get_model', 'list_models', 'model_record', 'CATALOGUE',
           'build_backend', 'list_backends', 'register_backend', 'strip_stem',
           'VOneNetError', 'UnknownModelError', 'WeightsUnavailableError', 'CheckpointError',
           'CommitmentError', 'StimulusError', 'DataError', 'SettingError', 'SubmissionError', 'InputError',
           'InputTypeError', 'NonFiniteInputError'] + list(_LAZY)
