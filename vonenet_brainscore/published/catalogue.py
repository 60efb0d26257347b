"""The catalogue of published VOneNets: one record per ImageNet checkpoint, and ``get_model``.

Like torchvision's weight enums, a ``PublishedModel`` is the one place a model's facts live: its file
(and so its URL and cache path), back-end, description, the VOneBlock settings it was trained with, and
(from its commitments file, ``commitments/<name>.json``) the preprocessing it expects. ``naming`` derives
every Brain-Score identifier from these names. Light on purpose: torch is imported only when a model
is built, so the command line and the submission builder read the catalogue quickly.

Checkpoints: Dapello, Marques et al. 2020, "Simulating a Primary Visual Cortex at the Front of CNNs
Improves Robustness to Image Perturbations", NeurIPS; files at ``download.DEFAULT_BASE_URL``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, UnknownModelError

if TYPE_CHECKING:
    from torch import nn
    from ..model import VOneNet

COMMITMENTS_PACKAGE = f"{__package__.rsplit('.', 1)[0]}.commitments"  # relative: the package also travels in a plugin


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
        from . import download
        return download.weights_url(self.filename)

    @property
    def cache_path(self) -> Path:
        from . import download
        return download.weights_dir() / self.filename

    @property
    def cache_state(self) -> str:
        """``'verified'``, ``'unrecorded'`` (placed by hand), ``'changed'`` (since it was verified) or ``'missing'``."""
        from . import download
        return download.cache_state(self.cache_path)

    @property
    def preprocessing(self) -> dict:
        """Image size, mean and std the model was trained with, as its commitments file records them."""
        text = resources.files(COMMITMENTS_PACKAGE).joinpath(f'{self.name}.json').read_text(encoding='utf-8')
        return json.loads(text)['preprocessing']


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
    """The record of catalogue model ``name``; an unknown name raises an error listing the known ones."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownModelError(f"unknown VOneNet {name!r}; available: {', '.join(CATALOGUE)}") from None


def get_model(name: str = 'resnet50', pretrained: bool = True, weights_path=None, map_location='cpu',
              progress: bool = True, **overrides) -> 'nn.Module':
    """A published VOneNet as a plain ``nn.Module`` in eval mode.

    ``pretrained=True`` loads the ImageNet weights: from ``weights_path`` when given (a file in
    the published format), else from the cache, downloading once. Architecture and VOneBlock
    settings come from the checkpoint's flags; ``overrides`` change VOneBlock settings, e.g.
    ``noise_mode=None`` for a deterministic model. ``pretrained=False`` builds the same
    architecture with seeded random back-end weights.
    """
    from ..model import build_vonenet
    from .checkpoints import model_from_checkpoint, read_checkpoint
    record = model_record(name)
    if not pretrained and weights_path is None:
        model = build_vonenet(record.arch, **{**record.vone_settings, **overrides})
    elif weights_path is not None:
        path = Path(weights_path)
        checkpoint = read_checkpoint(path, map_location=map_location)
        model = model_from_checkpoint(checkpoint, source=str(path), expected_arch=record.arch, **overrides)
    else:
        model = _load_published(record, map_location, progress, overrides)
    return model.to(map_location).eval()


def _load_published(record: PublishedModel, map_location, progress: bool, overrides: dict) -> 'VOneNet':
    """The published weights from the cache, downloading them once; a download is checked to be this
    model's checkpoint (flags, architecture, tensor shapes) before it is cached, and loaded only once."""
    from . import download
    from .checkpoints import check_checkpoint, model_from_checkpoint, read_checkpoint
    verified = {}

    def verify(part: Path) -> None:
        source = f'the file downloaded from {record.url}'
        checkpoint = read_checkpoint(part, source=source, advice=download.NOT_CACHED)
        check_checkpoint(checkpoint, source=source, expected_arch=record.arch)
        verified['checkpoint'] = checkpoint

    path = download.download_file(record.url, record.cache_path, progress=progress, verify=verify)
    checkpoint = verified.pop('checkpoint', None)
    if checkpoint is None:
        try:
            checkpoint = read_checkpoint(path, map_location=map_location)
        except CheckpointError as error:  # a file placed in the cache by hand, or by an older version
            raise CheckpointError(f"{error}\n{path} is the cached copy of the {record.name!r} weights: delete it, "
                                  f"and it is downloaded again from {record.url}; or pass weights_path=<a good "
                                  f"copy>") from error
    return model_from_checkpoint(checkpoint, source=str(path), expected_arch=record.arch, **overrides)
