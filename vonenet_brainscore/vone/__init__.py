"""The VOneBlock: Gabor parameters, filter bank and V1 cell model."""
from .block import NOISE_MODES, VOneBlock, VOneBlockConfig
from .filters import GaborFilterBank, gabor_kernels
from .inputs import InputError, InputTypeError, NonFiniteInputError
from .params import GaborParameters, sample_gabor_parameters

__all__ = ['NOISE_MODES', 'VOneBlock', 'VOneBlockConfig', 'GaborFilterBank', 'gabor_kernels',
           'GaborParameters', 'sample_gabor_parameters', 'InputError', 'InputTypeError', 'NonFiniteInputError']
