"""Name -> back-end: its constructor and where its classifier layer sits (back-ends floor).

A new back-end is a new module that registers itself here. The classifier path is the one source of
that fact: fine-tuning replaces the layer it names (training/models.py) and the published checkpoint
format checks its outputs against the ``num_classes`` flag (published/checkpoints.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torch import nn


@dataclass(frozen=True)
class Backend:
    """A registered back-end: ``constructor(num_classes=...)`` and its classifier's module path (or None)."""

    constructor: Callable[..., nn.Module]
    classifier: Optional[str] = None


_BACKENDS: Dict[str, Backend] = {}


def register_backend(name: str, classifier: Optional[str] = None):
    """Decorator: make ``build_backend(name)`` call the decorated constructor.

    ``classifier`` is the path of the final ``nn.Linear`` inside the back-end (e.g. ``'fc'``); without it,
    fine-tuning takes the back-end's last ``nn.Linear``.
    """
    def decorate(constructor):
        if name in _BACKENDS:
            raise ValueError(f"back-end {name!r} is registered twice")
        _BACKENDS[name] = Backend(constructor, classifier)
        return constructor
    return decorate


def list_backends() -> list:
    return sorted(_BACKENDS)


def classifier_of(name: Optional[str]) -> Optional[str]:
    """The classifier's path inside back-end ``name``, or None (unregistered, or registered without one)."""
    backend = _BACKENDS.get(name)
    return backend.classifier if backend is not None else None


def build_backend(name: str, num_classes: int = 1000) -> nn.Module:
    """A fresh, randomly initialised back-end that takes the 64-channel bottleneck output."""
    try:
        backend = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown back-end architecture {name!r}; known: {', '.join(list_backends())}") from None
    return backend.constructor(num_classes=num_classes)
