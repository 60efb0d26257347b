"""The one module that reads Brain-Score's private attributes.

Brain-Score's ``PytorchWrapper`` keeps its extractor, network and batch size in private members and
offers no accessors. Every other module asks here, so a Brain-Score upgrade that renames one of them
breaks in this file only (and ``tests/`` exercise each function against the installed Brain-Score).
"""
from __future__ import annotations


def extractor_of(activations_model):
    """The ``ActivationsExtractorHelper`` inside a Brain-Score activations model (ours or stock)."""
    return activations_model._extractor  # PytorchWrapper.__init__ stores it here; no public accessor


def batch_size_of(activations_model) -> int:
    """How many images the activations model runs at once."""
    return extractor_of(activations_model)._batch_size  # ActivationsExtractorHelper's constructor argument


def network_of(activations_model):
    """The ``torch.nn.Module`` a ``PytorchWrapper`` runs."""
    return activations_model._model  # PytorchWrapper.__init__ stores it here; no public accessor
