"""Brain-Score identifiers of our brain models: the one naming rule, applied to the catalogue's names.

``vonenet_`` + catalogue name (``resnet50``, ``resnet50_at``, ...) + ``_nonoise`` when the VOneBlock
noise is off. Brain-Score's website refuses hyphens in model identifiers, so there are none. The
hyphenated names of earlier releases (``vonenet-resnet50-at-nonoise``) are recognised and mapped to
their replacement, which the error names. Every identifier, in the plugin files and the submission
zips too, comes from here. Light on purpose: no torch, no Brain-Score (the catalogue is light too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from ..errors import UnknownModelError
from .catalogue import CATALOGUE

PREFIX = 'vonenet_'
NONOISE_SUFFIX = '_nonoise'
UNTRAINED_TAG = '_untrained'
"""Appended to a model's identifier when it was built with an untrained back-end on purpose."""

MODEL_NAMES = tuple(CATALOGUE)
"""The catalogue names, in catalogue order."""


@dataclass(frozen=True)
class BrainModelSpec:
    """A Brain-Score identifier: which published model, and whether its VOneBlock noise is on."""

    identifier: str
    model: str
    noise: bool


def brain_identifier(model: str, noise: bool = True) -> str:
    """The Brain-Score identifier of catalogue model ``model`` with or without VOneBlock noise."""
    return PREFIX + model + ('' if noise else NONOISE_SUFFIX)


IDENTIFIERS: Dict[str, BrainModelSpec] = {
    brain_identifier(model, noise): BrainModelSpec(brain_identifier(model, noise), model, noise)
    for model in MODEL_NAMES for noise in (True, False)}


def _legacy_name(spec: BrainModelSpec) -> str:
    """How earlier releases spelled an identifier: hyphens throughout."""
    return spec.identifier.replace('_', '-')


LEGACY_NAMES: Dict[str, str] = {_legacy_name(spec): identifier for identifier, spec in IDENTIFIERS.items()}
"""``{old hyphenated name: its replacement}``."""


def list_identifiers() -> List[str]:
    """Every brain-model identifier, catalogue order, noise on before off."""
    return list(IDENTIFIERS)


def spec(identifier: str) -> BrainModelSpec:
    """The spec of a brain-model identifier; an old hyphenated name raises an error naming its replacement."""
    if identifier in IDENTIFIERS:
        return IDENTIFIERS[identifier]
    if identifier in LEGACY_NAMES:
        raise UnknownModelError(f"{identifier!r} is the old hyphenated name of a brain model; it is now "
                                f"{LEGACY_NAMES[identifier]!r} (Brain-Score refuses hyphens in model identifiers)")
    raise UnknownModelError(f"unknown brain model {identifier!r}; available: {', '.join(IDENTIFIERS)}")


def resolve(name: str) -> str:
    """A brain-model identifier, or a catalogue name (``resnet50`` -> ``vonenet_resnet50``), as an identifier."""
    if name in MODEL_NAMES:
        return brain_identifier(name)
    return spec(name).identifier
