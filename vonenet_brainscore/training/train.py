"""Training (or fine-tuning) a VOneNet on an image folder with the original recipe.

The last step of training/: data.py gives the folders, models.py the network, resume.py what a resumed
run keeps, distributed.py the processes of a ``torchrun`` launch, evaluate.py the validation after each
epoch. The recipe (SGD with momentum 0.9, learning rate 0.1 divided by 10 every 20 epochs, weight decay
1e-4, 70 epochs, batch 256) has its defaults in recipe.py. After every epoch a checkpoint is written in
the published format (published/checkpoints.py), so ``get_model(name, weights_path=...)`` loads it.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..constants import DEFAULT_WORKERS
from ..errors import CheckpointError, DataError, VOneNetError
from ..model import VOneNet
from ..paths import writable_problem, write_atomically
from ..preprocessing import evaluation_transform
from ..published.checkpoints import checkpoint_dict, checkpoint_path, latest_checkpoint, save_checkpoint
from ..seeding import epoch_seeds
from ..vone.noise import noise_blocks
from .data import ImageFolderSplit, check_same_classes, image_folder, training_transform
from .distributed import Processes, per_process_batch, process_group, summed_over_processes, warnings_only_on_main
from .evaluate import validate_shard
from .models import model_for_training, num_outputs
from .recipe import TrainingSettings
from .resume import Resumed, check_resumed_classes, resolve_recipe, resume_run

logger = logging.getLogger(__name__)

HISTORY_FILE = 'history.json'


class OutputPathError(VOneNetError):
    """An output location that cannot be written (a file where a folder is needed, read-only, ...)."""


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
    if resume is not None:  # read first: contradictions are cheaper to find than a folder of images is to scan
        resumed, recipe = resume_run(resume, given, change_recipe, model, pretrained=pretrained,
                                     weights_path=weights_path, num_classes=num_classes, vone_settings=vone_settings)
    else:
        recipe, _, _ = resolve_recipe(given)
    settings = TrainingSettings(**recipe, workers=workers)
    with process_group(ngpus) as (processes, device):
        run = _Run(root, output_dir, settings, processes, device, progress and processes.is_main)
        with warnings_only_on_main(processes):
            train_set, val_set = _datasets(root, validate_each_epoch)
        network = _network(run, train_set, model, resumed, pretrained=pretrained, weights_path=weights_path,
                           num_classes=num_classes, vone_settings=vone_settings)
        _set_transforms(network, train_set, val_set)
        flags = _flags(run, network, model, train_set, resumed, weights_path=weights_path, ngpus=ngpus)
        return _train(run, network, train_set, val_set, resumed, flags)


@dataclass(frozen=True)
class _Run:
    """Where a run reads and writes, its recipe, and this process's place in it."""

    root: Path
    output_dir: Path
    settings: TrainingSettings
    processes: Processes
    device: torch.device
    progress: bool


def _datasets(root: Path, validate_each_epoch: bool):
    """The train split, and the val split when it exists and validation is asked for (same classes)."""
    train_set = image_folder(root, 'train', augment=True)
    val_set = image_folder(root, 'val', augment=False) if validate_each_epoch and (root / 'val').is_dir() else None
    if val_set is not None:
        check_same_classes(train_set.classes, val_set.classes, root)
    return train_set, val_set


def _network(run: _Run, train_set: ImageFolderSplit, model, resumed: Optional[Resumed], *, pretrained: bool,
             weights_path, num_classes: Optional[int], vone_settings: dict) -> VOneNet:
    """The resumed network (on the classes it was trained on), or a new one with a classifier for the folder."""
    n_classes = len(train_set.classes)
    if resumed is not None:
        check_resumed_classes(resumed, train_set.classes, run.root)
        logger.info('resuming from %s (epoch %d)', resumed.path, resumed.epoch)
        network = resumed.network
    else:
        network = model_for_training(model, num_classes=num_classes or n_classes, pretrained=pretrained,
                                     weights_path=weights_path, seed=run.settings.seed, progress=run.progress,
                                     **vone_settings)
    if num_outputs(network) < n_classes:
        raise DataError(f"{run.root / 'train'} has {n_classes} classes but the model has {num_outputs(network)} "
                        f"outputs; pass num_classes={n_classes} (or more)")
    return network


def _set_transforms(network: VOneNet, train_set: ImageFolderSplit, val_set: Optional[ImageFolderSplit]) -> None:
    """The folders' transforms at the network's image size (a resumed or fine-tuned one may differ)."""
    train_set.transform = training_transform(network.image_size)
    if val_set is not None:
        val_set.transform = evaluation_transform(network.image_size)


def _flags(run: _Run, network: VOneNet, model, train_set: ImageFolderSplit, resumed: Optional[Resumed], *,
           weights_path, ngpus: int) -> dict:
    """The checkpoints' flags: the original script's arguments, and what a resumed run must keep."""
    flags = {**(resumed.flags if resumed is not None else {}), 'arch': network.arch, **network.config.as_dict(),
             'num_classes': num_outputs(network), **run.settings.as_flags(), 'in_path': str(run.root),
             'ngpus': ngpus, 'world_size': run.processes.world_size, 'classes': list(train_set.classes)}
    flags.setdefault('model_name', model if isinstance(model, str) else network.arch)
    flags.setdefault('weights_path', None if weights_path is None else str(weights_path))
    return flags


def _train(run: _Run, network: VOneNet, train_set: ImageFolderSplit, val_set: Optional[ImageFolderSplit],
           resumed: Optional[Resumed], flags: dict) -> List[dict]:
    """The epochs, from the resumed one (or 0) to ``settings.epochs``: train, validate, write the checkpoint."""
    settings, processes, device = run.settings, run.processes, run.device
    network.to(device)
    for block in noise_blocks(network):
        block.noise_source.reseed(None)  # training noise from torch's RNG, which each epoch seeds
    runner: nn.Module = network
    if processes.distributed:
        runner = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == 'cuda' else None)
    optimizer = _optimizer(network, settings, resumed)
    start_epoch = resumed.epoch if resumed is not None else 0
    scheduler = _step_schedule(optimizer, settings, start_epoch)
    history = _start_history(run, resumed, start_epoch)
    batch_per_process = per_process_batch(settings.batch_size, processes)
    with _cudnn_benchmark(device):
        for epoch in tqdm(range(start_epoch, settings.epochs), desc='epochs', unit='epoch', disable=not run.progress):
            record = _run_epoch(runner, train_set, optimizer, epoch, run, batch_per_process)
            scheduler.step()
            if val_set is not None:
                record.update(validate_shard(network, val_set, processes, device, noise_seed=settings.seed,
                                             batch_size=settings.batch_size, workers=settings.workers,
                                             progress=run.progress))
            if processes.is_main:
                record['checkpoint'] = str(save_checkpoint(checkpoint_path(run.output_dir, epoch + 1),
                                                           checkpoint_dict(network, optimizer, epoch + 1, flags)))
            history.append(record)
            if processes.is_main:
                _write_history(run.output_dir, history)
                logger.info('epoch %d/%d: %s', epoch + 1, settings.epochs,
                            ', '.join(f'{key} {value:.4g}' for key, value in record.items()
                                      if isinstance(value, float)))
    return history


def _optimizer(network: VOneNet, settings: TrainingSettings, resumed: Optional[Resumed]) -> torch.optim.SGD:
    """SGD over the trainable parameters (not the fixed VOneBlock), with a resumed run's saved state."""
    trainable = [parameter for parameter in network.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    if resumed is None:
        return optimizer
    try:
        optimizer.load_state_dict(resumed.checkpoint['optimizer'])
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"the optimizer state in {resumed.path} does not fit the model: {error}") from error
    for name in {'momentum', 'weight_decay'} & resumed.changed:  # changed on purpose: the saved state has the old
        for group in optimizer.param_groups:
            group[name] = getattr(settings, name)
    return optimizer


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


def _start_history(run: _Run, resumed: Optional[Resumed], start_epoch: int) -> list:
    """The output folder made ready (rank 0), and the records of the epochs before ``start_epoch``."""
    if not run.processes.is_main:
        return []
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if resumed is None:
        if latest_checkpoint(run.output_dir) is not None:
            warnings.warn(f"{run.output_dir} already holds checkpoints; this run overwrites those of the same "
                          f"epochs (pass resume={str(run.output_dir)!r} to continue instead)", stacklevel=4)
        return []
    if start_epoch >= run.settings.epochs:
        warnings.warn(f"{resumed.path} is at epoch {start_epoch} and epochs={run.settings.epochs} is the total to "
                      f"reach: nothing to train; pass a larger epochs (--epochs) to continue", stacklevel=4)
    return _read_history(run.output_dir, start_epoch)


def _run_epoch(runner: nn.Module, train_set: Dataset, optimizer: torch.optim.Optimizer, epoch: int, run: _Run,
               batch_size: int) -> dict:
    """Seed, train one epoch, and sum its counts over processes."""
    settings, processes = run.settings, run.processes
    start = time.perf_counter()
    rng_seed, loader_seed = epoch_seeds(settings.seed, epoch, processes.rank)
    torch.manual_seed(rng_seed)
    loader = _training_loader(train_set, batch_size, settings.workers, settings.seed, loader_seed, epoch,
                              processes, run.device)
    lr_used = optimizer.param_groups[0]['lr']
    totals = _train_one_epoch(runner, loader, optimizer, run.device, run.progress,
                              description=f'epoch {epoch + 1}/{settings.epochs}')
    loss_sum, correct, count = summed_over_processes(totals, processes).tolist()
    return {'epoch': epoch + 1, 'lr': lr_used, 'train_loss': loss_sum / max(count, 1),
            'train_top1': correct / max(count, 1), 'n_train_images': int(count),
            'seconds': time.perf_counter() - start}


def _training_loader(dataset: Dataset, batch_size: int, workers: int, seed: int, loader_seed: int, epoch: int,
                     processes: Processes, device: torch.device) -> DataLoader:
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


@contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning for the fixed-size training batches (as the original), undone afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == 'cuda'
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


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
