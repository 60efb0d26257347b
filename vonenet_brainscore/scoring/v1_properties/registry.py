"""Point Brain-Score's Marques2020 data registries at the local stimuli and assemblies.

Brain-Score resolves ``load_dataset``/``load_stimulus_set`` through the dicts ``data_registry`` and
``stimulus_set_registry``, filled when the data plugin ``brainscore_vision.data.marques2020`` is
first imported with loaders that fetch SHA1-checked files from S3. That plugin is imported here
first, so its S3 loaders are registered, and then replaced; later imports are no-ops (Python caches
the module), so the local loaders stay in place. The benchmark classes themselves are unchanged.

Part of V1 scoring (scoring/v1_properties/). Installing the loaders also tells the brain model which
stimulus sets are now the generated ones (``brain.v1_window.recognise_property_stimuli``), so that it can
window its V1 recordings of them when Brain-Score's own entry points call it.
"""
import importlib
from functools import partial
from typing import Dict, Tuple

from ...brain.v1_window import PropertyStimuli, recognise_property_stimuli
from ...errors import VOneNetError
from . import published_data, stimuli

DATA_PLUGIN = 'brainscore_vision.data.marques2020'

OFFLINE_BENCHMARKS = (
    'Marques2020_DeValois1982-pref_or',
    'Marques2020_DeValois1982-peak_sf',
    'Marques2020_Schiller1976-sf_selective',
    'Marques2020_Schiller1976-sf_bandwidth',
    'Marques2020_Cavanaugh2002-grating_summation_field',
    'Marques2020_Cavanaugh2002-surround_diameter',
    'Marques2020_Cavanaugh2002-surround_suppression_index',
)
# These compare against recordings (Ringach 2002; Freeman, Ziemba et al. 2013) that exist only on
# Brain-Score's S3, so they cannot be rebuilt from published numbers.
S3_ONLY_BENCHMARKS = (
    'Marques2020_Ringach2002-circular_variance',
    'Marques2020_Ringach2002-or_bandwidth',
    'Marques2020_Ringach2002-orth_pref_ratio',
    'Marques2020_Ringach2002-or_selective',
    'Marques2020_Ringach2002-cv_bandwidth_ratio',
    'Marques2020_Ringach2002-opr_cv_diff',
    'Marques2020_Ringach2002-max_dc',
    'Marques2020_Ringach2002-modulation_ratio',
    'Marques2020_FreemanZiemba2013-texture_modulation_index',
    'Marques2020_FreemanZiemba2013-abs_texture_modulation_index',
    'Marques2020_FreemanZiemba2013-texture_selectivity',
    'Marques2020_FreemanZiemba2013-texture_sparseness',
    'Marques2020_FreemanZiemba2013-texture_variance_ratio',
    'Marques2020_FreemanZiemba2013-max_texture',
    'Marques2020_FreemanZiemba2013-max_noise',
)

_MARK = '_vonenet_offline'  # attribute set on our loader functions, to recognise them in the registries
_replaced: Dict[Tuple[str, str], object] = {}  # (registry, key) -> Brain-Score's original loader


def benchmark_ids(which: str = 'offline') -> Tuple[str, ...]:
    """Marques2020 benchmark identifiers: 'offline' (runnable here), 's3' (need S3 data) or 'all'."""
    choices = {'offline': OFFLINE_BENCHMARKS, 's3': S3_ONLY_BENCHMARKS, 'all': OFFLINE_BENCHMARKS + S3_ONLY_BENCHMARKS}
    if which not in choices:
        raise VOneNetError(f'benchmark_ids(which={which!r}): choose one of {sorted(choices)}')
    return choices[which]


def _load_stimuli(name: str, progress: bool):
    return stimuli.load_stimulus_set(name, progress=progress)


def _load_assembly(name: str, seed: int, progress: bool):
    stimulus_set = stimuli.load_stimulus_set(published_data.assembly_info(name)['stimulus_set'], progress=progress)
    return published_data.published_assembly(name, seed=seed, stimulus_set=stimulus_set)


def _marked(function, **settings):
    loader = partial(function, **settings)
    setattr(loader, _MARK, settings)
    return loader


def _registries():
    plugin = importlib.import_module(DATA_PLUGIN)  # registers Brain-Score's S3 loaders, exactly once per process
    return {'stimulus_set_registry': plugin.stimulus_set_registry, 'data_registry': plugin.data_registry}


def install_offline_data(*, seed: int = published_data.DEFAULT_SEED, progress: bool = True) -> Tuple[str, ...]:
    """Make ``brainscore_vision.load_benchmark`` serve the seven offline benchmarks from local data.

    Idempotent; calling again with another ``seed`` swaps the assemblies. Stimuli are generated
    lazily, on the first load of each set, into the cache (see :func:`stimuli.cache_root`).
    Returns the benchmark identifiers that now run offline.
    """
    registries = _registries()
    wanted = {('stimulus_set_registry', name): _marked(_load_stimuli, name=name, progress=progress)
              for name in stimuli.STIMULUS_SET_NAMES}
    wanted.update({('data_registry', name): _marked(_load_assembly, name=name, seed=seed, progress=progress)
                   for name in published_data.ASSEMBLY_NAMES})
    for (registry_name, key), loader in wanted.items():
        registry = registries[registry_name]
        current = registry.get(key)
        if current is not None and not hasattr(current, _MARK):
            _replaced[(registry_name, key)] = current
        registry[key] = loader
    recognise_property_stimuli(PropertyStimuli(serves=_serves_generated, receptive_field=stimuli.RECEPTIVE_FIELD,
                                               opt_out=f'{OPT_OUT_VARIABLE}=s3'))
    return OFFLINE_BENCHMARKS


def uninstall_offline_data():
    """Restore Brain-Score's own (S3) loaders replaced by :func:`install_offline_data`."""
    registries = _registries()
    for (registry_name, key), original in list(_replaced.items()):
        registries[registry_name][key] = original
        del _replaced[(registry_name, key)]


def serves_stimulus_set(name: str) -> bool:
    """Whether Brain-Score's registry currently loads stimulus set ``name`` with our local loader."""
    return hasattr(_registries()['stimulus_set_registry'].get(name), _MARK)


def _serves_generated(name: str) -> bool:
    """Whether ``name`` is one of the generated sets and Brain-Score's registry now loads it from them."""
    return name in stimuli.STIMULUS_SET_NAMES and serves_stimulus_set(name)


def is_installed() -> bool:
    """Whether every local loader is currently registered."""
    data = _registries()['data_registry']
    return all(serves_stimulus_set(name) for name in stimuli.STIMULUS_SET_NAMES) \
        and all(hasattr(data.get(name), _MARK) for name in published_data.ASSEMBLY_NAMES)


OPT_OUT_VARIABLE = 'VONENET_BRAINSCORE_V1_DATA'
"""``s3``: the locally installed plugin leaves Brain-Score's S3 loaders in place (see below)."""


def register_for_local_plugin() -> Tuple[str, ...]:
    """Called by the LOCALLY installed model plugin (``vonenet-brainscore plugin install``) when Brain-Score
    imports it, so that ``brainscore_vision.score(<our id>, <offline Marques2020 id>)`` and
    ``python -m brainscore_vision score ...`` run the seven offline benchmarks with no network.

    Why the model plugin, and not a data plugin of our own: Brain-Score's ``load_dataset`` and
    ``load_stimulus_set`` call ``import_plugin`` every time, and ``ImportPlugin.locate_plugin``
    (brainscore_core/plugin_management/import_plugin.py) scans every ``brainscore_vision/data/*/__init__.py``
    for the literal ``data_registry['<id>']`` and asserts ``plugin_registrations_count == 1`` ("More than one
    registration found"). A second data folder registering ``DeValois1982a`` etc. would make every
    Marques2020 benchmark fail for every model. ``brainscore_vision._run_score`` calls ``load_model``
    before ``load_benchmark``, so our model plugin is imported first: :func:`install_offline_data` then
    imports Brain-Score's own ``brainscore_vision.data.marques2020`` (its S3 loaders register once) and
    replaces only the entries of the seven offline benchmarks' data; ``import_plugin``'s later
    ``__import__`` of that plugin is a no-op (the module is cached), so ours stay. The other fifteen
    Marques2020 benchmarks keep Brain-Score's S3 loaders.

    The submission zip (``vonenet-brainscore submission``, for brain-score.org) never calls this: the
    website must score against Brain-Score's real S3 data. ``VONENET_BRAINSCORE_V1_DATA=s3`` keeps the S3
    loaders for a local install too. Returns the benchmarks that now run offline (none when opted out).
    """
    import os
    if os.environ.get(OPT_OUT_VARIABLE, '').strip().lower() == 's3':
        return ()
    return install_offline_data()
