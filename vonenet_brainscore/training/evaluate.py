"""Top-1 / top-k accuracy and mean cross-entropy of a VOneNet on an image folder (the published evaluation).

Part of training/: ``validate`` is the public evaluation of a model on a split (resize to 256/224 of
the model's image size, centre crop, mean = std = 0.5, from data.py); ``validate_shard`` is the same
count after each training epoch, each process of a ``torchrun`` launch on its share of the images.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..constants import DEFAULT_WORKERS
from ..devices import resolve_device, unwrap
from ..errors import DataError, DataWarning
from ..preprocessing import IMAGE_SIZE
from ..vone.noise import seeded_noise
from .data import ImageFolderSplit, image_folder
from .distributed import Processes, summed_over_processes

logger = logging.getLogger(__name__)


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


def _data_parallel(model: nn.Module, network: nn.Module, ngpus: int, device: torch.device) -> nn.Module:
    """``model`` as it is, or over ``ngpus`` GPUs with ``nn.DataParallel`` (unless it already is)."""
    if ngpus > 1 and device.type == 'cuda' and not isinstance(model, nn.DataParallel):
        return nn.DataParallel(network, device_ids=list(range(ngpus)))
    return model


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
    device = resolve_device(device, ngpus=ngpus)
    network = unwrap(model)
    dataset = image_folder(root, split, image_size=getattr(network, 'image_size', IMAGE_SIZE), augment=False)
    subset = dataset if max_images is None else Subset(dataset, _evenly_spaced(len(dataset), max_images))
    network.to(device)
    runner = _data_parallel(model, network, ngpus, device)
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


def validate_shard(network: nn.Module, dataset: ImageFolderSplit, processes: Processes, device: torch.device, *,
                   noise_seed: int, batch_size: int, workers: int, progress: bool) -> dict:
    """Validation after an epoch, each process on its share of the images, counts summed over processes."""
    n_classes = len(dataset.classes)
    shard = Subset(dataset, list(range(processes.rank, len(dataset), processes.world_size)))
    network.eval()
    start = time.perf_counter()
    try:
        with seeded_noise(network, noise_seed + processes.rank):
            totals = _evaluation_totals(network, shard, n_classes, batch_size=batch_size, workers=workers,
                                        device=device, progress=progress, description='validate val')
    finally:
        network.train()
    counts = torch.tensor([totals['loss_sum'], totals['top1_hits'], totals['topk_hits'], totals['n_images']],
                          dtype=torch.float64, device=device)
    loss_sum, top1, topk, n_images = summed_over_processes(counts, processes).tolist()
    summary = _summarise({'loss_sum': loss_sum, 'top1_hits': top1, 'topk_hits': topk, 'n_images': int(n_images),
                          'k': totals['k'], 'n_outputs': totals['n_outputs']}, time.perf_counter() - start)
    return {'val_top1': summary['top1'], 'val_top5': summary['top5'], 'val_loss': summary['loss']}
