"""ImageNet-style validation and training of VOneNets on an image folder ``<root>/<split>/<class>/<image>``.

Validation is the published evaluation (resize to 256/224 of the model's image size, centre crop,
mean = std = 0.5); training is the original recipe (random resized crop and flip, SGD with momentum
0.9, learning rate 0.1 divided by 10 every 20 epochs, weight decay 1e-4, 70 epochs, batch 256).
Training writes a checkpoint in the published format after every epoch, so
``get_model(name, weights_path=...)`` loads it. Several GPUs (or CPU processes) train with
DistributedDataParallel when the script runs under ``torchrun``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as torch_dist
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms
from tqdm.auto import tqdm

from ..errors import CheckpointError, DataError, DataWarning, DeviceError, StimulusError, VOneNetError
from ..constants import DEFAULT_WORKERS  # noqa: F401  (re-exported: the CLI and tests read it here too)
from ..paths import writable_problem, write_atomically
from ..model import VOneNet, build_vonenet
from ..preprocessing import IMAGE_SIZE, MEAN, STD, evaluation_transform, load_image
from ..seeding import epoch_seeds
from ..vone.noise import noise_blocks, seeded_noise
from .recipe import CLI_FLAGS, FLAG_NAMES, RECIPE_ARGUMENTS, TrainingSettings  # noqa: F401 (TrainingSettings: tests read it here)
from ..published.checkpoints import ARCH_ALIASES, model_from_checkpoint, read_checkpoint
from ..published.catalogue import get_model, model_record

logger = logging.getLogger(__name__)

# What torchvision's ImageFolder accepts as images (compared case-insensitively).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
SPLITS = ('train', 'val')
CHECKPOINT_PATTERN = re.compile(r'^epoch_(\d+)\.pth\.tar$')
HISTORY_FILE = 'history.json'
# The classifier layer of each registered back-end, as a path inside the VOneNet.
CLASSIFIER_MODULES = {'resnet50': 'model.fc', 'alexnet': 'model.classifier.6', 'cornets': 'model.decoder.linear'}
_LISTED_NAMES = 10  # how many skipped entries a warning names before summarising the rest


# --- the image folder --------------------------------------------------------------------------------

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


# --- devices -----------------------------------------------------------------------------------------

def resolve_device(ngpus: int = 0, device=None) -> torch.device:
    """``device`` when given, else the CPU for ``ngpus=0`` and the first GPU otherwise (checked to exist)."""
    if device is not None:
        return torch.device(device)
    if ngpus < 0:
        raise ValueError(f"ngpus must be >= 0, got {ngpus}")
    if ngpus == 0:
        return torch.device('cpu')
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < ngpus:
        raise DeviceError(f"{ngpus} GPU(s) requested but {available} available to torch {torch.__version__} "
                          f"(CUDA {torch.version.cuda}); use ngpus=0 to run on the CPU, or fewer GPUs")
    return torch.device('cuda', 0)


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


# --- validation --------------------------------------------------------------------------------------

def _evenly_spaced(total: int, count: Optional[int]) -> List[int]:
    """Indices of ``count`` images spread over all classes (the folder is ordered class by class)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, num=max(1, count)).round().astype(int).tolist()))


def _evaluation_totals(model: nn.Module, dataset: Dataset, n_classes: int, *, batch_size: int, workers: int,
                       device: torch.device, progress: bool, description: str = 'validate') -> dict:
    """Summed loss, top-1 and top-k hits over ``dataset`` (k = 5, or the number of outputs if fewer)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == 'cuda', generator=torch.Generator().manual_seed(0))
    totals = {'loss_sum': 0.0, 'top1_hits': 0, 'topk_hits': 0, 'n_images': 0, 'k': None, 'n_outputs': None}
    with torch.no_grad():
        for images, targets in tqdm(loader, desc=description, unit='batch', disable=not progress, leave=False):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = model(images)
            if totals['k'] is None:
                totals['n_outputs'] = _check_outputs(logits.shape[1], n_classes)
                totals['k'] = min(5, logits.shape[1])
            hits = logits.topk(totals['k'], dim=1).indices.eq(targets[:, None])
            totals['loss_sum'] += F.cross_entropy(logits, targets, reduction='sum').item()
            totals['top1_hits'] += int(hits[:, 0].sum())
            totals['topk_hits'] += int(hits.any(dim=1).sum())
            totals['n_images'] += len(targets)
    return totals


def _check_outputs(n_outputs: int, n_classes: int) -> int:
    """Labels are folder positions; they must index the model's outputs to mean anything."""
    if n_outputs < n_classes:
        raise DataError(f"the folder has {n_classes} classes but the model has {n_outputs} outputs; "
                        f"fine-tune it for {n_classes} classes (train(..., num_classes={n_classes})) first")
    if n_outputs != n_classes:
        warnings.warn(f"the folder has {n_classes} classes and the model {n_outputs} outputs: label i is the "
                      f"i-th class folder in sorted order, which matches output i only if the model was "
                      f"trained on these folders", DataWarning, stacklevel=4)
    return n_outputs


def validate(model: nn.Module, root, *, split: str = 'val', batch_size: int = 128, workers: int = DEFAULT_WORKERS,
             ngpus: int = 0, device=None, noise_seed: Optional[int] = 0, max_images: Optional[int] = None,
             progress: bool = True) -> dict:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` on ``<root>/<split>``.

    Runs on the CPU by default; ``ngpus=1`` on the first GPU, ``ngpus>1`` with ``nn.DataParallel``
    over that many GPUs; ``device`` picks one device explicitly. The model is moved to the device
    and evaluated in eval mode (its previous mode is restored). ``noise_seed`` restarts the
    VOneBlock noise so runs are reproducible (None: the model's own noise stream). ``max_images``
    evaluates an evenly spaced subset, for a quick check. Top-5 becomes top-k with k = the number
    of outputs when there are fewer than 5 (reported as ``topk``).
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive integer or None (all images), got {max_images!r}")
    device = resolve_device(ngpus, device)
    network = _unwrap(model)
    dataset = image_folder(root, split, image_size=getattr(network, 'image_size', IMAGE_SIZE), augment=False)
    subset = dataset if max_images is None else Subset(dataset, _evenly_spaced(len(dataset), max_images))
    network.to(device)
    runner = model
    if ngpus > 1 and device.type == 'cuda' and not isinstance(model, nn.DataParallel):
        runner = nn.DataParallel(network, device_ids=list(range(ngpus)))
    was_training = network.training
    network.eval()
    start = time.perf_counter()
    try:
        with seeded_noise(network, noise_seed):
            totals = _evaluation_totals(runner, subset, len(dataset.classes), batch_size=batch_size,
                                        workers=workers, device=device, progress=progress,
                                        description=f'validate {split}')
    finally:
        network.train(was_training)
    seconds = time.perf_counter() - start
    result = _summarise(totals, seconds)
    result.update(n_classes=len(dataset.classes), split=split, root=str(dataset.root), device=str(device),
                  noise_seed=noise_seed)
    logger.info('%s: top-1 %.4f, top-%d %.4f, loss %.4f over %d images (%.1f s)', dataset.directory,
                result['top1'], result['topk'], result['top5'], result['loss'], result['n_images'], seconds)
    return result


def _summarise(totals: dict, seconds: float) -> dict:
    """Accuracies and mean loss from summed counts."""
    n = max(totals['n_images'], 1)
    return {'top1': totals['top1_hits'] / n, 'top5': totals['topk_hits'] / n, 'topk': totals['k'] or 5,
            'loss': totals['loss_sum'] / n, 'n_images': totals['n_images'], 'n_outputs': totals['n_outputs'],
            'seconds': seconds, 'images_per_second': totals['n_images'] / seconds if seconds > 0 else float('nan')}


# --- models for training -----------------------------------------------------------------------------

def classifier_path(model: VOneNet) -> str:
    """Where the classifier layer sits: the registered back-end's head, else the last ``nn.Linear``."""
    if model.arch in CLASSIFIER_MODULES:
        return CLASSIFIER_MODULES[model.arch]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to resize")
    return linears[-1]


def replace_classifier(model: VOneNet, num_classes: int, seed: Optional[int] = 0) -> VOneNet:
    """Give ``model`` a new, seeded classifier layer with ``num_classes`` outputs (in place).

    The layer keeps its name, so the checkpoint keys stay those of the published models.
    """
    path = classifier_path(model)
    old = model.get_submodule(path)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent, _, name = path.rpartition('.')
    setattr(model.get_submodule(parent), name, new.to(old.weight.device, old.weight.dtype))
    logger.info('replaced the classifier %s: %d -> %d outputs', path, old.out_features, num_classes)
    return model


def num_outputs(model: VOneNet) -> int:
    return model.get_submodule(classifier_path(model)).out_features


def model_for_training(model: Union[str, VOneNet] = 'resnet50', *, num_classes: int = 1000, pretrained: bool = False,
                       weights_path=None, seed: int = 0, progress: bool = True, **vone_settings) -> VOneNet:
    """The network to train: a published name built untrained (seeded), or fine-tuned from its weights.

    ``pretrained=True`` starts from the published weights, ``weights_path`` from a checkpoint in the
    published format; the classifier is replaced when ``num_classes`` differs from it. A VOneNet
    instance is used as it is (its back-end must be a registered one, so checkpoints can load).
    """
    if isinstance(model, VOneNet):
        if pretrained or weights_path is not None or vone_settings:
            raise ValueError("pass either a model instance or a published name with pretrained/weights_path/"
                             "VOneBlock settings, not both")
        if model.arch not in set(ARCH_ALIASES.values()):
            raise ValueError(f"checkpoints of this model could not be loaded: its back-end {model.arch!r} is not "
                             f"one of {sorted(set(ARCH_ALIASES.values()))}")
        network = model
    elif pretrained or weights_path is not None:
        network = get_model(model, weights_path=weights_path, progress=progress, **vone_settings)
    else:
        record = model_record(model)
        network = build_vonenet(record.arch, num_classes=num_classes, init_seed=seed,
                                **{**record.vone_settings, **vone_settings})
    if num_outputs(network) != num_classes:
        replace_classifier(network, num_classes, seed=seed)
    return network.train()


# --- checkpoints -------------------------------------------------------------------------------------

def checkpoint_path(output_dir, epoch: int) -> Path:
    """The original training script's file name for the weights after ``epoch`` epochs."""
    return Path(output_dir) / f'epoch_{epoch:02d}.pth.tar'


def latest_checkpoint(output_dir) -> Optional[Path]:
    """The checkpoint with the highest epoch in ``output_dir``, or None."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    found = [(int(match.group(1)), directory / name) for name in os.listdir(directory)
             if (match := CHECKPOINT_PATTERN.match(name))]
    return max(found)[1] if found else None


def checkpoint_dict(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, flags: dict) -> dict:
    """The published layout: flags, epoch, 'module.'-prefixed state_dict (as saved from DataParallel), optimizer."""
    state_dict = {f'module.{key}': value for key, value in _unwrap(model).state_dict().items()}
    return {'flags': dict(flags), 'epoch': int(epoch), 'state_dict': state_dict,
            'optimizer': optimizer.state_dict()}


def save_checkpoint(path, checkpoint: dict) -> Path:
    """Write ``checkpoint`` atomically."""
    path = Path(path)
    write_atomically(path, lambda stream: torch.save(checkpoint, stream))
    return path


def _write_history(output_dir: Path, history: list) -> None:
    text = json.dumps(history, indent=1).encode()
    write_atomically(output_dir / HISTORY_FILE, lambda stream: stream.write(text))


def _read_history(output_dir: Path, before_epoch: int) -> list:
    """Epoch records of an earlier run, up to the epoch training resumes from."""
    path = output_dir / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        return [record for record in json.loads(path.read_text()) if record.get('epoch', 0) <= before_epoch]
    except (ValueError, AttributeError):
        logger.warning('%s is not readable history; starting a new one', path)
        return []


# --- training ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Processes:
    """This process's place in a ``torchrun`` launch (world_size 1 when not launched so)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    started_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _start_processes(ngpus: int) -> Tuple[_Processes, torch.device]:
    """Join the process group that ``torchrun`` set up (WORLD_SIZE/RANK/LOCAL_RANK), and pick this process's device.

    NCCL on GPUs (one per process, LOCAL_RANK), gloo on the CPU. Without torchrun, one process on
    the CPU (``ngpus=0``) or one GPU (``ngpus=1``).
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1 or 'RANK' not in os.environ:
        if ngpus > 1:
            raise DeviceError(f"training on {ngpus} GPUs runs one process per GPU: launch the script with "
                              f"`torchrun --nproc_per_node={ngpus} ...` and ngpus=1")
        return _Processes(), resolve_device(ngpus)
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if ngpus > 0:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= available:
            raise DeviceError(f"process {rank} needs GPU {local_rank} but {available} GPU(s) are visible; launch "
                              f"at most {available} processes per node, or use ngpus=0 for CPU processes")
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')
    started_here = not torch_dist.is_initialized()
    if started_here:
        torch_dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', init_method='env://')
    return _Processes(world_size, rank, local_rank, started_here), device


def _training_loader(dataset: Dataset, batch_size: int, workers: int, seed: int, loader_seed: int, epoch: int,
                     processes: _Processes, device: torch.device) -> DataLoader:
    """Shuffled batches: a seeded permutation, or this process's shard of it under torchrun.

    ``loader_seed`` (per process and epoch) drives the shuffle and the workers' seeds; under
    torchrun the permutation must be common to all processes, so it comes from ``seed`` and the epoch.
    """
    generator = torch.Generator().manual_seed(loader_seed)
    sampler = None
    if processes.distributed:
        sampler = DistributedSampler(dataset, num_replicas=processes.world_size, rank=processes.rank,
                                     shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == 'cuda', generator=generator)


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device,
                     progress: bool, description: str) -> torch.Tensor:
    """One pass of SGD; returns (summed loss, correct, images) for this process."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    bar = tqdm(loader, desc=description, unit='batch', disable=not progress, leave=False)
    for step, (images, targets) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().double() * len(targets),
                                   (logits.argmax(dim=1) == targets).sum().double(),
                                   torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f'{loss.item():.3f}')
    return totals


def _summed_over_processes(values: torch.Tensor, processes: _Processes) -> torch.Tensor:
    if processes.distributed:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


def _validate_during_training(network: VOneNet, dataset: ImageFolderSplit, settings: TrainingSettings,
                              processes: _Processes, device: torch.device, progress: bool) -> dict:
    """Validation after an epoch, each process on its share of the images, counts summed over processes."""
    n_classes = len(dataset.classes)
    shard = Subset(dataset, list(range(processes.rank, len(dataset), processes.world_size)))
    network.eval()
    start = time.perf_counter()
    try:
        with seeded_noise(network, settings.seed + processes.rank):
            totals = _evaluation_totals(network, shard, n_classes, batch_size=settings.batch_size,
                                        workers=settings.workers, device=device, progress=progress,
                                        description='validate val')
    finally:
        network.train()
    counts = torch.tensor([totals['loss_sum'], totals['top1_hits'], totals['topk_hits'], totals['n_images']],
                          dtype=torch.float64, device=device)
    loss_sum, top1, topk, n_images = _summed_over_processes(counts, processes).tolist()
    summary = _summarise({'loss_sum': loss_sum, 'top1_hits': top1, 'topk_hits': topk, 'n_images': int(n_images),
                          'k': totals['k'], 'n_outputs': totals['n_outputs']}, time.perf_counter() - start)
    return {'val_top1': summary['top1'], 'val_top5': summary['top5'], 'val_loss': summary['loss']}


def _check_same_classes(train_classes: Sequence[str], val_classes: Sequence[str], root: Path) -> None:
    """Training labels are positions in the train folder: val must list the same class folders."""
    if list(val_classes) != list(train_classes):
        missing = sorted(set(train_classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"{root / 'val'} and {root / 'train'} hold different class folders (only in train: "
                        f"{_name_some(missing) or 'none'}; only in val: {_name_some(extra) or 'none'}); the labels "
                        f"would not match. Make both hold the same classes")


@contextmanager
def _warnings_only_on_main(processes: _Processes) -> Iterator[None]:
    """Every process scans the folders; one set of warnings is enough."""
    if processes.is_main:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DataWarning)
        yield


def _resume_state(resume) -> Tuple[Path, dict]:
    """The checkpoint to resume from: a file, or the latest ``epoch_NN.pth.tar`` in a folder."""
    path = Path(resume)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no epoch_NN.pth.tar checkpoint in {path} to resume from")
        path = found
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint.get('optimizer'), dict) or not checkpoint.get('optimizer') \
            or not isinstance(checkpoint.get('epoch'), int):
        raise CheckpointError(f"{path} has no optimizer state or epoch, so training cannot resume from it; "
                              f"fine-tune from it instead (weights_path={str(path)!r})")
    return path, checkpoint


def _step_schedule(optimizer: torch.optim.Optimizer, settings: TrainingSettings,
                   start_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate lr * step_factor ** (epoch // step_size), positioned at ``start_epoch``.

    The closed form (as the original's ``StepLR.step(epoch=...)``) puts a resumed run at exactly
    the rate of an uninterrupted one, whatever rate the saved optimizer state holds.
    """
    for group in optimizer.param_groups:
        group['initial_lr'] = settings.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: settings.step_factor ** (epoch // settings.step_size), last_epoch=start_epoch - 1)


def _resolve_batch_size(batch_size: int, processes: _Processes) -> int:
    """Per-process batch: the global batch split over the processes, as the single-process recipe sees it."""
    per_process = max(1, batch_size // processes.world_size)
    if per_process * processes.world_size != batch_size and processes.is_main:
        warnings.warn(f"batch_size {batch_size} does not divide over {processes.world_size} processes; each "
                      f"takes {per_process} (global batch {per_process * processes.world_size})", stacklevel=3)
    return per_process


class OutputPathError(VOneNetError):
    """An output location that cannot be written (a file where a folder is needed, read-only, ...)."""


def check_output_dir(path, what: str = 'output_dir') -> Path:
    """Fail now, not after an epoch, if ``path`` cannot become a folder to write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is an existing file, not a folder; give a folder for the checkpoints "
                              f"(it is created if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    problem = writable_problem(existing)
    if problem:
        raise OutputPathError(f"{what} {path} cannot be written: {problem} in {existing}; choose a writable "
                              f"location")
    return path


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def _recipe_flag(flags: dict, name: str, source: Path):
    """A recipe value from a checkpoint's flags (None when absent), checked as TrainingSettings checks it."""
    flag = FLAG_NAMES.get(name, name)
    if flag not in flags or flags[flag] is None:
        return None
    value, default = flags[flag], getattr(TrainingSettings, name)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int) and number and float(value).is_integer():
        value = int(value)
    try:
        dataclasses.replace(TrainingSettings(), **{name: value})
        valid = number and isinstance(value, type(default)) or (isinstance(default, float) and number)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(f"{source}: flag {flag}={flags[flag]!r} is not a valid {name}; pass {name} "
                              f"({CLI_FLAGS[name]}) to set it for the resumed run")
    return float(value) if isinstance(default, float) else value


def _resolve_recipe(given: dict, checkpoint: Optional[dict], source: Optional[Path], change_recipe: bool,
                    contradictions: List[Tuple[str, object, object]]) -> Tuple[dict, List[str]]:
    """The recipe of this run: given values, else (on resume) the checkpoint's, else the defaults.

    On resume a given value that differs from the checkpoint's is a contradiction unless
    ``change_recipe``; ``epochs`` is always free: it is the total to reach, so it only sets where the
    run stops. Returns the recipe and the changes made on purpose.
    """
    recipe, changes = {}, []
    flags = dict(checkpoint.get('flags') or {}) if checkpoint is not None else {}
    for name in RECIPE_ARGUMENTS:
        value = given[name]
        try:
            saved = _recipe_flag(flags, name, source) if checkpoint is not None else None
        except CheckpointError:
            if value is None:
                raise
            saved = None  # a broken flag is replaced by the value given, without a contradiction
        if value is None:
            recipe[name] = saved if saved is not None else getattr(TrainingSettings, name)
            continue
        recipe[name] = value
        if saved is None or name == 'epochs' or _same(saved, value):
            continue
        if change_recipe:
            changes.append(f'{name} {saved!r} -> {value!r}')
        else:
            contradictions.append((name, saved, value))
    return recipe, changes


def _structural_contradictions(network: VOneNet, flags: dict, model, pretrained: bool, weights_path,
                               num_classes: Optional[int], vone_settings: dict) -> List[Tuple[str, object, object]]:
    """What the arguments ask for that the resume checkpoint's weights fix otherwise."""
    found = []
    if pretrained:
        found.append(('pretrained', 'the weights of this checkpoint', 'the published weights'))
    if weights_path is not None:
        found.append(('weights_path', 'the weights of this checkpoint', str(weights_path)))
    expected = dict(vone_settings)
    if isinstance(model, VOneNet):
        if model.arch != network.arch:
            found.append(('model', f'a VOne{network.arch}', f'a VOne{model.arch} instance'))
        expected = {**model.config.as_dict(), **expected}
        if num_classes is None:
            num_classes = num_outputs(model)
    else:
        record = model_record(model)
        saved_name = flags.get('model_name')
        if record.arch != network.arch:
            found.append(('model', f'{saved_name or network.arch} ({network.arch} back-end)',
                          f'{model} ({record.arch} back-end)'))
        elif isinstance(saved_name, str) and saved_name in set(_catalogue_names()) and saved_name != model:
            found.append(('model', saved_name, model))
        expected = {**record.vone_settings, **expected}
    config = network.config.as_dict()
    for name, value in expected.items():
        if name in config and not _same(config[name], value):
            found.append((name, config[name], value))
    if num_classes is not None and num_classes != num_outputs(network):
        found.append(('num_classes', num_outputs(network), num_classes))
    return found


def _catalogue_names() -> List[str]:
    from ..published.catalogue import CATALOGUE
    return list(CATALOGUE)


def _refuse_contradictions(source: Path, structural: list, recipe: list) -> None:
    if not structural and not recipe:
        return
    lines = [f"  - {name} ({CLI_FLAGS.get(name, name)}): the checkpoint has {saved!r}, the arguments give {given!r}"
             for name, saved, given in structural + recipe]
    advice = []
    if structural:
        names = ', '.join(name for name, _, _ in structural)
        advice.append(f"{names} cannot change in a resumed run (the checkpoint's weights and optimizer state fix "
                      f"them): give the checkpoint's value or leave the argument out to continue the run, or start "
                      f"a new run that fine-tunes from the checkpoint (weights_path={str(source)!r}, --weights on "
                      f"the command line) in another output folder")
    if recipe:
        names = ', '.join(name for name, _, _ in recipe)
        advice.append(f"{names} can change on purpose (the model and optimizer state still fit; the remaining "
                      f"epochs then follow the new recipe, so the run no longer equals an uninterrupted one): "
                      f"pass change_recipe=True (--change-recipe), or leave {'it' if len(recipe) == 1 else 'them'} "
                      f"out to keep the checkpoint's value")
    raise CheckpointError(f"cannot resume from {source}: the arguments contradict the checkpoint\n" + '\n'.join(lines)
                          + '\n' + ''.join(f'{line}.\n' for line in advice).rstrip('\n'))


def train(root, output_dir, model: Union[str, VOneNet] = 'resnet50', *, pretrained: bool = False, weights_path=None,
          num_classes: Optional[int] = None, epochs: Optional[int] = None, batch_size: Optional[int] = None,
          lr: Optional[float] = None, momentum: Optional[float] = None, weight_decay: Optional[float] = None,
          step_size: Optional[int] = None, step_factor: Optional[float] = None, seed: Optional[int] = None,
          workers: int = DEFAULT_WORKERS, ngpus: int = 0, resume=None, change_recipe: bool = False,
          validate_each_epoch: bool = True, progress: bool = True, **vone_settings) -> List[dict]:
    """Train (or fine-tune) a VOneNet on ``<root>/train`` with the original recipe; returns per-epoch records.

    ``model``: a published name (``'resnet50'``, ``'alexnet'``, ``'cornets'``, ...) built untrained
    from ``seed``, or fine-tuned with ``pretrained=True`` / ``weights_path``; or a VOneNet instance.
    ``num_classes`` defaults to the number of class folders; a different classifier is replaced.
    VOneBlock settings (``noise_mode=None``, ``image_size=...``) are keyword arguments. The recipe
    (``epochs`` 70, ``batch_size`` 256, ``lr`` 0.1, ``momentum`` 0.9, ``weight_decay`` 1e-4,
    ``step_size`` 20, ``step_factor`` 0.1, ``seed`` 0) takes those defaults where left as None.

    After every epoch, ``output_dir/epoch_NN.pth.tar`` is written atomically in the published format
    (loadable with ``get_model(name, weights_path=...)``), and ``history.json``. ``resume`` (a
    checkpoint, or a folder: its latest) continues that run: model, optimizer, learning-rate
    position and epoch come from it, recipe values left as None come from its flags, and ``epochs``
    is the total to reach. Each epoch is seeded from (seed, epoch), so a resumed run equals an
    uninterrupted one. Arguments that contradict the checkpoint raise ``CheckpointError`` naming
    each: the back-end, VOneBlock settings, ``num_classes``, ``pretrained`` and ``weights_path``
    cannot change (the checkpoint's weights fix them); recipe values can with ``change_recipe=True``.

    ``ngpus=1`` trains on a GPU; several GPUs (or CPU processes) train with DistributedDataParallel
    when launched with ``torchrun --nproc_per_node=N`` (``batch_size`` is the global batch; only
    rank 0 writes files and shows progress). Records hold epoch, lr, train_loss, train_top1,
    n_train_images, seconds, and val_top1 / val_top5 / val_loss when ``<root>/val`` exists.
    """
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                 step_size=step_size, step_factor=step_factor, seed=seed)
    root, output_dir = Path(root), check_output_dir(output_dir)
    resumed = None
    contradictions: List[Tuple[str, object, object]] = []
    if resume is not None:  # read first: contradictions are cheaper to find than a folder of images is to scan
        resume_path, checkpoint = _resume_state(resume)
        network = model_from_checkpoint(checkpoint, source=str(resume_path))
        structural = _structural_contradictions(network, dict(checkpoint.get('flags') or {}), model, pretrained,
                                                weights_path, num_classes, vone_settings)
        recipe, changes = _resolve_recipe(given, checkpoint, resume_path, change_recipe, contradictions)
        _refuse_contradictions(resume_path, structural, contradictions)
        if changes:
            warnings.warn(f"resuming from {resume_path} with a changed recipe ({'; '.join(changes)}): the remaining "
                          f"epochs follow it, so the run no longer equals an uninterrupted one", stacklevel=2)
        resumed = (resume_path, checkpoint, network, {change.split(' ')[0] for change in changes})
    else:
        recipe, _ = _resolve_recipe(given, None, None, change_recipe, contradictions)
    settings = TrainingSettings(**recipe, workers=workers)
    processes, device = _start_processes(ngpus)
    try:
        return _train(root, output_dir, model, settings, processes, device, pretrained=pretrained,
                      weights_path=weights_path, num_classes=num_classes, resumed=resumed,
                      validate_each_epoch=validate_each_epoch, progress=progress and processes.is_main,
                      ngpus=ngpus, vone_settings=vone_settings)
    finally:
        if processes.started_here:
            torch_dist.destroy_process_group()


def _train(root: Path, output_dir: Path, model, settings: TrainingSettings, processes: _Processes,
           device: torch.device, *, pretrained: bool, weights_path, num_classes: Optional[int], resumed,
           validate_each_epoch: bool, progress: bool, ngpus: int, vone_settings: dict) -> List[dict]:
    """The body of ``train`` once the processes and the device are known."""
    with _warnings_only_on_main(processes):
        train_set = image_folder(root, 'train', augment=True)
        val_set = image_folder(root, 'val', augment=False) if validate_each_epoch and (root / 'val').is_dir() \
            else None
        if val_set is not None:
            _check_same_classes(train_set.classes, val_set.classes, root)
    n_classes = len(train_set.classes)

    start_epoch, previous_flags, checkpoint, resume, changed = 0, {}, None, None, set()
    if resumed is not None:
        resume, checkpoint, network, changed = resumed
        start_epoch, previous_flags = checkpoint['epoch'], dict(checkpoint.get('flags') or {})
        saved_classes = previous_flags.get('classes')
        if isinstance(saved_classes, list) and saved_classes != list(train_set.classes):
            missing = sorted(set(saved_classes) - set(train_set.classes))
            extra = sorted(set(train_set.classes) - set(saved_classes))
            raise DataError(f"{root / 'train'} does not hold the class folders that {resume} was trained on (only "
                            f"in the checkpoint: {_name_some(missing) or 'none'}; only in the folder: "
                            f"{_name_some(extra) or 'none'}{'; same names, other order' if not missing and not extra else ''}"
                            f"): label i would mean another class. Resume on the same dataset, or fine-tune "
                            f"from the checkpoint as a new run")
        logger.info('resuming from %s (epoch %d)', resume, start_epoch)
    else:
        network = model_for_training(model, num_classes=num_classes or n_classes, pretrained=pretrained,
                                     weights_path=weights_path, seed=settings.seed, progress=progress,
                                     **vone_settings)
    if num_outputs(network) < n_classes:
        raise DataError(f"{root / 'train'} has {n_classes} classes but the model has {num_outputs(network)} "
                        f"outputs; pass num_classes={n_classes} (or more)")
    train_set.transform = training_transform(network.image_size)
    if val_set is not None:
        val_set.transform = evaluation_transform(network.image_size)

    network.to(device)
    for block in noise_blocks(network):
        block.reseed_noise(None)  # training noise from torch's RNG, which each epoch seeds
    runner: nn.Module = network
    if processes.distributed:
        runner = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == 'cuda' else None)
    trainable = [parameter for parameter in network.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    if checkpoint is not None:
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"the optimizer state in {resume} does not fit the model: "
                                  f"{error}") from error
        for name in {'momentum', 'weight_decay'} & changed:  # changed on purpose: the saved state has the old
            for group in optimizer.param_groups:
                group[name] = getattr(settings, name)
    scheduler = _step_schedule(optimizer, settings, start_epoch)

    flags = {**previous_flags, 'arch': network.arch, **network.config.as_dict(), 'num_classes': num_outputs(network),
             **settings.as_flags(), 'in_path': str(root), 'ngpus': ngpus, 'world_size': processes.world_size,
             'classes': list(train_set.classes)}
    flags.setdefault('model_name', model if isinstance(model, str) else network.arch)
    flags.setdefault('weights_path', None if weights_path is None else str(weights_path))
    if processes.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if resumed is None and latest_checkpoint(output_dir) is not None:
            warnings.warn(f"{output_dir} already holds checkpoints; this run overwrites those of the same "
                          f"epochs (pass resume={str(output_dir)!r} to continue instead)", stacklevel=3)
    history = _read_history(output_dir, start_epoch) if resumed is not None and processes.is_main else []
    batch_per_process = _resolve_batch_size(settings.batch_size, processes)
    if start_epoch >= settings.epochs and processes.is_main:
        warnings.warn(f"{resume} is at epoch {start_epoch} and epochs={settings.epochs} is the total to reach: "
                      f"nothing to train; pass a larger epochs (--epochs) to continue", stacklevel=3)

    with _cudnn_benchmark(device):
        for epoch in tqdm(range(start_epoch, settings.epochs), desc='epochs', unit='epoch', disable=not progress):
            record = _run_epoch(runner, train_set, optimizer, epoch, settings, batch_per_process,
                                processes, device, progress)
            scheduler.step()
            if val_set is not None:
                record.update(_validate_during_training(network, val_set, settings, processes, device, progress))
            if processes.is_main:
                path = save_checkpoint(checkpoint_path(output_dir, epoch + 1),
                                       checkpoint_dict(network, optimizer, epoch + 1, flags))
                record['checkpoint'] = str(path)
                history.append(record)
                _write_history(output_dir, history)
                logger.info('epoch %d/%d: %s', epoch + 1, settings.epochs,
                            ', '.join(f'{key} {value:.4g}' for key, value in record.items()
                                      if isinstance(value, float)))
            else:
                history.append(record)
    return history


def _run_epoch(runner: nn.Module, train_set: Dataset, optimizer: torch.optim.Optimizer,
               epoch: int, settings: TrainingSettings, batch_size: int, processes: _Processes,
               device: torch.device, progress: bool) -> dict:
    """Seed, train one epoch, and sum its counts over processes."""
    start = time.perf_counter()
    rng_seed, loader_seed = epoch_seeds(settings.seed, epoch, processes.rank)
    torch.manual_seed(rng_seed)
    loader = _training_loader(train_set, batch_size, settings.workers, settings.seed, loader_seed, epoch,
                              processes, device)
    lr_used = optimizer.param_groups[0]['lr']
    totals = _train_one_epoch(runner, loader, optimizer, device, progress,
                              description=f'epoch {epoch + 1}/{settings.epochs}')
    loss_sum, correct, count = _summed_over_processes(totals, processes).tolist()
    return {'epoch': epoch + 1, 'lr': lr_used, 'train_loss': loss_sum / max(count, 1),
            'train_top1': correct / max(count, 1), 'n_train_images': int(count),
            'seconds': time.perf_counter() - start}


@contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning for the fixed-size training batches (as the original), undone afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == 'cuda'
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
