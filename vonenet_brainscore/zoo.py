"""Catalogue of the published VOneNets: one record per ImageNet checkpoint, and ``get_model``.

Checkpoints: Dapello, Marques et al. 2020, "Simulating a Primary Visual Cortex at the Front of CNNs
Improves Robustness to Image Perturbations", NeurIPS; files at ``download.DEFAULT_BASE_URL``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from . import download
from .errors import UnknownModelError
from .model import VOneNet, build_vonenet
from .weights import model_from_checkpoint, read_checkpoint


@dataclass(frozen=True)
class PublishedModel:
    """A published VOneNet: its weights file, back-end, and the VOneBlock settings it was trained with."""

    name: str
    filename: str
    arch: str
    description: str
    # VOneBlock settings for building it without the checkpoint; a loaded checkpoint's flags win.
    vone_settings: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return download.weights_url(self.filename)

    @property
    def cache_path(self) -> Path:
        return download.weights_dir() / self.filename


CATALOGUE = {record.name: record for record in (
    PublishedModel('resnet50', 'voneresnet50_e70.pth.tar', 'resnet50',
                   'VOneResNet50: ResNet50 back-end, neuronal noise (the best-performing VOneNet)'),
    PublishedModel('cornets', 'vonecornets_e70.pth.tar', 'cornets',
                   'VOneCORnet-S: recurrent CORnet-S back-end, neuronal noise'),
    PublishedModel('alexnet', 'vonealexnet_e70.pth.tar', 'alexnet',
                   'VOneAlexNet: AlexNet back-end, neuronal noise'),
    PublishedModel('resnet50_at', 'voneresnet50_at_e96.pth.tar', 'resnet50',
                   'VOneResNet50 trained adversarially (96 epochs)'),
    PublishedModel('resnet50_ns', 'voneresnet50_ns_e70.pth.tar', 'resnet50',
                   'VOneResNet50 trained without the VOneBlock noise', {'noise_mode': None}),
)}


def list_models() -> list:
    """Names accepted by ``get_model``."""
    return list(CATALOGUE)


def model_record(name: str) -> PublishedModel:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownModelError(f"unknown VOneNet {name!r}; available: {', '.join(CATALOGUE)}") from None


def get_model(name: str = 'resnet50', pretrained: bool = True, weights_path=None, map_location='cpu',
              progress: bool = True, **overrides) -> nn.Module:
    """A published VOneNet as a plain ``nn.Module`` in eval mode.

    ``pretrained=True`` loads the ImageNet weights: from ``weights_path`` when given (a file in
    the published format), else from the cache, downloading once. Architecture and VOneBlock
    settings come from the checkpoint's flags; ``overrides`` change VOneBlock settings, e.g.
    ``noise_mode=None`` for a deterministic model. ``pretrained=False`` builds the same
    architecture with seeded random back-end weights.
    """
    record = model_record(name)
    if not pretrained and weights_path is None:
        model: VOneNet = build_vonenet(record.arch, **{**record.vone_settings, **overrides})
    else:
        path = Path(weights_path) if weights_path is not None else \
            download.download_file(record.url, record.cache_path, progress=progress)
        checkpoint = read_checkpoint(path, map_location=map_location)
        model = model_from_checkpoint(checkpoint, source=str(path), expected_arch=record.arch, **overrides)
    return model.to(map_location).eval()
