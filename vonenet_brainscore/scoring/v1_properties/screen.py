"""The Marques2020 stimuli as the model sees them, computed in memory instead of through files.

Part of V1 scoring (scoring/v1_properties/): ``score.fast_scoring`` puts a model's preprocessing behind
:func:`in_memory_screen` for a run; the images come from ``stimuli`` and the digests from
``brain.extraction.image_digest``.

For every stimulus set it records from, Brain-Score's ``record_from_model`` loads the set, places it
on the model's screen (``place_on_screen``: each image cropped or padded to the model's visual
degrees by ``ImageConverter.apply_ratio`` and written to a new PNG file), and the model's
preprocessing reads each new file back, converts it to RGB, resizes it and normalises it. For the
gratings of this package each of those steps is a deterministic function of the generation
parameters, and PNG is lossless, so the same operations applied in memory give the very same model
inputs, bit for bit, without writing 9,097 files and reading them again:

1. the image as written to the set's PNG file (``stimuli.render_rows``);
2. Brain-Score's own ``ImageConverter.apply_ratio`` (what ``place_on_screen`` writes);
3. ``images.to_rgb`` (what the model's ``load_image`` applies to a file it has read);
4. the preprocessing's own Resize (8 bits in, 8 bits out), then its ToTensor and Normalize, which act
   on each pixel and channel alone and are therefore exactly a 256-entry table per channel
   (``BrainScorePreprocessing.pixel_values``, computed by those transforms).

What does not change between runs is cached on disk: the 8-bit images after step 4's resize, and
the digest of each normalised image (the VOneBlock's noise is seeded per image by that digest), one
folder per stimulus set, keyed by everything that changes them: the set's generation parameters,
source and target degrees, the preprocessing's size, mean and std, and the versions of Brain-Score,
Pillow, torch, torchvision and numpy. Each process spot-checks a few cached images of every set it
uses against the set's PNG files sent through the file pipeline itself (Brain-Score's
``convert_image`` writing a file, the model's preprocessing reading it).

:func:`in_memory_screen` makes Brain-Score's property benchmarks use this for one model: their
``place_on_screen`` returns the stimulus set Brain-Score's would (same rows, identifier and new
paths) without writing the files, and the model's preprocessing serves those paths from memory.
Any other stimulus set, and a model whose preprocessing is not ours, go through Brain-Score's own
functions as before.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...brain.brainscore_access import extractor_of
from ...errors import StimulusError
from ...images import to_rgb
from . import stimuli

logger = logging.getLogger(__name__)

SCREEN_VERSION = 1  # bump when what is cached, or how, changes
PIXELS_FILE, BLOCKS_FILE, DIGESTS_FILE, SPEC_FILE = 'pixels.zlib', 'blocks.npy', 'digests.npy', 'screen.json'
BLOCK_ROWS = 64  # images per separately compressed block (mostly uniform grey: 436 MB of pixels take 11 MB)
SPOT_CHECKS = 2  # cached images per set and process checked against the file pipeline
_VERSIONED = ('brainscore-vision', 'Pillow', 'torch', 'torchvision', 'numpy')


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for package in _VERSIONED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = 'unknown'
    return found


def screen_spec(name: str, target_degrees: float, preprocessing) -> dict:
    """Everything the cached screen images of a set depend on."""
    return {'screen_version': SCREEN_VERSION, 'stimulus_set': stimuli.stimulus_set_dir(name).name,
            'source_degrees': stimuli.DEGREES, 'target_degrees': float(target_degrees),
            'image_size': int(preprocessing.image_size), 'mean': list(preprocessing.mean),
            'std': list(preprocessing.std), 'versions': _versions()}


def screen_dir(name: str, target_degrees: float, preprocessing) -> Path:
    """Cache folder of a set's screen images; its name carries a hash of :func:`screen_spec`."""
    spec = screen_spec(name, target_degrees, preprocessing)
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return stimuli.cache_root() / 'v1_properties' / 'screen' / \
        f'{name}-{float(target_degrees):g}deg-{int(preprocessing.image_size)}px-{digest}'


def _ratio(target_degrees: float) -> float:
    return target_degrees / stimuli.DEGREES  # as ImageConverter.convert_image computes it


def _converter():
    from brainscore_vision.benchmark_helpers.screen import ImageConverter
    return ImageConverter(target_dir=tempfile.gettempdir())  # only apply_ratio is used: it writes nothing


def screen_image(image: np.ndarray, target_degrees: float, preprocessing, converter=None) -> np.ndarray:
    """One stimulus image (as in its PNG file) as the model's preprocessing resizes it: (S, S, 3) uint8."""
    screen = Image.fromarray(image)
    if target_degrees != stimuli.DEGREES:  # convert_image leaves an image of the target degrees as it is
        screen = (converter or _converter()).apply_ratio(screen, _ratio(target_degrees))
    return np.asarray(preprocessing.resize(to_rgb(screen)))


def normalised(values: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(N, S, S) grey uint8 -> (N, 3, S, S) float32 through the per-channel tables ``values`` (3, 256)."""
    pixels = np.asarray(pixels)
    out = np.empty((len(pixels), 3) + pixels.shape[1:], dtype=np.float32)
    for channel in range(3):
        if channel and values[channel].tobytes() == values[0].tobytes():
            out[:, channel] = out[:, 0]  # the same table (equal mean and std): the same values
        else:
            np.take(values[channel], pixels, out=out[:, channel])
    return out


class ScreenedSet:
    """One stimulus set on one screen: model-sized 8-bit images (grey: R = G = B) and the digests of
    their normalised form, by row of the set (``stimuli.stimulus_metadata`` order).

    The images stay in the cache file, in zlib blocks of BLOCK_ROWS images; :meth:`rows` reads and
    inflates the blocks it needs (the last one is kept), so the set does not occupy memory."""

    def __init__(self, name: str, target_degrees: float, folder: Path, size: int, offsets: np.ndarray,
                 digests: np.ndarray):
        self.name, self.target_degrees, self.folder, self.size = name, float(target_degrees), folder, size
        self.offsets, self.digests = offsets, digests
        self.checked = False
        self._block: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self):
        return len(self.digests)

    def digest(self, index: int) -> bytes:
        return self.digests[index].tobytes()

    def _read_block(self, block: int, file) -> np.ndarray:
        if self._block[0] != block:
            start, stop = int(self.offsets[block]), int(self.offsets[block + 1])
            try:
                data = zlib.decompress(os.pread(file.fileno(), stop - start, start))
            except zlib.error as error:
                raise StimulusError(f'{self.folder / PIXELS_FILE} is damaged ({error}); delete {self.folder} '
                                    f'and it is recomputed') from None
            self._block = (block, np.frombuffer(data, dtype=np.uint8).reshape(-1, self.size, self.size))
        return self._block[1]

    def rows(self, indices) -> np.ndarray:
        """Images ``indices`` as a (len, S, S) uint8 array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f'{self.name} has {len(self)} images, not {indices.max() + 1}')
        out = np.empty((len(indices), self.size, self.size), dtype=np.uint8)
        blocks = indices // BLOCK_ROWS
        with open(self.folder / PIXELS_FILE, 'rb') as file:
            for block in np.unique(blocks):
                chosen = np.flatnonzero(blocks == block)
                out[chosen] = self._read_block(int(block), file)[indices[chosen] - block * BLOCK_ROWS]
        return out


def _build(name: str, target_degrees: float, preprocessing, folder: Path, progress: bool,
           workers: Optional[int]) -> None:
    from ...brain.extraction import image_digest
    n = len(stimuli.stimulus_metadata(name))
    size = int(preprocessing.image_size)
    values = preprocessing.pixel_values()
    converter = _converter()
    pixels = np.empty((n, size, size), dtype=np.uint8)
    digests = np.empty((n, 16), dtype=np.uint8)

    def work(indices):
        for index, image in zip(indices, stimuli.render_rows(name, indices)):
            resized = screen_image(image, target_degrees, preprocessing, converter)
            grey = resized[..., 0]
            if not ((resized[..., 1] == grey).all() and (resized[..., 2] == grey).all()):
                raise StimulusError(f'{name} image {index} is not grey on screen; the in-memory screen only '
                                    f'holds grey images')
            pixels[index] = grey
            digests[index] = np.frombuffer(image_digest(normalised(values, grey[None])[0]), dtype=np.uint8)
        return len(indices)

    groups = stimuli.image_groups(name)
    # numpy, Pillow and hashlib release the GIL, so threads use every core without pickling
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        with tqdm(total=n, desc=f'screen {name}', unit='img', disable=not progress) as bar:
            for future in [pool.submit(work, indices) for indices in groups]:
                bar.update(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.partial-', dir=folder.parent))
    try:
        staging.chmod(0o755)
        offsets = [0]
        with open(staging / PIXELS_FILE, 'wb') as file:
            for first in range(0, n, BLOCK_ROWS):
                offsets.append(offsets[-1] + file.write(zlib.compress(pixels[first:first + BLOCK_ROWS].tobytes(), 1)))
        np.save(staging / BLOCKS_FILE, np.asarray(offsets, dtype=np.int64))
        np.save(staging / DIGESTS_FILE, digests)
        (staging / SPEC_FILE).write_text(json.dumps(screen_spec(name, target_degrees, preprocessing), indent=1))
        if folder.exists():  # an invalid entry being replaced
            shutil.rmtree(folder, ignore_errors=True)
        try:
            staging.rename(folder)
        except OSError:
            if _read(name, target_degrees, preprocessing, folder) is None:  # not a concurrent run's entry
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read(name: str, target_degrees: float, preprocessing, folder: Path) -> Optional[ScreenedSet]:
    """The cached entry, or None if it is missing or not what this spec expects."""
    try:
        if json.loads((folder / SPEC_FILE).read_text()) != screen_spec(name, target_degrees, preprocessing):
            return None
        offsets = np.load(folder / BLOCKS_FILE)
        digests = np.load(folder / DIGESTS_FILE)
        stored = (folder / PIXELS_FILE).stat().st_size
    except (OSError, ValueError):
        return None
    n = len(stimuli.stimulus_metadata(name))
    if digests.dtype != np.uint8 or digests.shape != (n, 16) or offsets.dtype != np.int64 or \
            offsets.shape != (-(-n // BLOCK_ROWS) + 1,) or offsets[0] != 0 or offsets[-1] != stored or \
            (np.diff(offsets) <= 0).any():
        return None
    return ScreenedSet(name, target_degrees, folder, int(preprocessing.image_size), offsets, digests)


def screened_set(name: str, target_degrees: float, preprocessing, *, progress: bool = True,
                 workers: Optional[int] = None) -> ScreenedSet:
    """A set's screen images for this preprocessing, from the cache or computed into it."""
    folder = screen_dir(name, target_degrees, preprocessing)
    entry = _read(name, target_degrees, preprocessing, folder)
    if entry is None:
        if folder.exists():
            logger.warning('the cached screen images %s are incomplete or damaged; recomputing them', folder)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StimulusError(f'Cannot write screen images to {folder.parent} ({error}); set '
                                f'{stimuli.HOME_ENV} to a writable folder.') from error
        _build(name, target_degrees, preprocessing, folder, progress, workers)
        entry = _read(name, target_degrees, preprocessing, folder)
        if entry is None:
            raise StimulusError(f'the screen images written to {folder} cannot be read back; delete that folder')
    return entry


def file_pipeline_input(path, target_degrees: float, preprocessing, scratch: Path) -> np.ndarray:
    """Today's route for one file: Brain-Score's ``convert_image`` writes the image for the screen,
    the model's preprocessing reads that file: (3, S, S) float32."""
    from brainscore_vision.benchmark_helpers.screen import ImageConverter
    placed = ImageConverter(target_dir=scratch).convert_image(
        image_path=path, source_degrees=stimuli.DEGREES, target_degrees=target_degrees)
    return np.asarray(preprocessing([str(placed)]))[0]


def spot_check(entry: ScreenedSet, preprocessing, count: int = SPOT_CHECKS) -> List[int]:
    """Compare ``count`` random cached images with their PNG files sent through the file pipeline;
    raise StimulusError on any difference. Returns the indices checked."""
    from ...brain.extraction import image_digest
    folder = stimuli.stimulus_set_dir(entry.name)
    metadata = stimuli.stimulus_metadata(entry.name)
    indices = sorted(random.Random().sample(range(len(entry)), min(count, len(entry))))
    values = preprocessing.pixel_values()
    with tempfile.TemporaryDirectory(prefix='vonenet-screen-check-') as scratch:
        for index in indices:
            path = folder / metadata['image_file_name'].iloc[index]
            expected = file_pipeline_input(path, entry.target_degrees, preprocessing, Path(scratch))
            ours = normalised(values, entry.rows([index]))[0]
            if not np.array_equal(ours, expected) or image_digest(expected) != entry.digest(index):
                raise StimulusError(
                    f'{path} differs from the cached screen image {index} in {entry.folder}: the stimulus '
                    f'files were changed after they were generated, or the cache is damaged. Delete '
                    f'{folder} and {entry.folder}; both are regenerated on the next run.')
    entry.checked = True
    return indices


class InMemoryScreen:
    """A model's preprocessing, serving the paths of stimulus sets placed by :meth:`place` from memory.

    Callable on paths like the preprocessing it wraps (paths it does not serve are read from their
    files by that preprocessing); ``digests(paths)`` gives the cached digests of served images.
    """

    def __init__(self, preprocessing, *, progress: bool = True):
        self.preprocessing = preprocessing
        self.progress = progress
        self.values = preprocessing.pixel_values()
        self._sets: Dict[Tuple[str, float], ScreenedSet] = {}
        self._served: Dict[str, Tuple[ScreenedSet, int]] = {}

    # --- what the extractor calls --------------------------------------------------------------
    def serves(self, paths) -> bool:
        return all(str(path) in self._served for path in paths)

    def __call__(self, paths):
        paths = [str(path) for path in paths]
        served = [path in self._served for path in paths]
        if not any(served):
            return self.preprocessing(paths)
        if all(served):
            return self._normalised(paths)
        out = np.empty((len(paths), 3, self.preprocessing.image_size, self.preprocessing.image_size), np.float32)
        mine = [i for i, s in enumerate(served) if s]
        others = [i for i, s in enumerate(served) if not s]
        out[mine] = self._normalised([paths[i] for i in mine])
        out[others] = self.preprocessing([paths[i] for i in others])
        return out

    def digests(self, paths) -> Optional[List[bytes]]:
        """Digests of the normalised images (what ``extraction.image_digest`` gives), None unless all served."""
        try:
            return [entry.digest(index) for entry, index in (self._served[str(path)] for path in paths)]
        except KeyError:
            return None

    def _normalised(self, paths) -> np.ndarray:
        lookups = [self._served[path] for path in paths]
        entry = lookups[0][0]
        if all(other is entry for other, _ in lookups):
            pixels = entry.rows([index for _, index in lookups])
        else:
            pixels = np.concatenate([other.rows([index]) for other, index in lookups])
        return normalised(self.values, pixels)

    # --- what Brain-Score's record_from_model calls -------------------------------------------------
    def place(self, stimulus_set, target_visual_degrees, source_visual_degrees=None, *, original):
        """Brain-Score's ``place_on_screen`` for our generated sets, without writing files; anything
        else goes to ``original`` (Brain-Score's own)."""
        rows = None if source_visual_degrees is not None else self._our_rows(stimulus_set)
        if rows is None:
            return original(stimulus_set, target_visual_degrees=target_visual_degrees,
                            source_visual_degrees=source_visual_degrees)
        name = stimulus_set.identifier
        entry = self.screened(name, target_visual_degrees)
        if (stimulus_set['degrees'].to_numpy() == target_visual_degrees).all():
            placed = stimulus_set  # Brain-Score returns the set itself
        else:
            placed = self._placed_like_brainscore(stimulus_set, target_visual_degrees)
        for stimulus_id, index in zip(placed['stimulus_id'], rows):
            self._served[str(placed.get_stimulus(stimulus_id))] = (entry, int(index))
        return placed

    def screened(self, name: str, target_degrees: float) -> ScreenedSet:
        key = (name, float(target_degrees))
        if key not in self._sets:
            entry = screened_set(name, target_degrees, self.preprocessing, progress=self.progress)
            spot_check(entry, self.preprocessing)
            self._sets[key] = entry
        return self._sets[key]

    @staticmethod
    def _our_rows(stimulus_set) -> Optional[np.ndarray]:
        """For a set whose every image is one of our generated files: the generation row of each
        image. None for any other set."""
        name = getattr(stimulus_set, 'identifier', None)
        if name not in stimuli.STIMULUS_SET_NAMES or 'degrees' not in stimulus_set or \
                'stimulus_id' not in stimulus_set:
            return None
        if not (stimulus_set['degrees'].to_numpy() == stimuli.DEGREES).all():
            return None
        folder = stimuli.stimulus_set_dir(name)
        row_of = {str(folder / file_name): row
                  for row, file_name in enumerate(stimuli.stimulus_metadata(name)['image_file_name'])}
        try:
            rows = [row_of[str(stimulus_set.get_stimulus(stimulus_id))] for stimulus_id in stimulus_set['stimulus_id']]
        except (KeyError, AttributeError):
            return None
        return np.asarray(rows)

    @staticmethod
    def _placed_like_brainscore(stimulus_set, target_visual_degrees):
        """What Brain-Score's ``_place_on_screen`` returns for a set of one source size (its own code,
        less the conversion and writing of the image files)."""
        from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
        from brainscore_vision.benchmark_helpers import screen as brainscore_screen
        converted_id = f"{stimulus_set.identifier}--target{target_visual_degrees:.2f}--sourceNone"
        target_dir = brainscore_screen.root_path / converted_id
        paths = {stimulus_id: str(target_dir / os.path.basename(stimulus_set.get_stimulus(stimulus_id)))
                 for stimulus_id in stimulus_set['stimulus_id']}
        converted = StimulusSet(stimulus_set.copy(deep=True))
        converted.stimulus_paths = paths
        converted.identifier = converted_id
        converted['degrees'] = target_visual_degrees
        with warnings.catch_warnings():  # pandas warns about the attribute, as it does for Brain-Score's
            warnings.simplefilter('ignore', UserWarning)
            converted.original_paths = copy.deepcopy(stimulus_set.stimulus_paths)
        return converted


def supports(model) -> bool:
    """Whether ``model``'s preprocessing is ours and Brain-Score's transform has the expected form."""
    from ...preprocessing import BrainScorePreprocessing
    extractor = extractor_of(getattr(model, 'activations_model', None), missing_ok=True)
    preprocessing = getattr(extractor, 'preprocess', None)
    return isinstance(preprocessing, BrainScorePreprocessing) and preprocessing.supports_in_memory()


@contextmanager
def in_memory_screen(model, *, progress: bool = True):
    """Within: Brain-Score's property benchmarks place our stimulus sets on ``model``'s screen in memory
    and ``model`` reads them from memory (see the module docstring). Yields the InMemoryScreen, or
    None (and changes nothing) when ``model``'s preprocessing is not ours."""
    if not supports(model):
        yield None
        return
    from brainscore_vision.benchmark_helpers import properties_common
    extractor = extractor_of(model.activations_model)
    screen = InMemoryScreen(extractor.preprocess, progress=progress)
    original = properties_common.place_on_screen

    def place_on_screen(stimulus_set, target_visual_degrees, source_visual_degrees=None):
        return screen.place(stimulus_set, target_visual_degrees, source_visual_degrees, original=original)

    properties_common.place_on_screen, extractor.preprocess = place_on_screen, screen
    try:
        yield screen
    finally:
        properties_common.place_on_screen, extractor.preprocess = original, screen.preprocessing
