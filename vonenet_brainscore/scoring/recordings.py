"""A user's own neural recordings, loaded as a Brain-Score assembly with its stimulus set attached.

The data are a NetCDF file in Brain-Score/brainio form: a ``presentation x neuroid [x time_bin]``
array with ``stimulus_id`` on ``presentation`` (a stimulus shown several times appears in several
presentations, optionally numbered by a ``repetition`` coord) and ``region`` on ``neuroid``. The
stimuli are a CSV (``stimulus_id`` plus an image path column; relative paths are read from the
CSV's folder) or a folder whose image file names, without suffix, are the stimulus ids.

Everything is checked on load so that a scoring run never fails half-way on a typo: each problem
raises ``DataError`` or ``StimulusError`` naming what is wrong and what to do. Part of ``scoring/``:
``mapping`` and ``predictivity`` score models against what this module loads.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd
import xarray as xr

from brainscore_core.supported_data_standards.brainio.assemblies import (
    NeuronRecordingAssembly, walk_coords)
from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet

from ..errors import DataError, StimulusError

logger = logging.getLogger(__name__)

KNOWN_DIMS = ('presentation', 'neuroid', 'time_bin')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.gif', '.webp')
PATH_COLUMNS = ('stimulus_path', 'image_path', 'path', 'filename', 'file_name', 'image_file_name', 'file')
PathLike = Union[str, os.PathLike]


def _few(values: Iterable, n: int = 5) -> str:
    """'a, b, c and 7 more': enough to find the problem without flooding the terminal."""
    values = [str(v) for v in values]
    shown = ', '.join(repr(v) for v in values[:n])
    return shown + (f' and {len(values) - n} more' if len(values) > n else '')


# --- stimuli ------------------------------------------------------------------------------------
def load_stimuli(stimuli: PathLike) -> StimulusSet:
    """A StimulusSet from a CSV (``stimulus_id`` + image path column) or a folder of images.

    Paths are absolute in the result; ids are strings (NetCDF and CSV readers may turn numeric ids
    into numbers, file names are strings, so everything is compared as strings).
    """
    stimuli = Path(stimuli)
    if not stimuli.exists():
        raise StimulusError(f"stimuli {stimuli} do not exist; pass a CSV with 'stimulus_id' and image path "
                            f"columns, or a folder of images named <stimulus_id>.png/.jpg")
    if stimuli.is_dir():
        files = sorted(p for p in stimuli.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise StimulusError(f"stimulus folder {stimuli} holds no images ({', '.join(IMAGE_SUFFIXES)}); their "
                                f"file names (without suffix) must be the stimulus ids")
        stems = [p.stem for p in files]
        duplicates = sorted({s for s in stems if stems.count(s) > 1})
        if duplicates:
            raise StimulusError(f"stimulus folder {stimuli}: several files share the stimulus id(s) "
                                f"{_few(duplicates)} (e.g. a.png and a.jpg); keep one image per id")
        table = pd.DataFrame({'stimulus_id': stems, 'stimulus_path': [str(p.resolve()) for p in files]})
        path_column = 'stimulus_path'
    else:
        try:
            table = pd.read_csv(stimuli, dtype={'stimulus_id': str, 'image_id': str})
        except Exception as error:  # pandas raises many kinds of parser errors
            raise StimulusError(f"cannot read stimuli {stimuli} as CSV ({error}); pass a CSV with 'stimulus_id' "
                                f"and image path columns, or a folder of images") from error
        if 'stimulus_id' not in table and 'image_id' in table:
            table['stimulus_id'] = table['image_id']
        if 'stimulus_id' not in table:
            raise StimulusError(f"stimuli CSV {stimuli} has no 'stimulus_id' column (columns: "
                                f"{', '.join(table.columns)}); add one that matches the recordings' stimulus_id")
        path_column = next((c for c in PATH_COLUMNS if c in table), None)
        if path_column is None:
            raise StimulusError(f"stimuli CSV {stimuli} has no image path column; name one of "
                                f"{', '.join(PATH_COLUMNS)} (relative paths are read from the CSV's folder)")
        table = table.copy()
        table['stimulus_id'] = table['stimulus_id'].astype(str)
        duplicated = table['stimulus_id'][table['stimulus_id'].duplicated()].unique()
        if len(duplicated):
            raise StimulusError(f"stimuli CSV {stimuli} lists stimulus id(s) {_few(duplicated)} more than once; "
                                f"each id needs exactly one image")
        base = stimuli.resolve().parent
        table[path_column] = [str((base / Path(str(p)).expanduser()).resolve()) if pd.notna(p) else ''
                              for p in table[path_column]]
    stimulus_set = StimulusSet(table.reset_index(drop=True))
    stimulus_set.stimulus_paths = dict(zip(stimulus_set['stimulus_id'], stimulus_set[path_column]))
    stimulus_set.identifier = None
    return stimulus_set


def _check_image_files(stimulus_set: StimulusSet, source) -> None:
    missing = [sid for sid in stimulus_set['stimulus_id']
               if not stimulus_set.stimulus_paths[sid] or not Path(stimulus_set.stimulus_paths[sid]).is_file()]
    if missing:
        examples = ', '.join(f"{sid!r} -> {stimulus_set.stimulus_paths[sid] or '(empty)'}" for sid in missing[:3])
        raise StimulusError(f"{len(missing)} image file(s) listed in {source} do not exist: {examples}"
                            f"{' ...' if len(missing) > 3 else ''}; fix the paths (relative paths are read "
                            f"from the CSV's folder)")


def content_digest(stimulus_set: StimulusSet, ids: Optional[Iterable[str]] = None) -> str:
    """A hash of the stimulus ids and their images' bytes: same digest, same stimuli."""
    digest = hashlib.sha1()
    for sid in (ids if ids is not None else stimulus_set['stimulus_id']):
        digest.update(str(sid).encode() + b'\0')
        with open(stimulus_set.stimulus_paths[sid], 'rb') as file:
            for chunk in iter(lambda: file.read(1 << 20), b''):
                digest.update(chunk)
    return digest.hexdigest()[:12]


# --- assembly -----------------------------------------------------------------------------------
def _open_netcdf(path: Path) -> xr.DataArray:
    if not path.exists():
        raise DataError(f"neural data {path} does not exist; pass the NetCDF (.nc) file that holds the "
                        f"presentation x neuroid assembly")
    try:
        with xr.open_dataset(path) as dataset:
            dataset = dataset.load()
    except Exception as error:
        raise DataError(f"cannot read {path} as NetCDF ({type(error).__name__}: {error}); write the assembly with "
                        f"vonenet_brainscore.scoring.recordings.save_recordings or brainio's write_netcdf") from error
    variables = list(dataset.data_vars)
    if not variables:
        raise DataError(f"{path} holds no data variable; it should hold one presentation x neuroid array")
    name = 'data' if 'data' in variables else variables[0] if len(variables) == 1 else None
    if name is None:
        raise DataError(f"{path} holds several data variables ({', '.join(variables)}) and none is called "
                        f"'data'; keep only the neural responses")
    array = dataset[name]
    array.attrs = {**dataset.attrs, **array.attrs}
    return array


def _presentation_frame(array: xr.DataArray) -> pd.DataFrame:
    return pd.DataFrame({name: np.asarray(values) for name, dims, values in walk_coords(array)
                         if dims == ('presentation',)})


def _check_array(array: xr.DataArray, source) -> xr.DataArray:
    unknown = [d for d in array.dims if d not in KNOWN_DIMS]
    if unknown or 'presentation' not in array.dims or 'neuroid' not in array.dims:
        raise DataError(f"{source} has dims {tuple(array.dims)}; recordings need 'presentation' and 'neuroid' "
                        f"(and optionally 'time_bin'){'; unknown: ' + ', '.join(unknown) if unknown else ''}. "
                        f"Average or select over other dims (e.g. trials as repeated presentations) first")
    coord_dims = {name: dims for name, dims, _ in walk_coords(array)}
    if 'stimulus_id' not in coord_dims and 'image_id' in coord_dims:
        array = array.assign_coords(stimulus_id=('presentation', np.asarray(array['image_id'].values)))
        coord_dims['stimulus_id'] = ('presentation',)
    if coord_dims.get('stimulus_id') != ('presentation',):
        raise DataError(f"{source} lacks a 'stimulus_id' coord on the presentation dim (presentation coords: "
                        f"{_few(n for n, d in coord_dims.items() if d == ('presentation',))}); add the id of the "
                        f"image shown in each presentation")
    if coord_dims.get('region') != ('neuroid',):
        raise DataError(f"{source} lacks a 'region' coord on the neuroid dim (neuroid coords: "
                        f"{_few(n for n, d in coord_dims.items() if d == ('neuroid',)) or 'none'}); add each "
                        f"neuroid's brain region, e.g. 'V1', 'V4' or 'IT'")
    if array.sizes['presentation'] < 2:
        raise DataError(f"{source} has a single presentation; predictivity needs responses to many stimuli "
                        f"(cross-validated across stimuli)")
    if array.sizes['neuroid'] < 1:
        raise DataError(f"{source} has no neuroids")
    values = np.asarray(array.values)
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{source} holds {values.dtype} values; responses must be numbers")
    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad)[0]
        position = dict(zip(array.dims, where))
        sid = str(array['stimulus_id'].values[position['presentation']])
        neuroid = position['neuroid']
        raise DataError(f"{source} holds {int(bad.sum())} NaN/infinite value(s) (the first at stimulus_id={sid!r}, "
                        f"neuroid #{neuroid}); drop the neuroids or presentations with missing data, or impute them")
    return array


def _with_repetitions(frame: pd.DataFrame, source) -> np.ndarray:
    """The repetition number of each presentation: the user's coord if given, else the order of showing."""
    if 'repetition' not in frame:
        return frame.groupby('stimulus_id', sort=False).cumcount().to_numpy()
    pairs = frame[['stimulus_id', 'repetition']]
    duplicated = pairs[pairs.duplicated()]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise DataError(f"{source}: stimulus_id {first['stimulus_id']!r} has repetition {first['repetition']!r} "
                        f"more than once; number each stimulus's presentations 0, 1, 2, ... or drop the "
                        f"'repetition' coord to number them in order")
    return frame['repetition'].to_numpy()


def assemble(array: xr.DataArray, stimulus_set: StimulusSet, source='recordings',
             stimuli_source='the stimuli') -> NeuronRecordingAssembly:
    """Check an in-memory array against its stimuli and return the assembly this module hands out."""
    array = _check_array(array, source)
    frame = _presentation_frame(array)
    frame['stimulus_id'] = frame['stimulus_id'].astype(str)
    repetition = _with_repetitions(frame, source)
    stimulus_ids = list(dict.fromkeys(frame['stimulus_id']))
    stimulus_set = _shown_stimuli(stimulus_set, stimulus_ids, source, stimuli_source)
    coords = _coords(array, frame, repetition, source)
    dims = [d for d in ('presentation', 'neuroid', 'time_bin') if d in array.dims]
    values = np.asarray(array.transpose(*dims).values, dtype=float)
    assembly = NeuronRecordingAssembly(values, coords=coords, dims=dims)
    digest = hashlib.sha1(np.ascontiguousarray(values).tobytes())
    for name in sorted(coords):
        digest.update(name.encode() + np.asarray(coords[name][1]).astype(str).tobytes())
    digest.update(stimulus_set.identifier.encode())
    assembly.attrs['identifier'] = f'user-{digest.hexdigest()[:12]}'
    assembly.attrs['stimulus_set_identifier'] = stimulus_set.identifier
    assembly.attrs['stimulus_set'] = stimulus_set
    assembly.attrs['source'] = str(source)
    logger.info('recordings %s: %d presentations of %d stimuli, %d neuroids in %s', source,
                assembly.sizes['presentation'], len(stimulus_ids), assembly.sizes['neuroid'],
                ', '.join(sorted(set(coords['region'][1]))))
    return assembly


def _shown_stimuli(stimulus_set: StimulusSet, stimulus_ids, source, stimuli_source) -> StimulusSet:
    """The stimuli of ``stimulus_ids``, in that order, with their image files checked and an identifier
    that hashes the images (so Brain-Score's caches never mix datasets)."""
    paths = {str(sid): path for sid, path in stimulus_set.stimulus_paths.items()}
    stimulus_set = StimulusSet(stimulus_set.copy())
    stimulus_set['stimulus_id'] = stimulus_set['stimulus_id'].astype(str)
    available = set(stimulus_set['stimulus_id'])
    missing = [sid for sid in stimulus_ids if sid not in available]
    if len(missing) == len(stimulus_ids):
        raise StimulusError(f"none of the {len(stimulus_ids)} stimulus ids in {source} (e.g. {_few(stimulus_ids, 3)}) "
                            f"appear in {stimuli_source} (e.g. {_few(stimulus_set['stimulus_id'], 3)}); the CSV's "
                            f"stimulus_id column (or the image file names) must match the assembly's stimulus_id coord")
    if missing:
        raise StimulusError(f"{len(missing)} stimulus id(s) in {source} have no image in {stimuli_source}: "
                            f"{_few(missing)}; add their images or drop those presentations")
    extra = len(available) - len(stimulus_ids)
    if extra:
        logger.info('%d image(s) in %s are not in the recordings and are left out', extra, stimuli_source)
    stimulus_set = stimulus_set.set_index('stimulus_id', drop=False).loc[stimulus_ids].reset_index(drop=True)
    stimulus_set = StimulusSet(stimulus_set)
    stimulus_set.stimulus_paths = {sid: str(paths[sid]) for sid in stimulus_ids}
    _check_image_files(stimulus_set, stimuli_source)
    stimulus_set.identifier = f'user-stimuli-{content_digest(stimulus_set, stimulus_ids)}'
    return stimulus_set


def _coords(array: xr.DataArray, frame: pd.DataFrame, repetition: np.ndarray, source) -> dict:
    """The assembly's coords: the array's own, string stimulus ids, repetitions, unique neuroid ids, regions."""
    coords = {name: (dims, np.asarray(values)) for name, dims, values in walk_coords(array)
              if dims and name not in ('presentation', 'neuroid', 'time_bin', 'stimulus_id', 'repetition', 'image_id')}
    coords['stimulus_id'] = ('presentation', frame['stimulus_id'].to_numpy(dtype=object))
    coords['repetition'] = ('presentation', np.asarray(repetition))
    neuroid_coords = [name for name, (dims, _) in coords.items() if dims == ('neuroid',)]
    if 'neuroid_id' not in neuroid_coords:
        count = array.sizes['neuroid']
        coords['neuroid_id'] = ('neuroid', np.array([f'neuroid{i}' for i in range(count)], dtype=object))
    else:
        ids = pd.Series(coords['neuroid_id'][1].astype(str))
        if ids.duplicated().any():
            raise DataError(f"{source}: neuroid_id {ids[ids.duplicated()].iloc[0]!r} appears more than once; "
                            f"neuroid ids must be unique")
        coords['neuroid_id'] = ('neuroid', ids.to_numpy(dtype=object))
    coords['region'] = ('neuroid', np.asarray(coords['region'][1]).astype(str).astype(object))
    if 'time_bin' in array.dims:
        for edge in ('time_bin_start', 'time_bin_end'):
            if coords.get(edge, ((),))[0] != ('time_bin',):
                raise DataError(f"{source} has a time_bin dim without a '{edge}' coord; give each bin its "
                                f"start and end in ms")
    return coords


def load_recordings(data: PathLike, stimuli: PathLike) -> NeuronRecordingAssembly:
    """Recordings from a NetCDF assembly and their stimuli (CSV or image folder), checked.

    The result has ``.stimulus_set`` (a Brain-Score StimulusSet whose identifier is a hash of the
    images, so Brain-Score's caches never mix datasets) and ``attrs['identifier']``, a hash of the
    data used in benchmark identifiers. A ``repetition`` coord numbers each stimulus's
    presentations (taken from the file, or the order of showing).
    """
    path = Path(data)
    array = _open_netcdf(path)
    array = _check_array(array, path)  # data problems first: they do not need the stimuli
    return assemble(array, load_stimuli(stimuli), source=path, stimuli_source=Path(stimuli))


# --- writing ------------------------------------------------------------------------------------
def save_recordings(assembly: xr.DataArray, path: PathLike) -> Path:
    """Write an assembly as brainio NetCDF (MultiIndexes flattened, non-serialisable attrs dropped)."""
    from brainscore_core.supported_data_standards.brainio.packaging import write_netcdf
    path = Path(path)
    assembly = assembly.copy()
    assembly.attrs = {key: value for key, value in assembly.attrs.items()
                      if isinstance(value, (str, int, float, np.integer, np.floating))}
    write_netcdf(assembly, path)
    return path


def save_stimuli_csv(paths: Mapping[str, PathLike], csv_path: PathLike,
                     columns: Optional[Dict[str, Iterable]] = None) -> Path:
    """A stimuli CSV (``stimulus_id``, ``stimulus_path`` relative to the CSV where possible, extra columns)."""
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    rows = []
    for sid, image in paths.items():
        image = Path(image).resolve()
        try:
            image = image.relative_to(base)
        except ValueError:
            pass
        rows.append({'stimulus_id': str(sid), 'stimulus_path': image.as_posix()})
    table = pd.DataFrame(rows)
    for name, values in (columns or {}).items():
        table[name] = list(values)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    return csv_path
