"""Locally generated Marques2020 stimulus sets: content, order, determinism and caching.

Expected values come from Brain-Score's packaging script (marques_gen_stim.py: parameter grids,
image formula) and its data tests (set sizes), recomputed here independently of the package.
"""
import os

os.environ.setdefault('AWS_EC2_METADATA_DISABLED', 'true')
os.environ.setdefault('BS_INSTALL_DEPENDENCIES', 'no')
os.environ.setdefault('RESULTCACHING_DISABLE', '1')

import hashlib  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from PIL import Image  # noqa: E402

from vonenet_brainscore.errors import StimulusError  # noqa: E402
from vonenet_brainscore.scoring.v1_properties import stimuli  # noqa: E402

# --- facts from marques_gen_stim.py -------------------------------------------------------------
DEGREES, SIZE_PX, BLANK_PX = 12, 672, 448
RADIUS = np.logspace(-3 + 0.75, 4 - 0.75, 12, endpoint=True, base=2) / 2
SF = np.logspace(-1.5 + 0.125, 4 - 0.125, 22, endpoint=True, base=2)
ORIENTATION = np.linspace(0, 165, 12, endpoint=True)
PHASE = np.linspace(0, 315, 8, endpoint=True)
POS, CONTRAST = np.array([0.5]), [1]
POS_RF = np.linspace(-2.5, 2.5, 21, endpoint=True)

PARAMETER_COLUMNS = ['position_y', 'position_x', 'contrast', 'radius', 'spatial_frequency', 'orientation', 'phase']
PACKAGING_COLUMNS = ['image_id', 'degrees'] + PARAMETER_COLUMNS + ['image_file_name']
GRATING_SETS = ['Marques2020_receptive_field', 'Marques2020_orientation', 'Marques2020_spatial_frequency',
                'Marques2020_size']
# sizes asserted by brainscore_vision/data/marques2020/test.py
BRAINSCORE_SIZES = {'Marques2020_blank': 1, 'Marques2020_receptive_field': 3528, 'Marques2020_orientation': 1152,
                    'Marques2020_spatial_frequency': 2112, 'Marques2020_size': 2304}


def _packaging_meshgrid(pos_y, pos_x, contrast, phase, orientation, sf, radius):
    """The packaging's table construction, verbatim in effect (columns y, x, c, r, sf, or, ph)."""
    return np.array(np.meshgrid(pos_y, pos_x, contrast, phase, orientation, sf, radius)).T.reshape(-1, 7)[
        :, [0, 1, 2, 6, 5, 4, 3]]


def _packaging_orientation_table():
    rows = []
    for multiple in [2, 3, 4]:
        for sf in SF[[4, 8, 12, 16]]:
            for orientation, phase in np.array(np.meshgrid(ORIENTATION, PHASE)).T.reshape(-1, 2):
                rows.append([POS[0], POS[0], CONTRAST[0], multiple / 2 / sf, sf, orientation, phase])
    return np.array(rows)


PACKAGING_TABLES = {
    'Marques2020_receptive_field': _packaging_meshgrid(POS_RF, POS_RF, CONTRAST, PHASE[[0, 4]],
                                                       ORIENTATION[[0, 3, 6, 9]], [3], [1 / 6]),
    'Marques2020_spatial_frequency': _packaging_meshgrid(POS, POS, CONTRAST, PHASE, ORIENTATION[[0, 2, 4, 6, 8, 10]],
                                                         SF, np.array([0.75, 2.25])),
    'Marques2020_size': _packaging_meshgrid(POS, POS, CONTRAST, PHASE, ORIENTATION[[0, 2, 4, 6, 8, 10]],
                                            SF[[4, 8, 12, 16]], RADIUS),
    'Marques2020_orientation': _packaging_orientation_table(),
}
GRID_SIZES = {'Marques2020_blank': 1,
              'Marques2020_receptive_field': len(POS_RF) ** 2 * 4 * 2,
              'Marques2020_orientation': 3 * 4 * len(ORIENTATION) * len(PHASE),
              'Marques2020_spatial_frequency': 2 * len(SF) * 6 * len(PHASE),
              'Marques2020_size': len(RADIUS) * 4 * 6 * len(PHASE)}


def reference_grating(position_y, position_x, contrast, radius, sf, orientation, phase, size_px=SIZE_PX):
    """Slow, straightforward rendering of the published grating formula (Grating class of the packaging)."""
    px_per_degree = size_px / DEGREES
    x = (np.arange(size_px) - size_px / 2) / px_per_degree - position_x
    y = (np.arange(size_px) - size_px / 2) / px_per_degree - position_y
    xv, yv = np.meshgrid(x, y)
    theta, phi = orientation / 180 * np.pi, phase / 180 * np.pi
    texture = np.sin((xv * np.cos(theta) + yv * np.sin(theta)) * sf * 2 * np.pi + phi) * contrast
    image = np.full((size_px, size_px), 128, dtype=np.uint8)
    mask = xv ** 2 + yv ** 2 <= radius ** 2
    image[mask] = np.uint8(((texture[mask] + 1) / 2) * 255)
    return image


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def shared_cache(tmp_path_factory):
    """All five sets generated once into a session-wide cache (test_v1_data.py reuses it)."""
    root = tmp_path_factory.getbasetemp() / 'vonenet-v1-cache'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('VONENET_BRAINSCORE_HOME', str(root))
        start = time.perf_counter()
        folders = stimuli.generate_all(progress=False)
        elapsed = time.perf_counter() - start
        print(f'\ngenerated/loaded all Marques2020 stimulus sets in {elapsed:.1f} s')  # shown with -s
        yield {'root': root, 'folders': folders, 'seconds': elapsed}


@pytest.fixture(scope='module')
def stimulus_sets(shared_cache):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('VONENET_BRAINSCORE_HOME', str(shared_cache['root']))
        yield {name: stimuli.load_stimulus_set(name, progress=False) for name in stimuli.STIMULUS_SET_NAMES}


def _as_activations(stimulus_set):
    """A model-response-shaped array carrying the set's metadata, as the benchmarks receive it."""
    coords = {column: ('presentation', stimulus_set[column].values) for column in PARAMETER_COLUMNS}
    return xr.DataArray(np.zeros((1, len(stimulus_set))), dims=['neuroid', 'presentation'], coords=coords)


def _table(stimulus_set):
    return stimulus_set[PARAMETER_COLUMNS].to_numpy(dtype=float)


# --- sizes, columns, values ----------------------------------------------------------------------
@pytest.mark.parametrize('name', list(BRAINSCORE_SIZES))
def test_sizes_match_parameter_grids_and_brainscore(stimulus_sets, name):
    assert GRID_SIZES[name] == BRAINSCORE_SIZES[name]
    assert len(stimulus_sets[name]) == BRAINSCORE_SIZES[name]
    assert stimulus_sets[name].identifier == name


@pytest.mark.parametrize('name', GRATING_SETS)
def test_columns_and_parameter_values_match_packaging(stimulus_sets, name):
    stimulus_set = stimulus_sets[name]
    assert set(PACKAGING_COLUMNS + ['stimulus_id']) <= set(stimulus_set.columns)
    assert (stimulus_set['degrees'] == DEGREES).all()
    ours = {tuple(row) for row in _table(stimulus_set)}
    theirs = {tuple(row) for row in PACKAGING_TABLES[name]}
    assert len(ours) == len(stimulus_set)  # no duplicate stimuli
    assert ours == theirs  # exactly the same floats, not merely close
    assert stimulus_set['stimulus_id'].is_unique
    assert (stimulus_set['image_id'] == stimulus_set['stimulus_id']).all()


def test_blank_set(stimulus_sets):
    blank = stimulus_sets['Marques2020_blank']
    assert list(blank['degrees']) == [DEGREES]
    image = np.asarray(Image.open(blank.get_stimulus(blank['stimulus_id'].iloc[0])))
    assert image.shape == (BLANK_PX, BLANK_PX)
    assert (image == 128).all()


# --- images --------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', GRATING_SETS)
def test_sample_images_equal_reference_formula(stimulus_sets, name):
    stimulus_set = stimulus_sets[name]
    rows = np.random.default_rng(len(name)).choice(len(stimulus_set), size=3, replace=False)
    for row in [0, len(stimulus_set) - 1, *rows]:
        record = stimulus_set.iloc[row]
        path = Path(stimulus_set.get_stimulus(record['stimulus_id']))
        assert path.suffix == '.png' and path.is_file()
        with Image.open(path) as image:
            assert image.size == (SIZE_PX, SIZE_PX)
            assert image.mode == 'L'
            pixels = np.asarray(image)
        expected = reference_grating(*[record[column] for column in PARAMETER_COLUMNS])
        np.testing.assert_array_equal(pixels, expected, err_msg=f'{name} row {row}')


def test_render_grating_matches_reference_off_centre():
    arguments = (-1.25, 2.0, 0.5, 3.3, 1.7, 37.0, 100.0)  # off-grid values, reduced contrast
    np.testing.assert_array_equal(stimuli.render_grating(*arguments), reference_grating(*arguments))


def test_file_names_unique_and_all_present(stimulus_sets, shared_cache):
    for name in GRATING_SETS:
        stimulus_set = stimulus_sets[name]
        paths = [Path(stimulus_set.get_stimulus(stimulus_id)) for stimulus_id in stimulus_set['stimulus_id']]
        assert len({path.name for path in paths}) == len(paths)
        assert {path.parent for path in paths} == {shared_cache['folders'][name]}
        assert {path.name for path in paths} == {p.name for p in shared_cache['folders'][name].glob('*.png')}


# --- row order ------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', GRATING_SETS)
def test_benchmark_order_check_accepts(stimulus_sets, name):
    from brainscore_vision.benchmark_helpers.properties_common import _assert_grating_activations
    _assert_grating_activations(_as_activations(stimulus_sets[name]))


def test_packaging_receptive_field_order_is_rejected_by_the_benchmark():
    """The check has teeth: the packaging's own grid order (x fastest) fails it."""
    from brainscore_vision.benchmark_helpers.properties_common import _assert_grating_activations
    table = PACKAGING_TABLES['Marques2020_receptive_field']
    coords = {column: ('presentation', table[:, i]) for i, column in enumerate(PARAMETER_COLUMNS)}
    activations = xr.DataArray(np.zeros((1, len(table))), dims=['neuroid', 'presentation'], coords=coords)
    with pytest.raises(AssertionError):
        _assert_grating_activations(activations)


def test_receptive_field_reshape_gives_position_grid(stimulus_sets):
    """map_receptive_field_locations reshapes to (y, x, rest): y must vary slowest, then x."""
    rf = stimulus_sets['Marques2020_receptive_field']
    y = rf['position_y'].to_numpy().reshape(len(POS_RF), len(POS_RF), -1)
    x = rf['position_x'].to_numpy().reshape(len(POS_RF), len(POS_RF), -1)
    assert (y == POS_RF[:, None, None]).all()
    assert (x == POS_RF[None, :, None]).all()


def test_orientation_order_recovers_preferred_orientation(stimulus_sets):
    """Responses of synthetic neurons tuned to known orientations go through the benchmark's own analysis."""
    from brainscore_vision.benchmarks.marques2020.benchmarks.devalois1982a_benchmark import devalois1982a_properties
    orientation_set = stimulus_sets['Marques2020_orientation']
    preferred = np.array([15.0, 60.0, 120.0])
    distance = np.abs(orientation_set['orientation'].to_numpy()[None, :] - preferred[:, None])
    distance = np.minimum(distance, 180 - distance)
    responses = _as_activations(orientation_set).isel(neuroid=[0, 0, 0]).copy(data=50 * np.exp(-(distance / 20) ** 2))
    baseline = xr.DataArray(np.zeros((3, 1)), dims=['neuroid', 'presentation'])
    result = devalois1982a_properties(model_identifier='synthetic', responses=responses, baseline=baseline)
    np.testing.assert_allclose(result.values[:, 0], preferred, atol=1.0)


def test_size_order_recovers_grating_summation_field(stimulus_sets):
    from brainscore_vision.benchmarks.marques2020.benchmarks.cavanaugh2002a_benchmark import cavanaugh2002_properties
    size_set = stimulus_sets['Marques2020_size']
    radius = size_set['radius'].to_numpy()
    peak = RADIUS[5]
    # rises to the peak radius, then suppressed to half at large radii; strongest at one frequency
    curve = np.where(radius <= peak, radius / peak, 0.5 + 0.5 * np.exp(-(radius - peak)))
    curve = curve * np.where(size_set['spatial_frequency'].to_numpy() == SF[8], 40, 10)
    responses = _as_activations(size_set).copy(data=curve[None, :])
    baseline = xr.DataArray(np.zeros((1, 1)), dims=['neuroid', 'presentation'])
    result = cavanaugh2002_properties(model_identifier='synthetic', responses=responses, baseline=baseline)
    values = dict(zip(result['neuronal_property'].values, result.values[0]))
    assert values['grating_summation_field'] == pytest.approx(2 * peak)
    assert values['surround_suppression_index'] == pytest.approx(0.5, abs=0.01)


# --- cache ---------------------------------------------------------------------------------------
def test_cache_folder_layout(shared_cache):
    for name, folder in shared_cache['folders'].items():
        assert folder.parent == shared_cache['root'] / 'v1_properties' / 'stimuli'
        assert folder.name.startswith(name + '-')
    assert not [p for p in (shared_cache['root'] / 'v1_properties' / 'stimuli').iterdir() if '.partial' in p.name]


def test_cache_is_reused(shared_cache, monkeypatch):
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(shared_cache['root']))
    folder = shared_cache['folders']['Marques2020_size']
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError('regenerated although cached')
    monkeypatch.setattr(stimuli, '_write_images', fail)
    loaded = stimuli.load_stimulus_set('Marques2020_size', progress=False)
    assert len(loaded) == BRAINSCORE_SIZES['Marques2020_size']
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_cache_location_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv('VONENET_BRAINSCORE_HOME', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert stimuli.stimulus_set_dir('Marques2020_blank').is_relative_to(tmp_path / 'xdg' / 'vonenet-brainscore')
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert stimuli.stimulus_set_dir('Marques2020_blank').is_relative_to(tmp_path / 'home' / '.cache')


def _digests(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_generation_is_deterministic(shared_cache, monkeypatch, tmp_path):
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path))
    again = stimuli.generate_stimulus_set('Marques2020_orientation', progress=False, workers=1)
    assert again.name == shared_cache['folders']['Marques2020_orientation'].name  # same parameter hash
    assert _digests(again) == _digests(shared_cache['folders']['Marques2020_orientation'])


def test_interrupted_generation_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path))
    written = []

    def flaky_save(image, path):
        if len(written) == 20:
            raise KeyboardInterrupt
        written.append(path)
        Image.fromarray(image).save(path)
    monkeypatch.setattr(stimuli, '_save_png', flaky_save)
    with pytest.raises(KeyboardInterrupt):
        stimuli.generate_stimulus_set('Marques2020_receptive_field', progress=False, workers=1)
    assert written and not any(path.exists() for path in written)
    assert list((tmp_path / 'v1_properties' / 'stimuli').iterdir()) == []


def test_damaged_cache_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path))
    folder = stimuli.generate_stimulus_set('Marques2020_blank', progress=False)
    next(folder.glob('*.png')).unlink()
    with pytest.raises(StimulusError, match='delete'):
        stimuli.load_stimulus_set('Marques2020_blank', progress=False)


def test_unknown_set_is_rejected():
    with pytest.raises(StimulusError):
        stimuli.stimulus_set_dir('Marques2020_nonexistent')
