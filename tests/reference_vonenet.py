"""The original VOneNet code, as vendored inside brainscore-vision, loaded as a stand-alone package.

It is the reference our models must match (tests) and race (benchmarks/). Loading it by path
(not through brainscore_vision's plugin package) avoids that plugin's import-time side effects.
"""
import importlib.util
import sys
from pathlib import Path

import brainscore_vision

REFERENCE_DIR = (Path(brainscore_vision.__file__).parent / 'models' / 'voneresnet_50_non_stochastic'
                 / 'vonenet' / 'vonenet')


def load_reference():
    name = '_reference_vonenet'
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REFERENCE_DIR / '__init__.py',
                                                  submodule_search_locations=[str(REFERENCE_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
