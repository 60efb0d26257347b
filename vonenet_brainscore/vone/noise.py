"""The VOneBlock's noise source (vone/), and seeding the noise of a whole model for a scope.

Each VOneBlock owns one :class:`NoiseSource` (``block.noise_source``; ``block.noise`` is the hook
point after the noise, as in the original). Everything that steers the noise (validation, attacks,
evaluation, Brain-Score trials) goes through the source's scoped operations, which put back the
stream they found, so no caller saves or restores the block's state by hand.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch
from torch import nn

from ..seeding import derive_seed


class NoiseSource:
    """Where a VOneBlock's standard-normal noise comes from: torch's global RNG (``seed=None``, as
    the original), a generator of its own restarted at ``seed``, or one frozen draw, whose first
    rows serve a batch (so image i gets the same noise whatever the batch size)."""

    def __init__(self, seed: Optional[int] = None):
        self._seed = seed
        self._generator: Optional[torch.Generator] = None  # made on the first draw, on the input's device
        self._frozen: Optional[torch.Tensor] = None

    @property
    def seed(self) -> Optional[int]:
        return self._seed

    @property
    def frozen_draw(self) -> Optional[torch.Tensor]:
        """The frozen draw every forward pass uses, or None when each pass draws afresh."""
        return self._frozen

    def reseed(self, seed: Optional[int]) -> None:
        """Restart the stream at ``seed`` (None: draw from torch's global RNG)."""
        self._seed = seed
        self._generator = None

    def freeze(self, draw: Optional[torch.Tensor]) -> None:
        """Use ``draw`` (batch x the block's output shape) for every forward pass; None: draw afresh."""
        self._frozen = draw

    @contextlib.contextmanager
    def using(self, seed: Optional[int]) -> Iterator[None]:
        """Draw from a stream restarted at ``seed`` inside the scope, then continue the previous one."""
        saved = self._seed, self._generator
        self.reseed(seed)
        try:
            yield
        finally:
            self._seed, self._generator = saved

    @contextlib.contextmanager
    def frozen(self, draw: Optional[torch.Tensor]) -> Iterator[None]:
        """Use ``draw`` for every forward pass inside the scope, then what was used before."""
        saved = self._frozen
        self.freeze(draw)
        try:
            yield
        finally:
            self._frozen = saved

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """Standard-normal noise of ``like``'s shape, dtype and device."""
        if self._frozen is not None:
            batch, frozen = like.shape[0], self._frozen
            if batch > frozen.shape[0] or frozen.shape[1:] != like.shape[1:]:
                raise ValueError(
                    f"fixed noise has shape {tuple(frozen.shape)} but the batch has shape "
                    f"{tuple(like.shape)}; call fix_noise(batch_size={batch}) (or larger) for this input size")
            return frozen[:batch].to(device=like.device, dtype=like.dtype)
        return torch.randn(like.shape, generator=self._generator_on(like.device), device=like.device,
                           dtype=like.dtype)

    def _generator_on(self, device: torch.device) -> Optional[torch.Generator]:
        if self._seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self._seed)
        return self._generator


def noise_blocks(model: nn.Module) -> List[nn.Module]:
    """The modules inside ``model`` that own a :class:`NoiseSource` (its VOneBlocks: the source of
    its stochasticity)."""
    return [module for module in model.modules() if isinstance(getattr(module, 'noise_source', None), NoiseSource)]


@contextlib.contextmanager
def seeded_noise(model: nn.Module, seed: Optional[int]) -> Iterator[None]:
    """Run ``model`` with its VOneBlock noise restarted at ``seed``, then restore each block's own stream.

    The first block uses ``seed`` itself (so this equals ``reseed_noise(seed)`` on a VOneNet);
    further blocks get seeds derived from it. ``seed=None`` leaves the noise alone.
    """
    with contextlib.ExitStack() as scopes:
        if seed is not None:
            for index, block in enumerate(noise_blocks(model)):
                scopes.enter_context(block.noise_source.using(seed if index == 0 else derive_seed(seed, index)))
        yield
