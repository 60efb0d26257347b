"""What a resumed training run takes from its checkpoint, and what it refuses to change.

Part of training/ (train.py calls it before it scans the image folder: contradictions are cheaper to
find than a folder of images is to scan). The recipe comes from the arguments, else the checkpoint's
flags, else the defaults in recipe.py; arguments that contradict the checkpoint raise
``CheckpointError`` naming each, with the command-line flag beside it.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Set, Tuple

from ..errors import CheckpointError, DataError
from ..model import VOneNet
from ..published.catalogue import CATALOGUE, model_record
from ..published.checkpoints import latest_checkpoint, model_from_checkpoint, read_checkpoint
from .data import class_difference
from .models import num_outputs
from .recipe import CLI_FLAGS, FLAG_NAMES, RECIPE_ARGUMENTS, TrainingSettings

Contradiction = Tuple[str, object, object]
"""(argument, the checkpoint's value, the value given)."""


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a run continues from, the model built from it, and the recipe values changed on purpose."""

    path: Path
    checkpoint: dict
    network: VOneNet
    changed: Set[str]

    @property
    def epoch(self) -> int:
        return self.checkpoint['epoch']

    @property
    def flags(self) -> dict:
        return dict(self.checkpoint.get('flags') or {})


def resume_run(resume, given: dict, change_recipe: bool, model, *, pretrained: bool, weights_path,
               num_classes: Optional[int], vone_settings: dict) -> Tuple[Resumed, dict]:
    """The checkpoint to continue from and this run's recipe; contradictions are refused here."""
    path, checkpoint = _resume_state(resume)
    network = model_from_checkpoint(checkpoint, source=str(path))
    structural = _structural_contradictions(network, dict(checkpoint.get('flags') or {}), model, pretrained,
                                            weights_path, num_classes, vone_settings)
    recipe, changes, contradictions = resolve_recipe(given, checkpoint, path, change_recipe)
    _refuse_contradictions(path, structural, contradictions)
    if changes:
        warnings.warn(f"resuming from {path} with a changed recipe ({'; '.join(changes)}): the remaining "
                      f"epochs follow it, so the run no longer equals an uninterrupted one", stacklevel=3)
    return Resumed(path, checkpoint, network, {change.split(' ')[0] for change in changes}), recipe


def check_resumed_classes(resumed: Resumed, classes: Sequence[str], root: Path) -> None:
    """Label i must mean the class it meant when the checkpoint was trained."""
    saved = resumed.flags.get('classes')
    if isinstance(saved, list) and saved != list(classes):
        raise DataError(f"{root / 'train'} does not hold the class folders that {resumed.path} was trained on "
                        f"({class_difference(saved, classes, 'the checkpoint', 'the folder')}): label i would "
                        f"mean another class. Resume on the same dataset, or fine-tune from the checkpoint as a "
                        f"new run")


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


def resolve_recipe(given: dict, checkpoint: Optional[dict] = None, source: Optional[Path] = None,
                   change_recipe: bool = False) -> Tuple[dict, List[str], List[Contradiction]]:
    """The recipe of this run: given values, else (on resume) the checkpoint's, else the defaults.

    On resume a given value that differs from the checkpoint's is a contradiction unless
    ``change_recipe``; ``epochs`` is always free: it is the total to reach, so it only sets where the
    run stops. Returns the recipe, the changes made on purpose and the contradictions.
    """
    recipe, changes, contradictions = {}, [], []
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
    return recipe, changes, contradictions


def _structural_contradictions(network: VOneNet, flags: dict, model, pretrained: bool, weights_path,
                               num_classes: Optional[int], vone_settings: dict) -> List[Contradiction]:
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
        elif isinstance(saved_name, str) and saved_name in CATALOGUE and saved_name != model:
            found.append(('model', saved_name, model))
        expected = {**record.vone_settings, **expected}
    config = network.config.as_dict()
    for name, value in expected.items():
        if name in config and not _same(config[name], value):
            found.append((name, config[name], value))
    if num_classes is not None and num_classes != num_outputs(network):
        found.append(('num_classes', num_outputs(network), num_classes))
    return found


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
