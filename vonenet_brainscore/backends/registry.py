"""Name -> back-end constructor. A new back-end is a new module that registers itself here."""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

_BACKENDS: Dict[str, Callable[..., nn.Module]] = {}


def register_backend(name: str):
    """Decorator: make ``build_backend(name)`` call the decorated constructor."""
    def decorate(constructor):
        if name in _BACKENDS:
            raise ValueError(f"back-end {name!r} is registered twice")
        _BACKENDS[name] = constructor
        return constructor
    return decorate


def list_backends() -> list:
    return sorted(_BACKENDS)


def build_backend(name: str, num_classes: int = 1000) -> nn.Module:
    """A fresh, randomly initialised back-end that takes the 64-channel bottleneck output."""
    try:
        constructor = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown back-end architecture {name!r}; known: {', '.join(list_backends())}") from None
    return constructor(num_classes=num_classes)
