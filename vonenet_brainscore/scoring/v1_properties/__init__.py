"""Offline data for Brain-Score's Marques et al. (2021) V1 single-neuron property benchmarks.

Seven of the 22 Marques2020 benchmarks compare models with published histograms on synthetic
gratings; both can be rebuilt locally, so after :func:`install_offline_data` they load and score
through Brain-Score's own benchmark classes without S3. The other fifteen need S3-only recordings.
"""
from .published_data import (
    ASSEMBLY_NAMES, DEFAULT_SEED, published_assembly, published_histogram)
from .registry import (
    OFFLINE_BENCHMARKS, S3_ONLY_BENCHMARKS, benchmark_ids, install_offline_data, is_installed,
    uninstall_offline_data)
from .stimuli import (
    STIMULUS_SET_NAMES, cache_root, generate_all, generate_stimulus_set, load_stimulus_set, render_grating,
    stimulus_metadata, stimulus_set_dir)

__all__ = ['ASSEMBLY_NAMES', 'DEFAULT_SEED', 'OFFLINE_BENCHMARKS', 'S3_ONLY_BENCHMARKS', 'STIMULUS_SET_NAMES',
           'benchmark_ids', 'cache_root', 'generate_all', 'generate_stimulus_set', 'install_offline_data',
           'is_installed', 'load_stimulus_set', 'published_assembly', 'published_histogram', 'render_grating',
           'stimulus_metadata', 'stimulus_set_dir', 'uninstall_offline_data']
