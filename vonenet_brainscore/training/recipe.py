"""The original training recipe: its hyper-parameters and their defaults, in one place (training/).

Imports nothing heavy, so the command line reads the defaults for its ``--help`` and ``train`` applies
them where an argument is left as None (a resumed run then keeps its checkpoint's value).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..constants import DEFAULT_WORKERS


@dataclass(frozen=True)
class TrainingSettings:
    """The original recipe's hyper-parameters; they are written into every checkpoint's flags."""

    epochs: int = 70
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 20
    step_factor: float = 0.1
    seed: int = 0
    workers: int = DEFAULT_WORKERS

    def __post_init__(self):
        for name in ('epochs', 'batch_size', 'step_size'):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.step_factor <= 0 or self.workers < 0 \
                or self.seed < 0:
            raise ValueError(f"invalid training settings {self}")

    def as_flags(self) -> dict:
        """Flag names of the original training script (``torch_seed`` for the seed)."""
        flags = dataclasses.asdict(self)
        flags['torch_seed'] = flags.pop('seed')
        flags['optimizer'] = 'stepLR'
        flags['normalization'] = 'vonenet'
        return flags


DEFAULTS = TrainingSettings()
"""The recipe's default values (``DEFAULTS.lr`` ...)."""

RECIPE_ARGUMENTS = ('epochs', 'batch_size', 'lr', 'momentum', 'weight_decay', 'step_size', 'step_factor', 'seed')
"""The recipe's hyper-parameters, as ``train`` takes them; each is written into the checkpoint's flags."""

FLAG_NAMES = {'seed': 'torch_seed'}
"""Where the original training script named a hyper-parameter otherwise in its flags."""

CLI_FLAGS = {'epochs': '--epochs', 'batch_size': '--batch-size', 'lr': '--lr', 'momentum': '--momentum',
             'weight_decay': '--weight-decay', 'step_size': '--step-size', 'step_factor': '--step-factor',
             'seed': '--seed', 'noise_mode': '--no-noise', 'image_size': '--image-size',
             'num_classes': '--num-classes', 'model': 'MODEL', 'pretrained': '--pretrained', 'weights_path': '--weights'}
"""How the command line spells the arguments a resume can contradict (named in the error next to them)."""
