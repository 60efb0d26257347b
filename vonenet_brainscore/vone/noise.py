"""Seeding the VOneBlock noise of a whole model for a scope (validation, attacks, evaluation)."""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import numpy as np
from torch import nn

from ..seeding import derive_seed
from .block import VOneBlock


def noise_blocks(model: nn.Module) -> List[VOneBlock]:
    """The VOneBlocks inside ``model`` (the source of its stochasticity)."""
    return [module for module in model.modules() if isinstance(module, VOneBlock)]


@contextlib.contextmanager
def seeded_noise(model: nn.Module, seed: Optional[int]) -> Iterator[None]:
    """Run ``model`` with its VOneBlock noise restarted at ``seed``, then restore each block's own stream.

    The first block uses ``seed`` itself (so this equals ``reseed_noise(seed)`` on a VOneNet);
    further blocks get seeds derived from it. ``seed=None`` leaves the noise alone.
    """
    blocks = noise_blocks(model)
    if seed is None or not blocks:
        yield
        return
    saved = [(block._noise_seed, block._noise_generator) for block in blocks]
    try:
        for index, block in enumerate(blocks):
            block.reseed_noise(seed if index == 0 else derive_seed(seed, index))
        yield
    finally:
        for block, (noise_seed, generator) in zip(blocks, saved):
            block._noise_seed, block._noise_generator = noise_seed, generator
