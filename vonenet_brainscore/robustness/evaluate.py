"""Side-by-side robustness evaluation: clean accuracy, white-box PGD accuracy over perturbation
strengths, and common-corruption accuracy over severities, for several models on the same images.
The centre of robustness/: it runs attacks.py and corruptions.py on models.py's networks, on the
device devices.py picks, and report.py writes what it returns.

Defaults follow Dapello, Marques et al. (2020, NeurIPS): PGD with 64 steps of eps/4, 8 EOT noise
draws per step for stochastic models, L-inf/L2/L1 strengths around 1/1020, 0.15 and 40; ImageNet-C
corruptions at severities 1..5. Every model sees the same images, the same corrupted images and
the same seeds (paired comparison); stochastic models are scored with one seeded noise draw per
image.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..model import VOneNet
from ..seeding import derive_seed
from ..vone.noise import seeded_noise
from .attacks import (DEFAULT_EPS, L1_SPARSITY, NORMS, PAPER_EOT_DRAWS, PAPER_STEP_FRACTION, PAPER_STEPS,
                      check_norm, evaluation_mode, pgd)
from .corruptions import (BLUR_CORRUPTIONS, COMMON_CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES,
                          check_corruptions, corrupt_batch)

LOG = logging.getLogger(__name__)

AttackGrid = Tuple[str, Sequence[float]]
DEFAULT_ATTACKS: Tuple[AttackGrid, ...] = tuple((norm, DEFAULT_EPS[norm]) for norm in NORMS)
COLUMNS = ('model', 'family', 'kind', 'strength', 'accuracy', 'n', 'correct', 'group')
_CORRUPTION_GROUPS = {**{name: 'noise' for name in COMMON_CORRUPTIONS[:3]},
                      **{name: 'blur' for name in BLUR_CORRUPTIONS},
                      **{name: 'weather' for name in ('snow', 'frost', 'fog', 'brightness')},
                      **{name: 'digital' for name in ('contrast', 'elastic_transform', 'pixelate',
                                                       'jpeg_compression')},
                      **{name: 'extra' for name in EXTRA_CORRUPTIONS if name != 'gaussian_blur'}}


@dataclass(frozen=True)
class AttackSettings:
    """PGD settings shared by every attack in an evaluation (the paper's by default)."""

    steps: int = PAPER_STEPS
    step_fraction: float = PAPER_STEP_FRACTION
    eot_draws: int = PAPER_EOT_DRAWS
    random_start: bool = False
    l1_sparsity: float = L1_SPARSITY


def attack_family(norm: str) -> str:
    return f'pgd_{check_norm(norm)}'


def _check_models(models: Mapping[str, nn.Module]) -> None:
    """Models must be named and take [0, 1] images; a bare VOneNet expects normalised input."""
    if not models:
        raise ValueError("no models to evaluate; pass a dict name -> model")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"model {name!r} is a {type(model).__name__}, not a torch nn.Module")
        if isinstance(model, VOneNet):
            raise ValueError(f"model {name!r} is a bare VOneNet, which expects normalised input; attacks "
                             f"and corruptions act on [0, 1] pixels, so pass pixel_space_model(model)")


def _check_attacks(attacks: Sequence[AttackGrid]) -> List[Tuple[str, List[float]]]:
    """Canonical (norm, [eps...]) pairs; bad norms or strengths fail before any model runs."""
    checked = []
    for entry in attacks:
        try:
            norm, strengths = entry
        except (TypeError, ValueError):
            raise ValueError(f"each attack must be a (norm, [eps, ...]) pair, got {entry!r}") from None
        strengths = [float(eps) for eps in strengths]
        if any(not (eps >= 0 and math.isfinite(eps)) for eps in strengths):
            raise ValueError(f"attack strengths must be finite and >= 0, got {strengths} for {norm}")
        checked.append((check_norm(norm), strengths))
    return checked


def _batches(data: Union[Dataset, Iterable], batch_size: int) -> Iterable:
    """A dataset becomes an ordered DataLoader; a loader (any iterable of batches) is used as is."""
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def _count_batches(batches, max_images: Optional[int], batch_size: int) -> Optional[int]:
    """Number of batches for the progress bar, when it can be known."""
    try:
        total = len(batches)
    except TypeError:
        return None
    if max_images is not None:
        total = min(total, math.ceil(max_images / batch_size))
    return total


def predict_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    noise_seed: Optional[int]) -> torch.Tensor:
    """Per-image top-1 correctness, with the model's noise (if any) drawn from ``noise_seed``."""
    with torch.no_grad(), evaluation_mode(model), seeded_noise(model, noise_seed):
        return model(images).argmax(dim=1) == labels


class _Tally:
    """Correct/total counts per (model, family, kind, strength), in first-seen order."""

    def __init__(self):
        self.counts: Dict[tuple, List[int]] = OrderedDict()

    def add(self, key: tuple, correct: torch.Tensor) -> None:
        entry = self.counts.setdefault(key, [0, 0])
        entry[0] += int(correct.sum())
        entry[1] += int(correct.numel())

    def table(self) -> pd.DataFrame:
        records = [{'model': model, 'family': family, 'kind': kind, 'strength': strength,
                    'accuracy': correct / total if total else float('nan'), 'n': total, 'correct': correct,
                    'group': _CORRUPTION_GROUPS.get(family, kind)}
                   for (model, family, kind, strength), (correct, total) in self.counts.items()]
        # Rows grouped by model, then family, then strength (counts arrive batch by batch, interleaved).
        models = list(dict.fromkeys(record['model'] for record in records))
        families = list(dict.fromkeys(record['family'] for record in records))
        records.sort(key=lambda r: (models.index(r['model']), families.index(r['family']), r['strength']))
        return pd.DataFrame.from_records(records, columns=list(COLUMNS))


def evaluate_robustness(models: Mapping[str, nn.Module], data: Union[Dataset, Iterable],
                        attacks: Sequence[AttackGrid] = DEFAULT_ATTACKS, corruptions: Sequence[str] = (),
                        severities: Sequence[int] = SEVERITIES, *, eot_draws: int = PAPER_EOT_DRAWS,
                        steps: int = PAPER_STEPS, step_fraction: float = PAPER_STEP_FRACTION,
                        random_start: bool = False, l1_sparsity: float = L1_SPARSITY, seed: Optional[int] = 0,
                        device: Union[str, torch.device, None] = None, batch_size: int = 16,
                        max_images: Optional[int] = None, progress: bool = True) -> pd.DataFrame:
    """Accuracy of each model, clean, under PGD at every (norm, eps) and under every corruption at
    every severity: one row per (model, family, strength) with columns ``model, family`` ('clean',
    'pgd_linf', 'pgd_l2', 'pgd_l1' or a corruption name), ``kind`` ('clean', 'adversarial',
    'corruption'), ``strength`` (eps in [0, 1] pixel units, or severity; 0 for clean),
    ``accuracy, n, correct, group`` (corruption category).

    ``models`` maps names to networks taking [0, 1] images (``pixel_space_model``,
    ``plain_backend_model``); ``data`` is a dataset or loader of ([0, 1] image, label) batches,
    e.g. ImageFolder with Resize/CenterCrop/ToTensor and no Normalize. Corruptions are applied
    to those images, i.e. at the model's resolution before normalisation. Models are moved to
    ``device`` (None: CUDA if available). ``seed`` fixes attacks, noise draws and corruptions.
    """
    _check_models(models)
    attacks = _check_attacks(attacks)
    corruptions, severities = list(corruptions), [int(s) for s in severities]
    check_corruptions(corruptions, severities)
    settings = AttackSettings(steps, step_fraction, eot_draws, random_start, l1_sparsity)
    device = resolve_device(device, ngpus=None)  # None: CUDA when available, else the CPU
    for model in models.values():
        model.to(device)
    batches = _batches(data, batch_size)
    LOG.info("robustness of %s on %s: attacks %s, %d corruptions x severities %s, EOT draws %d",
             ', '.join(models), device, [(norm, eps) for norm, eps in attacks], len(corruptions),
             severities, eot_draws)
    tally, seen = _Tally(), 0
    progress_bar = tqdm(batches, desc='robustness', total=_count_batches(batches, max_images, batch_size),
                        disable=not progress)
    for batch_index, (images, labels) in enumerate(progress_bar):
        if max_images is not None:
            if seen >= max_images:
                break
            images, labels = images[:max_images - seen], labels[:max_images - seen]
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        _evaluate_batch(models, images, labels, batch_index, attacks, corruptions, severities, settings, seed,
                        tally)
        seen += len(images)
    progress_bar.close()
    if seen == 0:
        raise ValueError("the data yielded no images; check the dataset path and split")
    table = tally.table()
    for name in models:
        clean = table[(table.model == name) & (table.kind == 'clean')].accuracy.iloc[0]
        LOG.info("%s: clean accuracy %.3f on %d images", name, clean, seen)
    return table


def _batch_seed(seed: Optional[int], purpose: int, *keys: int) -> Optional[int]:
    """Seeds shared by all models and strengths for one batch (common random numbers)."""
    return None if seed is None else derive_seed(seed, purpose, *keys)


def _evaluate_batch(models: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                    batch_index: int, attacks, corruptions, severities, settings: AttackSettings,
                    seed: Optional[int], tally: _Tally) -> None:
    """Clean, adversarial and corrupted accuracy counts of one batch for every model."""
    low, high = float(images.min()), float(images.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"images must be in [0, 1] (got [{low:.3f}, {high:.3f}]); load them with ToTensor "
                         f"and no Normalize: the models normalise internally")
    eval_seed = _batch_seed(seed, 1, batch_index)
    for name, model in models.items():
        clean_correct = predict_correct(model, images, labels, eval_seed)
        tally.add((name, 'clean', 'clean', 0.0), clean_correct)
        for norm_index, (norm, strengths) in enumerate(attacks):
            attack_seed = _batch_seed(seed, 2, batch_index, norm_index)
            for eps in strengths:
                correct = clean_correct if eps == 0 else predict_correct(model, pgd(
                    model, images, labels, norm, eps, settings.steps, settings.step_fraction * eps,
                    settings.eot_draws, settings.random_start, attack_seed, settings.l1_sparsity), labels,
                    eval_seed)
                tally.add((name, attack_family(norm), 'adversarial', eps), correct)
    for corruption_index, corruption in enumerate(corruptions):
        for severity in severities:
            corrupted = corrupt_batch(images, corruption, severity,
                                      _batch_seed(seed, 3, batch_index, corruption_index, severity))
            for name, model in models.items():
                tally.add((name, corruption, 'corruption', float(severity)),
                          predict_correct(model, corrupted, labels, eval_seed))
