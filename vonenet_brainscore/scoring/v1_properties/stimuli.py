"""Local, deterministic re-creation of the Marques et al. (2021) V1-property stimulus sets.

Part of V1 scoring (scoring/v1_properties/): ``registry`` serves these sets to Brain-Score and ``screen``
places them on a model's screen in memory; where they sit (around (0.5, 0.5) deg) is ``brain.v1_window``'s.

Brain-Score only ships these sets as S3 archives. They are, however, fully specified (circular
sine-wave gratings on a mid-grey background, 12 degrees of visual angle rendered on 672 px), so they
are rebuilt here from the published parameters and cached on disk, which lets the benchmarks run
offline. Rows are ordered the way the benchmarks' own consistency checks and reshapes expect
(position_y, position_x, contrast, radius, spatial_frequency, orientation, phase; phase fastest).
"""
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet

from ...paths import HOME_ENV, cache_dir
from ...errors import StimulusError

BLANK = 'Marques2020_blank'
RECEPTIVE_FIELD = 'Marques2020_receptive_field'
ORIENTATION = 'Marques2020_orientation'
SPATIAL_FREQUENCY = 'Marques2020_spatial_frequency'
SIZE = 'Marques2020_size'
STIMULUS_SET_NAMES = (BLANK, RECEPTIVE_FIELD, ORIENTATION, SPATIAL_FREQUENCY, SIZE)

DEGREES = 12
SIZE_PX = 672
BLANK_SIZE_PX = 448  # the published blank image is smaller; it is uniform grey, so only its degrees matter
GRAY = 128  # uint8(255 / 2 + 1), the background level of the published images
WHITE = 255

PARAMETER_COLUMNS = ('position_y', 'position_x', 'contrast', 'radius', 'spatial_frequency', 'orientation',
                     'phase')
METADATA_FILE = 'stimulus_set.csv'
PARAMETERS_FILE = 'generation_parameters.json'
# Bump when the rendering or the metadata layout changes, so old caches are not reused.
GENERATOR_VERSION = 1


# Parameter grids of Marques et al. (2021), as used by Brain-Score's packaging scripts.
_RADII = np.logspace(-3 + 0.75, 4 - 0.75, 12, endpoint=True, base=2) / 2
_SPATIAL_FREQUENCIES = np.logspace(-1.5 + 0.125, 4 - 0.125, 22, endpoint=True, base=2)
_ORIENTATIONS = np.linspace(0, 165, 12, endpoint=True)
_PHASES = np.linspace(0, 315, 8, endpoint=True)
_CENTER = 0.5
_CONTRAST = 1.0


def cache_root() -> Path:
    """Root of this package's cache (shared with the weights download)."""
    return cache_dir()


def _grid(*axes) -> np.ndarray:
    """Cartesian product with the first axis varying slowest, as rows of PARAMETER_COLUMNS."""
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


def grating_parameters(name: str) -> np.ndarray:
    """(n, 7) float64 table of PARAMETER_COLUMNS for a grating set, in benchmark row order."""
    center, contrast = [_CENTER], [_CONTRAST]
    if name == RECEPTIVE_FIELD:
        positions = np.linspace(-2.5, 2.5, 21, endpoint=True)
        return _grid(positions, positions, contrast, [1 / 6], [3.0], _ORIENTATIONS[[0, 3, 6, 9]], _PHASES[[0, 4]])
    if name == SPATIAL_FREQUENCY:
        return _grid(center, center, contrast, [0.75, 2.25], _SPATIAL_FREQUENCIES, _ORIENTATIONS[::2], _PHASES)
    if name == SIZE:
        return _grid(center, center, contrast, _RADII, _SPATIAL_FREQUENCIES[[4, 8, 12, 16]], _ORIENTATIONS[::2],
                     _PHASES)
    if name == ORIENTATION:
        # Three "cycles": the grating's diameter is 2, 3 or 4 periods; radius therefore depends on frequency.
        rows = [(_CENTER, _CENTER, _CONTRAST, cycles / 2 / sf, sf, orientation, phase)
                for cycles in (2, 3, 4)
                for sf in _SPATIAL_FREQUENCIES[[4, 8, 12, 16]]
                for orientation in _ORIENTATIONS
                for phase in _PHASES]
        return np.array(rows, dtype=np.float64)
    raise StimulusError(f'{name!r} is not a grating stimulus set; choose one of {STIMULUS_SET_NAMES[1:]}')


def _file_name(name: str, index: int) -> str:
    return f'{name}_{index:05d}.png'


def stimulus_metadata(name: str) -> pd.DataFrame:
    """Metadata table of a set (one row per image, benchmark order), without file paths."""
    if name == BLANK:
        frame = pd.DataFrame({'stimulus_id': ['0'], 'degrees': [DEGREES]})
    else:
        parameters = grating_parameters(name)
        frame = pd.DataFrame({'stimulus_id': [str(index) for index in range(len(parameters))],
                              'degrees': DEGREES})
        for column, values in zip(PARAMETER_COLUMNS, parameters.T):
            frame[column] = values
    frame.insert(1, 'image_id', frame['stimulus_id'])  # legacy BrainIO name, kept as Brain-Score's loader does
    frame['image_file_name'] = [_file_name(name, index) for index in range(len(frame))]
    return frame


def _generation_spec(name: str) -> dict:
    spec = {'stimulus_set': name, 'generator_version': GENERATOR_VERSION, 'degrees': DEGREES, 'gray': GRAY,
            'white': WHITE, 'size_px': BLANK_SIZE_PX if name == BLANK else SIZE_PX}
    if name != BLANK:
        spec['parameter_columns'] = list(PARAMETER_COLUMNS)
        spec['parameters'] = grating_parameters(name).tolist()  # repr of floats is exact
    return spec


def stimulus_set_dir(name: str) -> Path:
    """Cache folder of a set; its name carries a hash of every generation parameter."""
    if name not in STIMULUS_SET_NAMES:
        raise StimulusError(f'Unknown stimulus set {name!r}; choose one of {STIMULUS_SET_NAMES}')
    digest = hashlib.sha1(json.dumps(_generation_spec(name), sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / 'v1_properties' / 'stimuli' / f'{name}-{digest}'


def pixel_coordinates(position: float, size_px: int = SIZE_PX, degrees: float = DEGREES) -> np.ndarray:
    """Degrees of each pixel column (or row) relative to the grating centre ``position``."""
    return (np.arange(size_px) - size_px / 2) / (size_px / degrees) - position


def _render_group(rows: np.ndarray, size_px: int) -> List[np.ndarray]:
    """Images of gratings that differ only in radius; the sine is evaluated once, inside the largest disc.

    The arithmetic is float64 and follows the packaging's formula operation by operation, so the
    uint8 truncation gives the very same pixels (float32 flips about 1 in 10^4 of them by one level).
    """
    position_y, position_x, contrast, _, spatial_frequency, orientation, phase = rows[0]
    x = pixel_coordinates(position_x, size_px)
    y = pixel_coordinates(position_y, size_px)
    x2, y2 = x ** 2, y ** 2
    largest = rows[:, 3].max() ** 2
    columns = np.flatnonzero(x2 <= largest)  # outside these, x**2 + y**2 > radius**2 for every row
    lines = np.flatnonzero(y2 <= largest)
    images = [np.full((size_px, size_px), GRAY, dtype=np.uint8) for _ in rows]
    if len(columns) == 0 or len(lines) == 0:
        return images
    cols, rws = slice(columns[0], columns[-1] + 1), slice(lines[0], lines[-1] + 1)
    theta = orientation / 180 * np.pi
    argument = (x[cols] * np.cos(theta))[np.newaxis, :] + (y[rws] * np.sin(theta))[:, np.newaxis]
    argument *= spatial_frequency
    argument *= 2
    argument *= np.pi
    argument += phase / 180 * np.pi
    texture = np.sin(argument, out=argument)
    texture *= contrast
    texture += 1
    texture /= 2
    texture *= WHITE
    levels = texture.astype(np.uint8)  # truncation, as the published images
    distance2 = x2[cols][np.newaxis, :] + y2[rws][:, np.newaxis]
    for image, radius in zip(images, rows[:, 3]):
        mask = distance2 <= radius ** 2
        image[rws, cols][mask] = levels[mask]
    return images


def render_grating(position_y: float, position_x: float, contrast: float, radius: float, spatial_frequency: float,
                   orientation: float, phase: float, size_px: int = SIZE_PX) -> np.ndarray:
    """One grating image (uint8, size_px x size_px) over DEGREES of visual angle; angles in degrees."""
    row = np.array([[position_y, position_x, contrast, radius, spatial_frequency, orientation, phase]],
                   dtype=np.float64)
    return _render_group(row, size_px)[0]


def _groups(parameters: np.ndarray) -> List[np.ndarray]:
    """Row indices grouped by everything but radius, so each sine texture is computed once."""
    keys = np.delete(parameters, 3, axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind='stable')
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)


def blank_image() -> np.ndarray:
    """The blank set's one image: uniform grey, BLANK_SIZE_PX square."""
    return np.full((BLANK_SIZE_PX, BLANK_SIZE_PX), GRAY, dtype=np.uint8)


def image_groups(name: str) -> List[np.ndarray]:
    """Row indices of a set in rendering groups: rows that differ only in radius share one sine
    texture (see :func:`render_rows`)."""
    if name == BLANK:
        return [np.array([0])]
    return _groups(grating_parameters(name))


def render_rows(name: str, indices) -> List[np.ndarray]:
    """The images of rows ``indices`` (one group of :func:`image_groups`), exactly as written to the
    set's PNG files."""
    if name == BLANK:
        return [blank_image() for _ in indices]
    return _render_group(grating_parameters(name)[np.asarray(indices)], SIZE_PX)


def _save_png(image: np.ndarray, path: Path):
    Image.fromarray(image, mode='L').save(path, format='PNG', compress_level=3)


def _write_images(name: str, folder: Path, progress: bool, workers: Optional[int]):
    if name == BLANK:
        _save_png(blank_image(), folder / _file_name(name, 0))
        return
    parameters = grating_parameters(name)
    groups = _groups(parameters)

    def work(indices):
        for index, image in zip(indices, _render_group(parameters[indices], SIZE_PX)):
            _save_png(image, folder / _file_name(name, int(index)))
        return len(indices)

    # numpy's ufuncs and Pillow's zlib encoder release the GIL, so threads use all cores without pickling.
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        with tqdm(total=len(parameters), desc=f'generate {name}', unit='img', disable=not progress) as bar:
            for future in as_completed([pool.submit(work, indices) for indices in groups]):
                bar.update(future.result())
    finally:  # on error or Ctrl-C, drop the queued work instead of finishing it
        pool.shutdown(wait=True, cancel_futures=True)


def _is_complete(folder: Path, expected_files: int) -> bool:
    if not (folder / METADATA_FILE).is_file():
        return False
    return sum(1 for entry in os.scandir(folder) if entry.name.endswith('.png')) == expected_files


def generate_stimulus_set(name: str, *, progress: bool = True, workers: Optional[int] = None) -> Path:
    """Render a set into its cache folder unless it is already there; returns the folder.

    Images go to a temporary sibling folder that is renamed into place only when complete, so an
    interrupted run leaves no half-written set and concurrent runs cannot corrupt each other.
    """
    folder = stimulus_set_dir(name)
    metadata = stimulus_metadata(name)
    if folder.exists():
        if _is_complete(folder, len(metadata)):
            return folder
        raise StimulusError(f'The cached stimulus set {folder} is incomplete (modified after it was written?); '
                            f'delete that folder and it will be regenerated.')
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.partial-', dir=folder.parent))
    except OSError as error:
        raise StimulusError(f'Cannot write stimuli to {folder.parent} ({error}); set {HOME_ENV} to a writable '
                            f'folder.') from error
    try:
        staging.chmod(0o755)  # mkdtemp makes owner-only folders; a shared cache should be readable by all
        _write_images(name, staging, progress=progress, workers=workers)
        metadata.to_csv(staging / METADATA_FILE, index=False)
        (staging / PARAMETERS_FILE).write_text(json.dumps(_generation_spec(name)))
        try:
            staging.rename(folder)
        except OSError:
            if not _is_complete(folder, len(metadata)):  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_stimulus_set(name: str, *, progress: bool = True, workers: Optional[int] = None) -> StimulusSet:
    """The Brain-Score StimulusSet ``name`` from the local cache, generating it on first use."""
    folder = generate_stimulus_set(name, progress=progress, workers=workers)
    stimulus_set = StimulusSet(stimulus_metadata(name))
    stimulus_set.stimulus_paths = {stimulus_id: folder / file_name for stimulus_id, file_name
                                   in zip(stimulus_set['stimulus_id'], stimulus_set['image_file_name'])}
    stimulus_set.identifier = name
    return stimulus_set


def generate_all(*, progress: bool = True, workers: Optional[int] = None) -> Dict[str, Path]:
    """Make sure every set is cached; returns their folders."""
    return {name: generate_stimulus_set(name, progress=progress, workers=workers) for name in STIMULUS_SET_NAMES}
