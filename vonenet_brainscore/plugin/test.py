import json
from pathlib import Path

import pytest

import brainscore_vision

IDENTIFIERS = ['vonenet_resnet50', 'vonenet_resnet50_nonoise', 'vonenet_cornets', 'vonenet_cornets_nonoise',
               'vonenet_alexnet', 'vonenet_alexnet_nonoise', 'vonenet_resnet50_at', 'vonenet_resnet50_at_nonoise',
               'vonenet_resnet50_ns', 'vonenet_resnet50_ns_nonoise']


def test_package_knows_exactly_these_identifiers():
    from vonenet_brainscore.brain import IDENTIFIERS as PACKAGE_IDENTIFIERS
    assert sorted(PACKAGE_IDENTIFIERS) == sorted(IDENTIFIERS)


# The identifier is tagged '-untrained' when the published weights could not be loaded,
# so this test also fails when the model would be scored without its weights.
@pytest.mark.travis_slow
@pytest.mark.parametrize('identifier', IDENTIFIERS)
def test_has_identifier(identifier):
    model = brainscore_vision.load_model(identifier)
    assert model.identifier == identifier


@pytest.mark.travis_slow
@pytest.mark.parametrize('identifier', IDENTIFIERS)
def test_region_layer_map(identifier):
    model = brainscore_vision.load_model(identifier)
    expected = json.loads((Path(__file__).parent / 'region_layer_map' / f'{identifier}.json').read_text())
    assert model.commitment.region_layers == expected
