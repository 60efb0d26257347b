"""The image folder a VOneNet is validated and trained on: ``<root>/<split>/<class>/<image>``.

The first step of training/ (data -> evaluate, train; distributed runs them over processes): scans a
split as torchvision's ImageFolder does, with its class order and image count, but names every skipped
entry in a :class:`DataWarning` and stops with a :class:`DataError` that names the folder or file at
fault. The transforms are the original recipe's: random resized crop and flip for training, the
published evaluation (preprocessing.evaluation_transform) otherwise.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..errors import DataError, DataWarning, StimulusError
from ..preprocessing import IMAGE_SIZE, MEAN, STD, evaluation_transform, load_image

logger = logging.getLogger(__name__)

# What torchvision's ImageFolder accepts as images (compared case-insensitively).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
_LISTED_NAMES = 10  # how many skipped entries a warning names before summarising the rest


class ImageFolderSplit(Dataset):
    """One split of an image folder, with torchvision ImageFolder's class order and attributes.

    Written out rather than taken from torchvision so that stray entries are named in a warning
    (torchvision skips files silently and takes hidden folders for classes) and empty classes or
    unreadable images stop with an error that names the folder or file.
    """

    def __init__(self, root, split: str = 'val', transform: Optional[Callable] = None):
        self.root = Path(root)
        self.split = split
        self.directory = self.root / split
        self.classes = _find_classes(self.root, split)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples = _find_samples(self.directory, self.classes)
        self.targets = [target for _, target in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform is not None else image), target


def _name_some(names: Sequence[str]) -> str:
    """A readable list of skipped names that stays short for folders with thousands of strays."""
    shown = ', '.join(repr(name) for name in names[:_LISTED_NAMES])
    rest = len(names) - _LISTED_NAMES
    return shown + (f' and {rest} more' if rest > 0 else '')


def _layout(root: Path, split: str) -> str:
    return (f"{root}/{split}/<class>/<image> (one folder per class, e.g. "
            f"{root}/{split}/n01440764/ILSVRC2012_val_00000293.JPEG)")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def _find_classes(root: Path, split: str) -> List[str]:
    """Sorted class-folder names of ``root/split``; other entries are skipped with a DataWarning."""
    directory = root / split
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; expected the layout {_layout(root, split)}")
    if not directory.is_dir():
        found = ', '.join(sorted(entry.name for entry in os.scandir(root))[:_LISTED_NAMES]) or 'nothing'
        raise DataError(f"no '{split}' folder at {directory} (found {found} in {root}); expected the layout "
                        f"{_layout(root, split)}")
    with os.scandir(directory) as entries:
        entries = sorted(entries, key=lambda entry: entry.name)
    classes = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith('.')]
    skipped = [entry.name for entry in entries if entry.name not in classes]
    shown = [f'{name} -> {os.readlink(directory / name)} (missing)'
             if os.path.islink(directory / name) and not os.path.exists(directory / name) else name for name in skipped]
    if not classes:
        loose_images = [name for name in skipped if _is_image_name(name)]
        if loose_images:
            raise DataError(f"{directory} holds {len(loose_images)} images but no class folders; sort them into "
                            f"one folder per class (for the ImageNet validation set, run valprep.sh in it); "
                            f"expected the layout {_layout(root, split)}")
        raise DataError(f"{directory} holds no class folders; expected the layout {_layout(root, split)}")
    if skipped:
        warnings.warn(f"skipping {len(skipped)} entries of {directory} that are not class folders: "
                      f"{_name_some(shown)}; move them out of the folder to silence this warning",
                      DataWarning, stacklevel=4)
    return classes


def _find_samples(directory: Path, classes: Sequence[str]) -> List[Tuple[str, int]]:
    """(path, class index) for every image, in torchvision ImageFolder's order and with its count.

    As torchvision does, each class folder is walked recursively, following symbolic links, and its
    images are taken folder by folder (folders in sorted path order, files sorted by name). What
    torchvision would take but cannot be an image of the class is skipped and named in one warning:
    files that are not images, hidden files and folders (e.g. macOS ``._*`` files,
    ``.ipynb_checkpoints``), symbolic links whose target is missing, and links back to a folder
    above them (which would make the walk endless).
    """
    samples: List[Tuple[str, int]] = []
    skipped: dict = {}
    nested = 0
    for index, name in enumerate(classes):
        images = _class_images(directory / name, name, skipped)
        if not images:
            raise DataError(f"class folder {name!r} ({directory / name}) holds no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)}); remove it if it is not a class (e.g. a leftover "
                            f"from unpacking the archive) or put its images in it")
        nested += sum(os.path.dirname(path) != os.path.join(directory, name) for path in images)
        samples.extend((path, index) for path in images)
    if nested:
        logger.info('%s: %d images in sub-folders of class folders are counted with their class, as '
                    "torchvision's ImageFolder counts them", directory, nested)
    if skipped:
        total = sum(len(names) for names in skipped.values())
        kinds = '; '.join(f'{len(names)} {kind}: {_name_some(names)}' for kind, names in skipped.items())
        warnings.warn(f"skipping {total} entries in the class folders of {directory}: {kinds}; remove or fix them "
                      f"to silence this warning", DataWarning, stacklevel=4)
    return samples


def _unreadable_folder(error: OSError) -> None:
    """os.walk's error handler: torchvision skips a folder it cannot list without a word; we stop."""
    raise DataError(f"cannot list the folder {error.filename} ({error.strerror}); its images would be left out. "
                    f"Make it readable (chmod a+rx) or move it out of the dataset") from error


def _class_images(folder: Path, name: str, skipped: dict) -> List[str]:
    """The image paths of one class folder, walked as torchvision's ``make_dataset`` walks it."""
    found, ancestors = [], {str(folder): {os.path.realpath(folder)}}
    for root, folders, files in os.walk(folder, onerror=_unreadable_folder, followlinks=True):
        above = ancestors.pop(root, set())
        relative = os.path.relpath(root, folder)
        shown = (lambda entry: f'{name}/{entry}') if relative == '.' else \
            (lambda entry: f'{name}/{relative}/{entry}')
        keep = []
        for sub in sorted(folders):
            path = os.path.join(root, sub)
            real = os.path.realpath(path)
            if sub.startswith('.'):
                skipped.setdefault('hidden folders', []).append(shown(sub) + '/')
            elif real in above:
                skipped.setdefault('links to a folder above them', []).append(f'{shown(sub)} -> {real}')
            else:
                keep.append(sub)
                ancestors[path] = above | {real}
        folders[:] = keep  # os.walk descends into these only
        images = []
        for file in sorted(files):
            path = os.path.join(root, file)
            if file.startswith('.'):
                skipped.setdefault('hidden files', []).append(shown(file))
            elif not file.lower().endswith(IMAGE_EXTENSIONS):
                skipped.setdefault('not images', []).append(shown(file))
            elif not os.path.exists(path):
                skipped.setdefault('links to missing files', []).append(f'{shown(file)} -> {os.readlink(path)}'
                                                                      if os.path.islink(path) else shown(file))
            elif not os.path.isfile(path):
                skipped.setdefault('not regular files', []).append(shown(file))
            else:
                images.append(path)
        found.append((root, images))
    return [path for _, images in sorted(found) for path in images]


def read_image(path) -> Image.Image:
    """An RGB image; a missing or unreadable file raises DataError naming it."""
    try:
        return load_image(path)
    except StimulusError as error:
        raise DataError(f"{error}; delete or replace the file and run again") from error


def training_transform(image_size: int = IMAGE_SIZE) -> Callable:
    """The original training augmentation (random resized crop, horizontal flip) and VOneNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def image_folder(root, split: str = 'val', *, image_size: int = IMAGE_SIZE, augment: Optional[bool] = None,
                 transform: Optional[Callable] = None) -> ImageFolderSplit:
    """One split of ``root`` with the training (``augment``, default for 'train') or evaluation transform.

    ``transform`` replaces both. Class indices follow the sorted folder names, as in torchvision's
    ImageFolder, so the 1000 ImageNet synset folders map to the standard output units.
    """
    if transform is None:
        augment = split == 'train' if augment is None else augment
        transform = training_transform(image_size) if augment else evaluation_transform(image_size)
    return ImageFolderSplit(root, split, transform)


def class_difference(first: Sequence[str], second: Sequence[str], first_name: str, second_name: str) -> str:
    """How two lists of class folders differ, for an error message: the names only one of them holds."""
    only_first, only_second = sorted(set(first) - set(second)), sorted(set(second) - set(first))
    text = (f"only in {first_name}: {_name_some(only_first) or 'none'}; "
            f"only in {second_name}: {_name_some(only_second) or 'none'}")
    return text + ('; same names, other order' if not only_first and not only_second else '')


def check_same_classes(train_classes: Sequence[str], val_classes: Sequence[str], root: Path) -> None:
    """Training labels are positions in the train folder: val must list the same class folders."""
    if list(val_classes) != list(train_classes):
        raise DataError(f"{root / 'val'} and {root / 'train'} hold different class folders "
                        f"({class_difference(train_classes, val_classes, 'train', 'val')}); the labels "
                        f"would not match. Make both hold the same classes")
