"""The network to train: a published name built untrained or fine-tuned, with its classifier resized.

Part of training/ (used by train.py, and by the command line to count a model's outputs). Where the
classifier sits is back-end knowledge: each back-end registers its classifier's path
(backends/registry.py), and published/checkpoints.py turns it into the path inside a VOneNet.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

from torch import nn

from ..model import VOneNet, build_vonenet
from ..published.catalogue import get_model, model_record
from ..published.checkpoints import ARCH_ALIASES, head_module
from ..seeding import torch_global_seed

logger = logging.getLogger(__name__)


def classifier_path(model: VOneNet) -> str:
    """Where the classifier layer sits: the registered back-end's head, else the last ``nn.Linear``."""
    registered = head_module(model.arch)
    if registered is not None:
        return registered
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to resize")
    return linears[-1]


def replace_classifier(model: VOneNet, num_classes: int, seed: Optional[int] = 0) -> VOneNet:
    """Give ``model`` a new, seeded classifier layer with ``num_classes`` outputs (in place).

    The layer keeps its name, so the checkpoint keys stay those of the published models.
    """
    path = classifier_path(model)
    old = model.get_submodule(path)
    with torch_global_seed(seed):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent, _, name = path.rpartition('.')
    setattr(model.get_submodule(parent), name, new.to(old.weight.device, old.weight.dtype))
    logger.info('replaced the classifier %s: %d -> %d outputs', path, old.out_features, num_classes)
    return model


def num_outputs(model: VOneNet) -> int:
    return model.get_submodule(classifier_path(model)).out_features


def model_for_training(model: Union[str, VOneNet] = 'resnet50', *, num_classes: int = 1000, pretrained: bool = False,
                       weights_path=None, seed: int = 0, progress: bool = True, **vone_settings) -> VOneNet:
    """The network to train: a published name built untrained (seeded), or fine-tuned from its weights.

    ``pretrained=True`` starts from the published weights, ``weights_path`` from a checkpoint in the
    published format; the classifier is replaced when ``num_classes`` differs from it. A VOneNet
    instance is used as it is (its back-end must be a registered one, so checkpoints can load).
    """
    if isinstance(model, VOneNet):
        if pretrained or weights_path is not None or vone_settings:
            raise ValueError("pass either a model instance or a published name with pretrained/weights_path/"
                             "VOneBlock settings, not both")
        if model.arch not in set(ARCH_ALIASES.values()):
            raise ValueError(f"checkpoints of this model could not be loaded: its back-end {model.arch!r} is not "
                             f"one of {sorted(set(ARCH_ALIASES.values()))}")
        network = model
    elif pretrained or weights_path is not None:
        network = get_model(model, weights_path=weights_path, progress=progress, **vone_settings)
    else:
        record = model_record(model)
        network = build_vonenet(record.arch, num_classes=num_classes, init_seed=seed,
                                **{**record.vone_settings, **vone_settings})
    if num_outputs(network) != num_classes:
        replace_classifier(network, num_classes, seed=seed)
    return network.train()
