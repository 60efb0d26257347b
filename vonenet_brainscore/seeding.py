"""Every seed derivation and every scoped use of a global RNG, in one place.

Seeds are arguments, never global state set at import: a derived seed is a pure function of its keys,
and a context that must seed a global generator (numpy's for Brain-Score's bootstrap and for
imagecorruptions; torch's for back-end initialisation) restores it on the way out.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

SEED_LIMIT = 2 ** 32
"""numpy's RandomState takes seeds below this."""


def derive_seed(*keys: int) -> int:
    """A well-mixed 31-bit seed from integer keys, so seeds for different purposes never collide."""
    import numpy as np
    return int(np.random.SeedSequence([int(k) % SEED_LIMIT for k in keys]).generate_state(1)[0] % 2 ** 31)


def image_noise_seed(base_seed: int, trial: int, digest: bytes) -> int:
    """A 63-bit seed from the noise seed, the trial and an image's fingerprint (noise belongs to the image,
    not to its position in a batch)."""
    key = hashlib.blake2b(digest, digest_size=8, key=f'{base_seed}:{trial}'.encode()).digest()
    return int.from_bytes(key, 'little') >> 1


def epoch_seeds(seed: int, epoch: int, rank: int) -> Tuple[int, int]:
    """Independent seeds for (torch's global RNG, the data loader) in one epoch of one process.

    Seeding each epoch afresh makes augmentation, dropout and VOneBlock noise the same whether a
    run went straight through or was resumed.
    """
    import numpy as np
    first, second = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    return int(first), int(second)


@contextmanager
def numpy_global_seed(seed: Optional[int]) -> Iterator[None]:
    """numpy's global RNG seeded for one call (Brain-Score's bootstrap, imagecorruptions draw from it),
    then restored; ``None`` leaves it alone."""
    if seed is None:
        yield
        return
    import numpy as np
    state = np.random.get_state()
    np.random.seed(seed % SEED_LIMIT)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def torch_global_seed(seed: Optional[int]) -> Iterator[None]:
    """torch's CPU generator seeded for one block (back-end initialisation), then restored; ``None``
    leaves it alone."""
    if seed is None:
        yield
        return
    import torch
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
