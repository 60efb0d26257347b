"""Our layer packaging builds the same assembly as Brain-Score's, for every layer shape."""
import numpy as np
import pytest

from brainscore_vision.model_helpers.activations.core import ActivationsExtractorHelper

from vonenet_brainscore.brain.model import brain_model


@pytest.fixture(scope='module')
def extractor():
    return brain_model('vonenet_alexnet_nonoise', pretrained=False).activations_model._extractor


def _same_value(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


@pytest.mark.parametrize('shape', [(3, 16, 5, 7), (3, 10), (3, 4, 6), (3, 2, 3, 4, 5), (3, 2, 2, 2, 2, 2)])
@pytest.mark.parametrize('runs', [1, 2])
def test_packaging_equals_brainscore(extractor, shape, runs):
    paths = [f'/stimuli/image{i}.png' for i in range(shape[0])]
    helper = extractor._microsaccade_helper
    for path in paths:
        helper.microsaccades['pixels'][path] = [(0.5 * run, -0.5 * run) for run in range(runs)]
        helper.microsaccades['degrees'][path] = [(0.1 * run, -0.1 * run) for run in range(runs)]
    helper.number_of_trials = runs
    values = np.random.default_rng(0).random((shape[0] * runs,) + shape[1:]).astype(np.float32)
    ours = extractor._package_layer(values, 'features.5', paths, require_variance=runs > 1)
    stock = ActivationsExtractorHelper._package_layer(extractor, values, 'features.5', paths, require_variance=runs > 1)
    helper.number_of_trials = 1
    assert type(ours) is type(stock) and ours.dims == stock.dims
    np.testing.assert_array_equal(ours.values, stock.values)
    assert set(ours.coords) == set(stock.coords)
    for dim in ('presentation', 'neuroid'):
        assert list(ours.indexes[dim].names) == list(stock.indexes[dim].names)
        assert all(_same_value(a, b) for a, b in zip(ours[dim].values, stock[dim].values))
    for name in stock.coords:
        if name in ('presentation', 'neuroid'):
            continue
        assert ours[name].dtype.kind == stock[name].dtype.kind, name
        np.testing.assert_array_equal(ours[name].values, stock[name].values, err_msg=name)
    # selections by coordinate, as benchmarks make them, pick the same neuroids
    if 'channel' in stock.coords and len(shape) > 2:
        np.testing.assert_array_equal(ours.sel(channel=1).values, stock.sel(channel=1).values)
    picked = stock['neuroid_id'].values[[0, -1]]
    np.testing.assert_array_equal(ours.isel(neuroid=ours['neuroid_id'].isin(picked).values).values,
                                  stock.isel(neuroid=stock['neuroid_id'].isin(picked).values).values)


def test_packaging_refuses_a_row_count_that_does_not_fit(extractor):
    with pytest.raises(ValueError, match='3 activation rows for 2 stimuli'):
        extractor._package_layer(np.zeros((3, 4), np.float32), 'features.5', ['/a.png', '/b.png'])
