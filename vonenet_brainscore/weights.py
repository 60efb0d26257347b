"""Load VOneNet checkpoints in the published training format, safely and with clear errors.

The format is ``{'flags': {...}, 'epoch': int, 'state_dict': {...}, 'optimizer': {...}}``, where
``flags`` are the training script's arguments (architecture, VOneBlock settings) and ``state_dict``
keys carry a ``module.`` prefix when the model was saved from ``nn.DataParallel``.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Mapping, Optional

import torch

from .errors import CheckpointError
from .model import VOneNet, build_vonenet
from .vone import VOneBlockConfig

logger = logging.getLogger(__name__)

# Keys that some published checkpoints carry but that the model does not use: the adversarially
# trained ResNet50 stores two normalisation layers that the original code drops on load too.
IGNORED_KEYS = ('vone_block.div_u.weight', 'vone_block.div_t.weight')

# How the training script's ``arch`` flag names each back-end.
ARCH_ALIASES = {'resnet50': 'resnet50', 'resnet50at': 'resnet50', 'resnet50ns': 'resnet50',
                'alexnet': 'alexnet', 'cornets': 'cornets'}

_CONFIG_FIELDS = {name for name in VOneBlockConfig.__dataclass_fields__}


def read_checkpoint(path, map_location='cpu') -> dict:
    """Read a checkpoint with ``weights_only=True`` and check it has the published layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        needs_pickle = [line.strip() for line in str(error).splitlines() if 'Unsupported global' in line]
        if needs_pickle:
            raise CheckpointError(
                f"{path} holds Python objects that only a full pickle load can rebuild "
                f"({needs_pickle[0].split('Unsupported global:')[-1].split(' was ')[0].strip()}); pickle can "
                f"run arbitrary code, so the file is refused. A VOneNet checkpoint holds only tensors and "
                f"plain values: re-save it from a trusted session as torch.save({{'flags': dict(flags), "
                f"'epoch': epoch, 'state_dict': model.state_dict()}}, path)") from error
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint; delete it and download or "
                              f"copy it again") from error
    except Exception as error:  # the safe unpickler raises anything from EOFError to IndexError on garbage
        raise CheckpointError(f"{path} is truncated, corrupt or not a PyTorch checkpoint ({error}); "
                              f"delete it and download or copy it again") from error
    if not isinstance(checkpoint, Mapping) or 'state_dict' not in checkpoint:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a VOneNet checkpoint: expected a dict with 'flags' and "
                              f"'state_dict', found {found}")
    return dict(checkpoint)


def normalise_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Strip a DataParallel ``module.`` prefix and drop keys the model never used."""
    keys = list(state_dict)
    prefixed = bool(keys) and all(key.startswith('module.') for key in keys)
    return {(key[len('module.'):] if prefixed else key): value for key, value in state_dict.items()
            if (key[len('module.'):] if prefixed else key) not in IGNORED_KEYS}


def config_from_flags(flags: Mapping, source: str = 'checkpoint', **overrides) -> tuple[str, VOneBlockConfig]:
    """Back-end name and VOneBlock settings from a checkpoint's ``flags`` (overrides win)."""
    raw_arch = flags.get('arch', flags.get('model_arch'))
    if raw_arch is None:
        raise CheckpointError(f"{source}: flags name no architecture ('arch'); flags: {sorted(flags)}")
    key = str(raw_arch).replace('_', '').replace('-', '').lower()
    if key not in ARCH_ALIASES:
        raise CheckpointError(f"{source} is for architecture {raw_arch!r}, which this package does not "
                              f"build; known: {sorted(set(ARCH_ALIASES.values()))}")
    settings = {name: flags[name] for name in _CONFIG_FIELDS if name in flags}
    if 'noise_mode' in settings and settings['noise_mode'] in ('None', 'none', ''):
        settings['noise_mode'] = None
    settings.update(overrides)
    return ARCH_ALIASES[key], VOneBlockConfig().replace(**settings)


def _num_classes_from_flags(flags: Mapping, source: str) -> int:
    """Size of the classifier head; published ImageNet checkpoints omit it (1000 classes)."""
    value = flags.get('num_classes', 1000)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: flag 'num_classes' must be a positive integer, got {value!r}")
    return value


def model_from_checkpoint(checkpoint: Mapping, source: str = 'checkpoint', expected_arch: Optional[str] = None,
                          **overrides) -> VOneNet:
    """Build the model the checkpoint's flags describe and load its weights, strictly."""
    flags = checkpoint.get('flags') or {}
    if not isinstance(flags, Mapping):
        raise CheckpointError(f"{source}: 'flags' must be a dict of training arguments, got {type(flags).__name__}")
    arch, config = config_from_flags(flags, source, **overrides)
    if expected_arch is not None and arch != expected_arch:
        raise CheckpointError(f"{source} is a {arch} checkpoint but a {expected_arch} model was requested; "
                              f"pick the matching model name or file")
    num_classes = _num_classes_from_flags(flags, source)
    model = build_vonenet(arch, num_classes=num_classes, config=config, init_seed=0)  # weights overwritten below
    state_dict = normalise_state_dict(checkpoint['state_dict'])
    result_keys = set(model.state_dict())
    missing = sorted(result_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - result_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit a VOne{arch} ({len(missing)} missing, {len(unexpected)} unexpected keys; "
            f"missing e.g. {missing[:3]}, unexpected e.g. {unexpected[:3]}). Is it a checkpoint of another "
            f"architecture, or were its flags edited?")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source} has tensors of the wrong shape for a VOne{arch} built from its "
                              f"flags: {error}") from error
    logger.info('loaded %s (arch=%s, epoch=%s)', source, arch, checkpoint.get('epoch'))
    return model
