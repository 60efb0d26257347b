"""Read and write VOneNet checkpoints in the published training format, safely and with clear errors.

On the published-models floor: the catalogue loads published weights through the read half, training
writes its checkpoints through the write half, so a trained checkpoint loads as a published one does.
The format is ``{'flags': {...}, 'epoch': int, 'state_dict': {...}, 'optimizer': {...}}``, where
``flags`` are the training script's arguments (architecture, VOneBlock settings) and ``state_dict``
keys carry a ``module.`` prefix when the model was saved from ``nn.DataParallel``.

Nothing in a file is trusted before it is checked: the file is read with ``weights_only=True``
(no pickled code runs), every flag is checked for type and range, and the flags are checked
against the shapes of the tensors the file holds, all before a model is built. So a small forged
file cannot make ``get_model`` allocate more than the file itself holds, and every refusal names
the file, the flag or tensor at fault, and what is allowed. Writing is atomic (``paths.write_atomically``),
so an interrupted run never leaves half a checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from ..backends import classifier_of
from ..constants import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..devices import unwrap
from ..errors import CheckpointError
from ..model import VOneNet, build_vonenet
from ..paths import write_atomically
from ..seeding import SEED_LIMIT  # numpy's RandomState, which draws the Gabor parameters, takes seeds below this
from ..vone.block import VOneBlockConfig

logger = logging.getLogger(__name__)

# Keys that some published checkpoints carry but that the model does not use: the adversarially
# trained ResNet50 stores two normalisation layers that the original code drops on load too.
IGNORED_KEYS = ('vone_block.div_u.weight', 'vone_block.div_t.weight')

# How the training script's ``arch`` flag names each back-end.
ARCH_ALIASES = {'resnet50': 'resnet50', 'resnet50at': 'resnet50', 'resnet50ns': 'resnet50',
                'alexnet': 'alexnet', 'cornets': 'cornets'}

_CONFIG_DEFAULTS = {field.name: field.default for field in dataclasses.fields(VOneBlockConfig)}
_CONFIG_FIELDS = set(_CONFIG_DEFAULTS)

# --- Limits on checkpoint flags ---------------------------------------------------------------
# The published VOneNets all use simple_channels = complex_channels = 256, ksize 25, stride 4,
# image_size 224, visual_degrees 8, k_exc 25, noise_scale 0.35, noise_level 0.07 and 1000 classes.
# The limits below leave room for retrained variants (several times the published sizes) while
# keeping what a forged flag can ask for to the size of models people actually train:
MAX_CHANNELS = 4096  # per cell type: 16x the published 256
MAX_KSIZE = 255  # px: 10x the published 25, wider than the whole published 224 px input
# Weights of one filter bank per colour channel (channels x ksize^2): 16x the published 512 x 25^2,
# i.e. at most 61 MB (float32, 3 colour channels) per bank, whatever channels and ksize combine to.
MAX_FILTER_WEIGHTS = 16 * 512 * 25 * 25
MAX_STRIDE = 64  # px: 16x the published 4
# image_size: from constants' MIN_IMAGE_SIZE to MAX_IMAGE_SIZE px (2048 is 9x the published 224)
MAX_VISUAL_DEGREES = 180.0  # an eye sees less than a half-sphere; the published models use 8 deg
MAX_NUM_CLASSES = 50_000  # ImageNet-21k, the largest label set in use, has 21,841 classes

# The tensors whose shapes the VOneBlock flags determine, checked before anything is built.
FILTER_KEYS = ('vone_block.simple_conv_q0.weight', 'vone_block.simple_conv_q1.weight')
BOTTLENECK_KEY = 'bottleneck.weight'
BACKEND_PREFIX = 'model.'  # the back-end's keys (the VOneNet's module ``model``)

_NONE_NOISE = ('None', 'none', '')
_NOISE_MODES = (None, 'neuronal', 'gaussian')

# What the first bytes of a file say it is.
_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default format (and TorchScript archives)
_EMPTY_ZIP_MAGIC = b'PK\x05\x06'
_GZIP_MAGIC = b'\x1f\x8b'
# torch.save's legacy format starts with a protocol-2 pickle of this magic number.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a' + (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')
_HEAD_BYTES = 1024
AGAIN = 'delete it and download or copy the checkpoint again'
_UNSAFE_GLOBAL = re.compile(r'unsupported global:?\s*(?:GLOBAL\s+)?([\w.<>]+)', re.IGNORECASE)


def head_module(arch: Optional[str]) -> Optional[str]:
    """The classifier layer's path inside a VOneNet with back-end ``arch``, as its back-end registered it."""
    inner = classifier_of(arch)
    return None if inner is None else BACKEND_PREFIX + inner


def read_checkpoint(path, map_location='cpu', *, source: Optional[str] = None, advice: str = AGAIN) -> dict:
    """Read a checkpoint with ``weights_only=True`` and check it has the published layout.

    A file that is not one (missing, a folder, empty, truncated, an HTML page, text, a plain
    pickle, one that needs unsafe unpickling, ...) raises :class:`CheckpointError` saying which.
    ``source`` names the file in messages (default: its path); ``advice`` ends the message of a file
    that is damaged or not a checkpoint.
    """
    path = Path(path)
    name = source or str(path)
    _check_is_file(path, name)
    try:
        size = path.stat().st_size
        with open(path, 'rb') as file:
            head = file.read(_HEAD_BYTES)
    except OSError as error:
        raise CheckpointError(f"{name} cannot be read ({type(error).__name__}: {error.strerror or error}); "
                              f"check its permissions") from error
    _refuse_by_content(head, size, name, advice)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_error(error, head, size, name, advice) from error
    except Exception as error:  # the safe unpickler raises anything from EOFError to IndexError on garbage
        raise _damaged_error(error, head, size, name, advice) from error
    if not isinstance(checkpoint, Mapping) or 'state_dict' not in checkpoint:
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(f"{name} is a PyTorch file but not a VOneNet checkpoint: expected a dict with "
                              f"'flags' and 'state_dict', found {found}")
    return dict(checkpoint)


def _check_is_file(path: Path, name: str) -> None:
    if path.is_file():
        return
    if path.is_dir():
        candidates = _checkpoint_like(path)
        hint = f"; checkpoint-like files in it: {', '.join(candidates)}" if candidates else ''
        raise CheckpointError(f"{name} is a folder, but a checkpoint file is expected (a .pth.tar file in the "
                              f"published training format); pass the file itself{hint}")
    if path.is_symlink():
        raise CheckpointError(f"{name} is a broken symbolic link (to {path.readlink()}, which does not exist)")
    if path.exists():
        raise CheckpointError(f"{name} is not a regular file; a checkpoint file is expected")
    raise CheckpointError(f"checkpoint {name} does not exist")


def _checkpoint_like(folder: Path, limit: int = 5, scan: int = 1000) -> list:
    """Up to ``limit`` names of checkpoint-like files among the first ``scan`` entries of ``folder``."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for _, entry in zip(range(scan), entries):
                if entry.name.endswith(('.pth', '.pt', '.tar', '.ckpt')) and entry.is_file():
                    found.append(entry.name)
    except OSError:
        return []
    return sorted(found)[:limit]


def _refuse_by_content(head: bytes, size: int, name: str, again: str) -> None:
    """Refuse, unread, files whose first bytes show they cannot be a checkpoint."""
    if size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): an interrupted download or copy; {again}")
    if head.startswith(_ZIP_MAGIC):
        return  # torch.save's format; torch.load tells a damaged archive apart
    if head.startswith(b'\x80'):  # a pickle, protocol 2 or later
        if head.startswith(_LEGACY_MAGIC) or _LEGACY_MAGIC.startswith(head):
            return  # torch.save's legacy format (perhaps cut short, which torch.load reports)
        raise CheckpointError(
            f"{name} is a plain Python pickle, not a file written by torch.save; it is refused unread, "
            f"because unpickling it could run arbitrary code. Re-save the weights from a trusted session "
            f"with torch.save({{'flags': dict(flags), 'state_dict': model.state_dict()}}, path)")
    if head.startswith(_EMPTY_ZIP_MAGIC):
        raise CheckpointError(f"{name} is an empty zip archive, not a PyTorch checkpoint; {again}")
    if head.startswith(_GZIP_MAGIC):
        raise CheckpointError(f"{name} is gzip-compressed; decompress it (gunzip) and pass the checkpoint inside")
    text = head.lstrip(b'\xef\xbb\xbf \t\r\n').lower()
    if text.startswith(b'<') and (b'<html' in text or b'<!doctype' in text or b'<head' in text
                                  or b'<body' in text or b'<?xml' in text):
        raise CheckpointError(
            f"{name} is an HTML/XML page ({size} bytes), not a PyTorch checkpoint: a web server (a proxy, a login "
            f"or error page, or a wrong mirror URL) sent a page in place of the file. Starts with: "
            f"{_excerpt(head)}; {again}")
    if _looks_like_text(head):
        raise CheckpointError(f"{name} is a text file ({size} bytes), not a PyTorch checkpoint. Starts with: "
                              f"{_excerpt(head)}; {again}")
    if len(head) > 262 and head[257:262] == b'ustar':
        raise CheckpointError(f"{name} is a tar archive; extract it and pass the checkpoint inside (the published "
                              f"'.pth.tar' files are not tar archives)")


def _looks_like_text(head: bytes) -> bool:
    try:
        decoded = head.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return bool(decoded) and all(ch.isprintable() or ch in '\t\r\n\f' for ch in decoded[:200])


def _excerpt(head: bytes) -> str:
    return repr(head[:60].decode('utf-8', 'replace'))


def _unpickling_error(error: pickle.UnpicklingError, head: bytes, size: int, name: str,
                      again: str) -> CheckpointError:
    """Tell a file that needs unsafe unpickling (refused) from a damaged one."""
    message = str(error)
    needs = _UNSAFE_GLOBAL.search(message)
    if needs or 'Trying to call reduce' in message or 'Can only create new object' in message:
        what = needs.group(1) if needs else message.strip().splitlines()[-1][:120]
        blocked = 'is blocked' in message
        return CheckpointError(
            f"{name} is refused as unsafe: it holds Python objects ({what}) that only a full pickle load can "
            f"rebuild, and a full pickle load can run arbitrary code"
            f"{' (this one calls ' + what + ', which a checkpoint never needs: the file may be malicious)' if blocked else ''}. "
            f"It was loaded with torch.load(weights_only=True), which refused it; nothing in it ran. A VOneNet "
            f"checkpoint holds only tensors and plain values: if you trust the file, re-save it from a trusted "
            f"session as torch.save({{'flags': dict(flags), 'epoch': epoch, 'state_dict': model.state_dict()}}, path)")
    return _damaged_error(error, head, size, name, again)


def _damaged_error(error: BaseException, head: bytes, size: int, name: str, again: str) -> CheckpointError:
    message = str(error)
    if 'TorchScript' in message:
        return CheckpointError(f"{name} is a TorchScript archive (torch.jit.save), not a checkpoint in the published "
                               f"training format; load it with torch.jit.load, or save the model's state_dict")
    if head.startswith(_ZIP_MAGIC):
        what = 'its zip archive is incomplete or damaged'
    elif head.startswith(_LEGACY_MAGIC):
        what = 'a torch.save file in the legacy format that ends early or is damaged'
    else:
        return CheckpointError(f"{name} is corrupt or not a PyTorch checkpoint ({size:,} bytes starting with "
                               f"{head[:8].hex(' ')}; {type(error).__name__}: {_first_sentence(message)}); "
                               f"{again}")
    return CheckpointError(f"{name} is truncated or corrupt: {what} ({size:,} bytes; {type(error).__name__}: "
                           f"{_first_sentence(message) or 'the data ends early'}); {again}")


def _first_sentence(message: str) -> str:
    message = ' '.join(message.split())
    return message.split('. ')[0][:160]


def normalise_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Strip a DataParallel ``module.`` prefix and drop keys the model never used."""
    keys = list(state_dict)
    prefixed = bool(keys) and all(key.startswith('module.') for key in keys)
    return {(key[len('module.'):] if prefixed else key): value for key, value in state_dict.items()
            if (key[len('module.'):] if prefixed else key) not in IGNORED_KEYS}


# --- flag checks ------------------------------------------------------------------------------
class _Refusal(Exception):
    """What is wrong with one value, and what is allowed; worded into an error by the caller."""

    def __init__(self, problem: str, allowed: str):
        super().__init__(problem)
        self.problem, self.allowed = problem, allowed


def _integer(value, low: int, high: int, published=None) -> int:
    note = f' (the published models use {published})' if published is not None else ''
    allowed = f'an integer from {low} to {high}{note}'
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refusal(f'is a {type(value).__name__}, not an integer', allowed)
    if not low <= value <= high:
        raise _Refusal('is out of range', allowed)
    return value


def _real(value, low: float, high: float, published=None, low_open: bool = False) -> float:
    note = f' (the published models use {published})' if published is not None else ''
    allowed = f"a finite number {'above' if low_open else 'from'} {low}{' up to ' + str(high) if high != math.inf else ''}{note}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refusal(f'is a {type(value).__name__}, not a number', allowed)
    if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
        raise _Refusal('is out of range' if math.isfinite(value) else 'is not finite', allowed)
    return value


def _boolean(value, published=None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Refusal(f'is a {type(value).__name__}, not a boolean',
                   f"True or False{' (the published models use ' + str(published) + ')' if published is not None else ''}")


def _noise_mode(value):
    if value in _NONE_NOISE:
        return None
    if value in _NOISE_MODES:
        return value
    raise _Refusal('is not a known noise mode', "'neuronal', 'gaussian' or None (the published models use "
                                                "'neuronal'; the _ns ones None)")


def _odd_ksize(value) -> int:
    value = _integer(value, 1, MAX_KSIZE, 25)
    if value % 2 != 1:
        raise _Refusal('is even', f'an odd integer from 1 to {MAX_KSIZE}, so each filter has a centre pixel '
                                  f'(the published models use 25)')
    return value


_RULES = {
    'simple_channels': lambda v: _integer(v, 0, MAX_CHANNELS, 256),
    'complex_channels': lambda v: _integer(v, 0, MAX_CHANNELS, 256),
    'gabor_seed': lambda v: _integer(v, 0, SEED_LIMIT - 1, 0),
    'colour_seed': lambda v: _integer(v, 0, SEED_LIMIT - 1, 0),
    'rand_param': lambda v: _boolean(v, False),
    'sf_corr': lambda v: _real(v, -1, 1, 0.75),
    'sf_max': lambda v: _real(v, 0, 1000, 9, low_open=True),  # cycles/deg; primate acuity ends near 60
    'sf_min': lambda v: _real(v, 0, 1000, 0),
    'k_exc': lambda v: _real(v, 0, math.inf, 25, low_open=True),
    'noise_mode': _noise_mode,
    'noise_scale': lambda v: _real(v, 0, math.inf, 0.35),
    'noise_level': lambda v: _real(v, 0, math.inf, 0.07),
    'image_size': lambda v: _integer(v, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, 224),
    'visual_degrees': lambda v: _real(v, 0, MAX_VISUAL_DEGREES, 8, low_open=True),
    'ksize': _odd_ksize,
    'stride': lambda v: _integer(v, 1, MAX_STRIDE, 4),
}
assert set(_RULES) == _CONFIG_FIELDS, 'every VOneBlock setting needs a rule here'


def checkpoint_arch(flags: Mapping, source: str = 'checkpoint') -> str:
    """The back-end a checkpoint's ``arch`` flag names (one of ``ARCH_ALIASES``' values)."""
    raw_arch = flags.get('arch', flags.get('model_arch'))
    if raw_arch is None:
        raise CheckpointError(f"{source}: flags name no architecture ('arch'); flags: {sorted(map(str, flags))[:20]}")
    if not isinstance(raw_arch, str):
        raise CheckpointError(f"{source}: flag arch={raw_arch!r} is a {type(raw_arch).__name__}, not a name; "
                              f"allowed: one of {sorted(ARCH_ALIASES)}")
    key = raw_arch.replace('_', '').replace('-', '').lower()
    if key not in ARCH_ALIASES:
        raise CheckpointError(f"{source} is for architecture {raw_arch!r}, which this package does not "
                              f"build; known: {sorted(set(ARCH_ALIASES.values()))}")
    return ARCH_ALIASES[key]


def checked_settings(flags: Mapping, source: str = 'checkpoint', **overrides) -> dict:
    """The VOneBlock settings in ``flags`` with ``overrides`` on top, each checked for type and range.

    A bad flag raises :class:`CheckpointError` naming ``source``, the flag, its value and what is
    allowed; a bad override raises ``ValueError`` naming the argument; an unknown override ``TypeError``.
    """
    unknown = set(overrides) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(f"unknown VOneBlock setting(s) {sorted(unknown)}; valid settings: "
                        f"{', '.join(_CONFIG_DEFAULTS)}")
    settings, origin = {}, {}
    for name in _CONFIG_DEFAULTS:
        if name in overrides:
            value, where = overrides[name], 'argument'
        elif name in flags:
            value, where = flags[name], 'flag'
        else:
            continue
        try:
            settings[name] = _RULES[name](value)
        except _Refusal as refusal:
            if where == 'argument':
                raise ValueError(f"argument {name}={value!r} {refusal.problem}; allowed: {refusal.allowed}") from None
            raise CheckpointError(f"{source}: flag {name}={value!r} {refusal.problem}; allowed: {refusal.allowed}. "
                                  f"The file is refused before anything is built; were its flags edited?") from None
        origin[name] = where
    _check_combination(settings, origin, source)
    return settings


def _check_combination(settings: dict, origin: dict, source: str) -> None:
    """Checks that involve several settings; the message names each and where it came from."""
    value = lambda name: settings.get(name, _CONFIG_DEFAULTS[name])
    said = lambda *names: ', '.join(f"{n}={value(n)!r} ({origin.get(n, 'default')})" for n in names)

    def refuse(text):
        raise CheckpointError(f"{source}: {text}. The file is refused before anything is built")

    channels = value('simple_channels') + value('complex_channels')
    if channels < 1:
        refuse(f"{said('simple_channels', 'complex_channels')} leave the VOneBlock without channels; "
               f"allowed: at least one channel")
    if channels * value('ksize') ** 2 > MAX_FILTER_WEIGHTS:
        refuse(f"{said('simple_channels', 'complex_channels', 'ksize')} make filter banks of "
               f"{channels} x {value('ksize')}^2 = {channels * value('ksize') ** 2:,} weights per colour channel; "
               f"allowed: at most {MAX_FILTER_WEIGHTS:,} (16x the published 512 x 25^2)")
    if value('sf_min') >= value('sf_max'):
        refuse(f"{said('sf_min', 'sf_max')}: sf_min must be below sf_max (cycles/deg)")
    if value('noise_mode') == 'neuronal' and value('noise_scale') == 0:
        refuse(f"{said('noise_mode', 'noise_scale')}: neuronal noise divides by noise_scale, which must be above 0")
    if value('stride') > value('image_size'):
        refuse(f"{said('stride', 'image_size')}: the stride must not exceed the image size")


def config_from_flags(flags: Mapping, source: str = 'checkpoint', **overrides) -> tuple[str, VOneBlockConfig]:
    """Back-end name and VOneBlock settings from a checkpoint's ``flags`` (overrides win), all checked."""
    arch = checkpoint_arch(flags, source)
    settings = checked_settings(flags, source, **overrides)
    try:
        return arch, VOneBlockConfig().replace(**settings)
    except ValueError as error:
        raise CheckpointError(f"{source}: its VOneBlock settings are inconsistent: {error}") from error


def _num_classes_from_flags(flags: Mapping, source: str) -> int:
    """Size of the classifier head; published ImageNet checkpoints omit it (1000 classes)."""
    value = flags.get('num_classes', 1000)
    try:
        return _integer(value, 1, MAX_NUM_CLASSES, 1000)
    except _Refusal as refusal:
        raise CheckpointError(f"{source}: flag num_classes={value!r} {refusal.problem}; allowed: "
                              f"{refusal.allowed}") from None


def _state_dict(checkpoint: Mapping, source: str) -> dict:
    state_dict = checkpoint['state_dict']
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{source}: 'state_dict' must map parameter names to tensors, got "
                              f"{type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: 'state_dict' must map parameter names to tensors, but holds "
                                  f"{key!r}: {type(value).__name__}")
    return normalise_state_dict(state_dict)


def _check_shapes(state_dict: Mapping, arch: str, config: VOneBlockConfig, num_classes: int, source: str) -> None:
    """The flags must describe the tensors the file holds: checked before building, so a flag can never
    make the model larger than the file."""
    channels, k = config.out_channels, config.ksize
    for key in FILTER_KEYS:
        tensor = state_dict.get(key)
        if tensor is None:
            raise CheckpointError(f"{source} has no {key} (the VOneBlock's Gabor filters), so it is not a VOneNet "
                                  f"checkpoint; its state_dict holds e.g. {sorted(state_dict)[:4]}")
        if tuple(tensor.shape) != (channels, 3, k, k):
            raise CheckpointError(
                f"{source}: its settings describe {channels} Gabor filters (simple_channels="
                f"{config.simple_channels} + complex_channels={config.complex_channels}) of {k}x{k} px (ksize={k}), "
                f"but {key} has shape {tuple(tensor.shape)}; allowed: flags that match the weights. Were the "
                f"flags edited, or an override given that does not fit?")
    bottleneck = state_dict.get(BOTTLENECK_KEY)
    if bottleneck is not None and (bottleneck.dim() < 2 or bottleneck.shape[1] != channels):
        raise CheckpointError(f"{source}: its settings give {channels} VOneBlock channels but {BOTTLENECK_KEY} "
                              f"has shape {tuple(bottleneck.shape)}")
    head_key = f'{head_module(arch)}.weight'
    head = state_dict.get(head_key)
    if head is not None and head.shape[0] != num_classes:
        raise CheckpointError(f"{source}: flag num_classes={num_classes} (1000 when absent) but the classifier "
                              f"{head_key} has {head.shape[0]} outputs; set num_classes in the flags")


def check_checkpoint(checkpoint: Mapping, source: str = 'checkpoint', expected_arch: Optional[str] = None,
                     **overrides) -> tuple[str, VOneBlockConfig, int, dict]:
    """Everything :func:`model_from_checkpoint` checks before it builds: flags, architecture and the
    shapes the flags imply. Returns (arch, config, num_classes, normalised state_dict). Cheap: no model."""
    flags = checkpoint.get('flags')
    if flags is None:
        flags = {}
    if not isinstance(flags, Mapping):
        raise CheckpointError(f"{source}: 'flags' must be a dict of training arguments, got {type(flags).__name__}")
    arch = checkpoint_arch(flags, source)
    if expected_arch is not None and arch != expected_arch:
        raise CheckpointError(f"{source} is a {arch} checkpoint but a {expected_arch} model was requested; "
                              f"pick the matching model name or file")
    arch, config = config_from_flags(flags, source, **overrides)
    num_classes = _num_classes_from_flags(flags, source)
    state_dict = _state_dict(checkpoint, source)
    _check_shapes(state_dict, arch, config, num_classes, source)
    return arch, config, num_classes, state_dict


def model_from_checkpoint(checkpoint: Mapping, source: str = 'checkpoint', expected_arch: Optional[str] = None,
                          **overrides) -> VOneNet:
    """Build the model the checkpoint's flags describe and load its weights, strictly."""
    arch, config, num_classes, state_dict = check_checkpoint(checkpoint, source, expected_arch, **overrides)
    try:
        model = build_vonenet(arch, num_classes=num_classes, config=config, init_seed=0)  # weights overwritten below
    except ValueError as error:  # e.g. an sf range that leaves no bin of the published histogram
        raise CheckpointError(f"{source}: its VOneBlock settings cannot be built: {error}") from error
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


# --- writing ----------------------------------------------------------------------------------
CHECKPOINT_PATTERN = re.compile(r'^epoch_(\d+)\.pth\.tar$')


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
    state_dict = {f'module.{key}': value for key, value in unwrap(model).state_dict().items()}
    return {'flags': dict(flags), 'epoch': int(epoch), 'state_dict': state_dict,
            'optimizer': optimizer.state_dict()}


def save_checkpoint(path, checkpoint: dict) -> Path:
    """Write ``checkpoint`` atomically."""
    path = Path(path)
    write_atomically(path, lambda stream: torch.save(checkpoint, stream))
    return path
