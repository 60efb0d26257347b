"""User recordings: NetCDF + stimuli round trip, and every check the loader makes."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from brainscore_core.supported_data_standards.brainio.assemblies import NeuronRecordingAssembly

from vonenet_brainscore.errors import DataError, StimulusError
from vonenet_brainscore.scoring.recordings import load_recordings, load_stimuli, save_recordings, save_stimuli_csv


def _images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in range(n):
        path = folder / f's{i}.png'
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype('uint8')).save(path)
        paths[f's{i}'] = path
    return paths


def _array(ids, repetitions=2, neuroids=3, time_bins=False, seed=0, extra_presentation=None):
    rng = np.random.default_rng(seed)
    stimulus_id = [sid for _ in range(repetitions) for sid in ids]
    shape = (len(stimulus_id), neuroids) + ((2,) if time_bins else ())
    coords = {'stimulus_id': ('presentation', stimulus_id),
              'repetition': ('presentation', [r for r in range(repetitions) for _ in ids]),
              'neuroid_id': ('neuroid', [f'n{i}' for i in range(neuroids)]),
              'region': ('neuroid', ['V1'] * (neuroids - 1) + ['IT']),
              **(extra_presentation or {})}
    dims = ['presentation', 'neuroid']
    if time_bins:
        dims.append('time_bin')
        coords.update(time_bin_start=('time_bin', [50, 100]), time_bin_end=('time_bin', [100, 150]))
    return NeuronRecordingAssembly(rng.normal(size=shape), coords=coords, dims=dims)


@pytest.fixture
def dataset(tmp_path):
    paths = _images(tmp_path / 'images', 6)
    csv = save_stimuli_csv(paths, tmp_path / 'stimuli.csv', columns={'category': list('aabbcc')})
    return tmp_path, paths, csv


def _write_raw(array, path):
    """A NetCDF written with plain xarray (no checks), for data the writer would not produce."""
    array = array.reset_index(list(array.indexes)) if array.indexes else array
    xr.DataArray(array).to_netcdf(path)
    return path


def test_round_trip_keeps_values_coords_and_resolves_relative_paths(dataset):
    folder, paths, csv = dataset
    original = _array(list(paths), repetitions=3, time_bins=True,
                      extra_presentation={'session': ('presentation', np.arange(18) // 6)})
    save_recordings(original, folder / 'rec.nc')
    assert pd.read_csv(csv)['stimulus_path'].iloc[0] == 'images/s0.png'  # stored relative to the CSV

    loaded = load_recordings(folder / 'rec.nc', csv)
    assert loaded.dims == ('presentation', 'neuroid', 'time_bin')
    np.testing.assert_allclose(loaded.values, original.values)
    for coord in ('stimulus_id', 'repetition', 'session', 'neuroid_id', 'region', 'time_bin_start'):
        assert list(loaded[coord].values) == list(original[coord].values), coord
    stimulus_set = loaded.stimulus_set
    assert list(stimulus_set['stimulus_id']) == list(paths)
    assert list(stimulus_set['category']) == list('aabbcc')
    for sid, path in paths.items():
        assert stimulus_set.get_stimulus(sid) == str(path.resolve())
    assert stimulus_set.identifier.startswith('user-stimuli-')
    assert loaded.attrs['identifier'].startswith('user-')


def test_identifiers_follow_content(dataset):
    folder, paths, csv = dataset
    save_recordings(_array(list(paths)), folder / 'rec.nc')
    first = load_recordings(folder / 'rec.nc', csv)
    again = load_recordings(folder / 'rec.nc', csv)
    assert first.stimulus_set.identifier == again.stimulus_set.identifier
    assert first.attrs['identifier'] == again.attrs['identifier']
    Image.fromarray(np.zeros((8, 8, 3), dtype='uint8')).save(paths['s2'])  # one image changes
    changed = load_recordings(folder / 'rec.nc', csv)
    assert changed.stimulus_set.identifier != first.stimulus_set.identifier
    assert changed.attrs['identifier'] != first.attrs['identifier']
    save_recordings(_array(list(paths), seed=1), folder / 'rec.nc')  # the responses change
    assert load_recordings(folder / 'rec.nc', csv).attrs['identifier'] != changed.attrs['identifier']


def test_image_folder_as_stimuli_and_repetitions_numbered_in_order(dataset):
    folder, paths, _ = dataset
    array = _array(list(paths), repetitions=2)
    array = xr.DataArray(array.values, dims=['presentation', 'neuroid'], coords={
        'stimulus_id': ('presentation', array['stimulus_id'].values),
        'neuroid_id': ('neuroid', array['neuroid_id'].values), 'region': ('neuroid', array['region'].values)})
    _write_raw(array, folder / 'rec.nc')
    loaded = load_recordings(folder / 'rec.nc', folder / 'images')
    assert list(loaded['repetition'].values) == [0] * 6 + [1] * 6
    assert sorted(loaded.stimulus_set['stimulus_id']) == sorted(paths)


def test_extra_images_are_left_out_of_the_stimulus_set(dataset):
    folder, paths, csv = dataset
    save_recordings(_array(list(paths)[:4]), folder / 'rec.nc')
    loaded = load_recordings(folder / 'rec.nc', csv)
    assert list(loaded.stimulus_set['stimulus_id']) == list(paths)[:4]


def test_missing_data_file(dataset):
    folder, _, csv = dataset
    with pytest.raises(DataError, match='does not exist'):
        load_recordings(folder / 'nothing.nc', csv)


def test_unreadable_data_file(dataset):
    folder, _, csv = dataset
    (folder / 'broken.nc').write_text('not netcdf')
    with pytest.raises(DataError, match='cannot read'):
        load_recordings(folder / 'broken.nc', csv)


def test_missing_stimuli(dataset):
    folder, paths, _ = dataset
    save_recordings(_array(list(paths)), folder / 'rec.nc')
    with pytest.raises(StimulusError, match='do not exist'):
        load_recordings(folder / 'rec.nc', folder / 'nothing.csv')


def test_ids_without_an_image_are_named(dataset):
    folder, paths, csv = dataset
    save_recordings(_array([*paths, 'extra1', 'extra2']), folder / 'rec.nc')
    with pytest.raises(StimulusError, match=r"2 stimulus id\(s\).*'extra1', 'extra2'"):
        load_recordings(folder / 'rec.nc', csv)


def test_ids_that_do_not_match_at_all(dataset):
    folder, paths, csv = dataset
    save_recordings(_array([f'image-{i}' for i in range(6)]), folder / 'rec.nc')
    with pytest.raises(StimulusError, match='none of the 6 stimulus ids'):
        load_recordings(folder / 'rec.nc', csv)


def test_listed_image_file_that_does_not_exist(dataset):
    folder, paths, csv = dataset
    save_recordings(_array(list(paths)), folder / 'rec.nc')
    paths['s3'].unlink()
    with pytest.raises(StimulusError, match=r"1 image file\(s\).*'s3'"):
        load_recordings(folder / 'rec.nc', csv)


def test_csv_without_ids_or_paths(dataset):
    folder, paths, csv = dataset
    save_recordings(_array(list(paths)), folder / 'rec.nc')
    table = pd.read_csv(csv)
    table.drop(columns='stimulus_id').to_csv(folder / 'no_ids.csv', index=False)
    with pytest.raises(StimulusError, match="no 'stimulus_id' column"):
        load_recordings(folder / 'rec.nc', folder / 'no_ids.csv')
    table.drop(columns='stimulus_path').to_csv(folder / 'no_paths.csv', index=False)
    with pytest.raises(StimulusError, match='no image path column'):
        load_recordings(folder / 'rec.nc', folder / 'no_paths.csv')


def test_nan_in_data(dataset):
    folder, paths, csv = dataset
    array = _array(list(paths))
    array.values[4, 1] = np.nan
    save_recordings(array, folder / 'rec.nc')
    with pytest.raises(DataError, match=r"1 NaN.*stimulus_id='s4'"):
        load_recordings(folder / 'rec.nc', csv)


def test_single_presentation(dataset):
    folder, paths, csv = dataset
    save_recordings(_array(['s0'], repetitions=1), folder / 'rec.nc')
    with pytest.raises(DataError, match='single presentation'):
        load_recordings(folder / 'rec.nc', csv)


def test_missing_region_coord(dataset):
    folder, paths, csv = dataset
    array = _array(list(paths)).reset_index('neuroid').drop_vars('region')
    _write_raw(array, folder / 'rec.nc')
    with pytest.raises(DataError, match="lacks a 'region' coord"):
        load_recordings(folder / 'rec.nc', csv)


def test_missing_stimulus_id_coord(dataset):
    folder, paths, csv = dataset
    array = _array(list(paths)).reset_index('presentation').drop_vars('stimulus_id')
    _write_raw(array, folder / 'rec.nc')
    with pytest.raises(DataError, match="lacks a 'stimulus_id' coord"):
        load_recordings(folder / 'rec.nc', csv)


def test_unknown_dims(dataset):
    folder, paths, csv = dataset
    array = _array(list(paths))
    trials = xr.DataArray(np.stack([array.values] * 2, axis=-1), dims=['presentation', 'neuroid', 'trial'],
                          coords={'stimulus_id': ('presentation', array['stimulus_id'].values),
                                  'region': ('neuroid', array['region'].values)})
    _write_raw(trials, folder / 'rec.nc')
    with pytest.raises(DataError, match="unknown: trial"):
        load_recordings(folder / 'rec.nc', csv)


def test_repeated_repetition_numbers(dataset):
    folder, paths, csv = dataset
    array = _array(list(paths))
    array = NeuronRecordingAssembly(array.values, dims=['presentation', 'neuroid'], coords={
        'stimulus_id': ('presentation', array['stimulus_id'].values), 'repetition': ('presentation', [0] * 12),
        'neuroid_id': ('neuroid', array['neuroid_id'].values), 'region': ('neuroid', array['region'].values)})
    save_recordings(array, folder / 'rec.nc')
    with pytest.raises(DataError, match="stimulus_id 's0' has repetition 0 more than once"):
        load_recordings(folder / 'rec.nc', csv)


def test_load_stimuli_folder_rejects_ambiguous_ids(tmp_path):
    _images(tmp_path, 2)
    Image.fromarray(np.zeros((8, 8, 3), dtype='uint8')).save(tmp_path / 's0.jpg')
    with pytest.raises(StimulusError, match="'s0'"):
        load_stimuli(tmp_path)
