"""Rebuild the V1 property assemblies of Marques et al. (2021) from the published histograms.

Part of V1 scoring (scoring/v1_properties/): ``registry`` serves these assemblies to Brain-Score.

The papers only report histograms, so Brain-Score's assemblies are samples drawn uniformly within
each bin (on a log axis where the paper's axis is logarithmic); every benchmark bins them again with
the same edges, so the scores and ceilings depend only on the counts, which these samples reproduce
exactly. The histograms live in ``published_histograms.json`` next to this module.
"""
import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from brainscore_core.supported_data_standards.brainio.assemblies import PropertyAssembly
from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet

from ...errors import DataError

HISTOGRAMS_FILE = Path(__file__).with_name('published_histograms.json')
# Brain-Score's packaging drew its samples from an unseeded global generator; any seed gives the same
# histograms, hence the same ceilings and scores. 0 is simply fixed for reproducibility.
DEFAULT_SEED = 0
REGION = 'V1'


@lru_cache(maxsize=1)
def _histograms() -> dict:
    try:
        data = json.loads(HISTOGRAMS_FILE.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f'Cannot read the published V1 histograms from {HISTOGRAMS_FILE} ({error}); '
                        f'reinstall vonenet-brainscore.') from error
    return {name: entry for name, entry in data.items() if not name.startswith('_')}


ASSEMBLY_NAMES = ('DeValois1982a', 'DeValois1982b', 'Schiller1976c', 'Cavanaugh2002a')


def _bins(spec) -> np.ndarray:
    if isinstance(spec, dict):
        start, stop, num = spec['linspace']
        return np.linspace(start, stop, int(num), endpoint=True)
    return np.asarray(spec, dtype=np.float64)


def _counts(spec: dict) -> np.ndarray:
    if 'counts' in spec:
        return np.asarray(spec['counts'], dtype=np.int64)
    return np.sum([np.asarray(component, dtype=np.int64) for component in spec['components'].values()], axis=0)


def published_histogram(name: str, property_name: str):
    """(counts, bin_edges) of one property as published."""
    entry = _entry(name)
    try:
        spec = entry['properties'][property_name]
    except KeyError:
        raise DataError(f'{name} has no property {property_name!r}; it has {sorted(entry["properties"])}') from None
    return _counts(spec), _bins(spec['bins'])


def _entry(name: str) -> dict:
    histograms = _histograms()
    if name not in histograms:
        raise DataError(f'No published V1 histograms named {name!r}; choose one of {sorted(histograms)}')
    return histograms[name]


def assembly_info(name: str) -> Dict[str, object]:
    """Brain-Score identifier, stimulus set, neuron count and property names of an assembly."""
    entry = _entry(name)
    return {'identifier': entry['identifier'], 'stimulus_set': entry['stimulus_set'],
            'n_neurons': entry['n_neurons'], 'properties': list(entry['properties'])}


def _sample(counts: np.ndarray, bins: np.ndarray, scale: str, n_neurons: int, rng) -> np.ndarray:
    """One column: NaN for neurons without a value, then values drawn uniformly in each bin, bin by bin."""
    if scale == 'binary':  # a yes/no property: the lower bin holds 0s, the upper 1s
        values = np.repeat([0.0, 1.0], counts)
    else:
        edges = np.log2(bins) if scale == 'log2' else bins
        lower = np.repeat(edges[:-1], counts)
        values = lower + rng.random(len(lower)) * np.repeat(np.diff(edges), counts)
        if scale == 'log2':
            values = 2 ** values
    if len(values) > n_neurons:
        raise DataError(f'Histogram holds {len(values)} neurons but the study reports {n_neurons}')
    return np.concatenate([np.full(n_neurons - len(values), np.nan), values])


def published_assembly(name: str, *, seed: int = DEFAULT_SEED,
                       stimulus_set: Optional[StimulusSet] = None) -> PropertyAssembly:
    """The PropertyAssembly Brain-Score loads as ``name`` (e.g. 'Cavanaugh2002a'), rebuilt offline.

    Carries ``<property>_bins`` and ``number_of_trials`` attributes as the benchmarks expect; the
    benchmarks also need ``stimulus_set`` (the set the responses are compared on) attached.
    """
    entry = _entry(name)
    rng = np.random.default_rng(seed)
    n_neurons = entry['n_neurons']
    properties = list(entry['properties'])
    columns, bins = [], {}
    for property_name in properties:
        spec = entry['properties'][property_name]
        bins[property_name] = _bins(spec['bins'])
        columns.append(_sample(_counts(spec), bins[property_name], spec['scale'], n_neurons, rng))
    assembly = PropertyAssembly(np.stack(columns, axis=1),
                                coords={'neuroid_id': ('neuroid', np.arange(n_neurons)),
                                        'region': ('neuroid', [REGION] * n_neurons),
                                        'neuronal_property': properties},
                                dims=['neuroid', 'neuronal_property'])
    assembly.name = entry['identifier']
    assembly.attrs['identifier'] = entry['identifier']
    assembly.attrs['number_of_trials'] = entry['number_of_trials']
    for property_name in properties:
        assembly.attrs[f'{property_name}_bins'] = bins[property_name]
    assembly.attrs['stimulus_set_identifier'] = entry['stimulus_set']
    assembly.attrs['stimulus_set'] = stimulus_set
    return assembly
