"""VOneNets (CNNs with a fixed-weight primate V1 front-end) as Brain-Score brain models."""
from .backends import build_backend, list_backends, register_backend, strip_stem
from .errors import (CheckpointError, CommitmentError, DataError, StimulusError, UnknownModelError,
                     VOneNetError, WeightsUnavailableError)
from .model import VOneNet, build_vonenet, vonenet_from_backend
from .vone import VOneBlock, VOneBlockConfig, sample_gabor_parameters
from .zoo import CATALOGUE, get_model, list_models, model_record

__version__ = '0.1.0'

__all__ = ['VOneBlock', 'VOneBlockConfig', 'VOneNet', 'build_vonenet', 'vonenet_from_backend',
           'sample_gabor_parameters', 'get_model', 'list_models', 'model_record', 'CATALOGUE',
           'build_backend', 'list_backends', 'register_backend', 'strip_stem',
           'VOneNetError', 'UnknownModelError', 'WeightsUnavailableError', 'CheckpointError',
           'CommitmentError', 'StimulusError', 'DataError']
