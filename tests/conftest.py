import os

# Brain-Score must never pip-install or probe cloud metadata from the tests.
os.environ.setdefault('BS_INSTALL_DEPENDENCIES', 'no')
os.environ.setdefault('AWS_EC2_METADATA_DISABLED', 'true')
os.environ.setdefault('RESULTCACHING_DISABLE', '1')

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache so no test reads another's downloads or results."""
    home = tmp_path_factory.mktemp('vonenet-home')
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(home))
    return home


@pytest.fixture(scope='session')
def reference():
    from reference_vonenet import load_reference
    return load_reference()
