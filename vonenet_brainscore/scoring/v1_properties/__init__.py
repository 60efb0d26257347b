"""Offline data for Brain-Score's Marques et al. (2021) V1 single-neuron property benchmarks.

Part of scoring (scoring/v1_properties/): ``stimuli`` renders the grating sets, ``published_data`` the
primate assemblies, ``registry`` installs both into Brain-Score, ``screen`` serves them from memory and
``score`` runs the benchmarks; ``figures`` draws the results.

Seven of the 22 Marques2020 benchmarks compare models with published histograms on synthetic
gratings; both can be rebuilt locally, so after :func:`install_offline_data` they load and score
through Brain-Score's own benchmark classes without S3. The other fifteen need S3-only recordings.
The names below load their modules on first use (PEP 562), so importing this package stays light.
"""
from importlib import import_module

_LAZY = {
    **dict.fromkeys(('ASSEMBLY_NAMES', 'DEFAULT_SEED', 'published_assembly', 'published_histogram'),
                    'published_data'),
    **dict.fromkeys(('OFFLINE_BENCHMARKS', 'S3_ONLY_BENCHMARKS', 'benchmark_ids', 'install_offline_data',
                     'is_installed', 'uninstall_offline_data'), 'registry'),
    **dict.fromkeys(('STIMULUS_SET_NAMES', 'cache_root', 'generate_all', 'generate_stimulus_set',
                     'load_stimulus_set', 'render_grating', 'stimulus_metadata', 'stimulus_set_dir'), 'stimuli'),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f'.{_LAZY[name]}', __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
