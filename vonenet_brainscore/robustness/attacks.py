"""White-box attacks in pixel space: projected gradient descent (PGD) under L-inf, L2 and L1
bounds, with expectation over transformation (EOT) for the VOneBlock's stochastic noise. Part of
robustness/ (evaluate.py runs them); the noise is seeded through vone/noise.py, seeds come from seeding.py.

Settings follow Dapello, Marques et al. (2020), "Simulating a Primary Visual Cortex at the Front
of CNNs Improves Robustness to Image Perturbations" (NeurIPS), and their evaluation script
(``adv_evaluate.py`` in the VOneNet repository): untargeted PGD on images in [0, 1] with the
normalisation inside the model, 64 iterations, step size eps/4, no random start, and for
stochastic models the gradient of every step averaged over 8 noise draws (EOT; Athalye et al.
2018). The paper's perturbation strengths are L-inf 1/1020, L2 0.15 and L1 40 ("low"), and
1/255, 0.6 and 160 ("high"); :data:`DEFAULT_EPS` spans both by factors of two.

L1 steps follow SLIDE (Tramèr & Boneh 2019): a signed step on the top (1 - q) fraction of
gradient coordinates that can still move inside [0, 1], which keeps L1 perturbations sparse
(a dense normalised-gradient step wastes the L1 budget); projection onto the L1 ball is exact
(Duchi et al. 2008).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import VOneNetError
from ..seeding import derive_seed
from ..vone.noise import noise_blocks, seeded_noise

LOG = logging.getLogger(__name__)

NORMS = ('linf', 'l2', 'l1')
PAPER_STEPS = 64
PAPER_STEP_FRACTION = 0.25  # step size = eps / 4
PAPER_EOT_DRAWS = 8
PAPER_EPS_LOW = {'linf': 1 / 1020, 'l2': 0.15, 'l1': 40.0}
PAPER_EPS_HIGH = {'linf': 1 / 255, 'l2': 0.6, 'l1': 160.0}
# Strength 0 (clean) and five doublings ending at the paper's high strength; the middle one is its low strength.
DEFAULT_EPS = {norm: (0.0,) + tuple(PAPER_EPS_HIGH[norm] / 2 ** k for k in (4, 3, 2, 1, 0)) for norm in NORMS}
L1_SPARSITY = 0.99  # SLIDE steps on the top 1% of gradient coordinates
_DIVISION_GUARD = 1e-12

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AttackError(VOneNetError, ValueError):
    """Attack settings or inputs that the attack cannot use."""


# --- noise control ------------------------------------------------------------------------------
def is_stochastic(model: nn.Module) -> bool:
    """Whether a forward pass draws fresh VOneBlock noise (noise on and not frozen by fix_noise).

    Only the VOneBlock's noise is known here; other random layers are treated as deterministic.
    """
    return any(block.noise_mode is not None and block.noise_source.frozen_draw is None for block in noise_blocks(model))


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode (batch-norm statistics frozen) and restore its modes afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --- gradients --------------------------------------------------------------------------------------
def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch, so each image's gradient is independent of batch size."""
    return F.cross_entropy(logits, labels, reduction='sum')


def eot_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eot_draws: int = 1,
                 noise_seeds: Optional[Sequence[int]] = None, loss_fn: LossFunction = summed_cross_entropy
                 ) -> tuple:
    """The input gradient of the loss averaged over ``eot_draws`` noise draws, and the mean loss.

    Each draw is a separate forward and backward pass with fresh VOneBlock noise; draw j uses
    noise seed ``noise_seeds[j]`` when given (then ``eot_draws`` defaults to its length), otherwise
    the model's own noise stream. Model parameters receive no gradient.
    """
    if noise_seeds is not None:
        noise_seeds = list(noise_seeds)
        if eot_draws not in (1, len(noise_seeds)):
            raise AttackError(f"eot_draws={eot_draws} but {len(noise_seeds)} noise seeds were given; "
                              f"pass one seed per draw")
        eot_draws = len(noise_seeds)
    if eot_draws < 1:
        raise AttackError(f"eot_draws must be at least 1, got {eot_draws}")
    total_gradient = torch.zeros_like(images)
    total_loss = 0.0
    for draw in range(eot_draws):
        inputs = images.detach().clone().requires_grad_(True)
        with seeded_noise(model, None if noise_seeds is None else noise_seeds[draw]):
            loss = loss_fn(model(inputs), labels)
        total_gradient += torch.autograd.grad(loss, inputs)[0]
        total_loss += float(loss.detach())
    return total_gradient / eot_draws, total_loss / eot_draws


# --- norms and projections ----------------------------------------------------------------------------
def check_norm(norm: str) -> str:
    """The norm's canonical name; a clear error for anything else."""
    canonical = {'linf': 'linf', 'inf': 'linf', 'l-inf': 'linf', 'l2': 'l2', '2': 'l2', 'l1': 'l1', '1': 'l1'}
    key = str(norm).lower()
    if key not in canonical:
        raise AttackError(f"unknown attack norm {norm!r}; choose one of {', '.join(NORMS)}")
    return canonical[key]


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of a perturbation batch (N, ...)."""
    flat = delta.flatten(1)
    norm = check_norm(norm)
    if norm == 'linf':
        return flat.abs().amax(dim=1)
    return flat.norm(p=2 if norm == 'l2' else 1, dim=1)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-image values (N,) to broadcast over a batch shaped like ``like``."""
    return values.view((-1,) + (1,) * (like.ndim - 1))


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Euclidean projection of each image's perturbation onto the L1 ball of radius ``eps``
    (Duchi et al. 2008: soft-threshold at the level that leaves L1 norm exactly eps)."""
    flat = delta.flatten(1)
    magnitudes = flat.abs()
    outside = magnitudes.sum(dim=1) > eps
    if not bool(outside.any()):
        return delta
    sorted_magnitudes, _ = magnitudes.sort(dim=1, descending=True)
    cumulative = sorted_magnitudes.cumsum(dim=1)
    ranks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    active = sorted_magnitudes * ranks > (cumulative - eps)
    count = active.to(torch.int64).sum(dim=1).clamp(min=1)  # the active set is a prefix
    threshold = ((cumulative.gather(1, (count - 1)[:, None]).squeeze(1) - eps) / count.to(flat.dtype)).clamp(min=0)
    projected = flat.sign() * (magnitudes - threshold[:, None]).clamp(min=0)
    return torch.where(outside[:, None], projected, flat).view_as(delta)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project each image's perturbation onto the ``norm`` ball of radius ``eps``, then shrink any
    float overshoot so the bound holds."""
    norm = check_norm(norm)
    if norm == 'linf':
        return delta.clamp(-eps, eps)
    if norm == 'l1':
        delta = project_l1_ball(delta, eps)
    norms = perturbation_norms(delta, norm)
    scale = torch.where(norms > eps, eps / (norms + _DIVISION_GUARD), torch.ones_like(norms))
    return delta * _per_image(scale, delta)


def clip_to_images(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The part of ``delta`` that keeps ``images + delta`` in [0, 1]; clipping only shrinks each
    coordinate towards zero, so any norm bound still holds."""
    return (images + delta).clamp(0, 1) - images


# --- steps ---------------------------------------------------------------------------------------------
def _steepest_ascent(gradient: torch.Tensor, adversarial: torch.Tensor, norm: str, step_size: float,
                     l1_sparsity: float) -> torch.Tensor:
    """The step of size ``step_size`` (in the attack's norm) that most increases the linearised loss."""
    if norm == 'linf':
        return step_size * gradient.sign()
    if norm == 'l2':
        lengths = perturbation_norms(gradient, 'l2')
        return step_size * gradient / _per_image(lengths + _DIVISION_GUARD, gradient)
    return step_size * _sparse_l1_direction(gradient, adversarial, l1_sparsity)


def _sparse_l1_direction(gradient: torch.Tensor, adversarial: torch.Tensor, sparsity: float) -> torch.Tensor:
    """SLIDE's direction: sign of the gradient on its largest coordinates that can still move within
    [0, 1], scaled to unit L1 norm per image."""
    movable = ~(((adversarial <= 0) & (gradient < 0)) | ((adversarial >= 1) & (gradient > 0)))
    magnitudes = (gradient.abs() * movable).flatten(1)
    k = min(magnitudes.shape[1], max(1, math.ceil(sparsity * magnitudes.shape[1])))
    threshold = magnitudes.kthvalue(k, dim=1).values
    chosen = (magnitudes >= threshold[:, None]) & (magnitudes > 0)
    direction = gradient.flatten(1).sign() * chosen
    sizes = direction.abs().sum(dim=1, keepdim=True).clamp(min=1)
    return (direction / sizes).view_as(gradient)


def random_start_perturbation(images: torch.Tensor, norm: str, eps: float,
                              generator: Optional[torch.Generator]) -> torch.Tensor:
    """A uniform random point of the norm ball (drawn on the CPU, so a seed gives the same start on
    every device), clipped to the image range."""
    flat_shape = (images.shape[0], images[0].numel())
    dimensions = flat_shape[1]
    if norm == 'linf':
        delta = (torch.rand(flat_shape, generator=generator) * 2 - 1) * eps
    else:
        if norm == 'l2':
            direction = torch.randn(flat_shape, generator=generator)
        else:  # Laplace coordinates normalised to the L1 sphere are uniform on it
            direction = torch.distributions.Laplace(0.0, 1.0).icdf(
                torch.rand(flat_shape, generator=generator).clamp(1e-7, 1 - 1e-7))
        direction /= perturbation_norms(direction, norm)[:, None] + _DIVISION_GUARD
        radius = eps * torch.rand((flat_shape[0], 1), generator=generator) ** (1 / dimensions)
        delta = direction * radius
    delta = delta.view(images.shape).to(device=images.device, dtype=images.dtype)
    return clip_to_images(images, project(delta, norm, eps))


def step_noise_seeds(seed: Optional[int], step: int, eot_draws: int) -> Optional[List[int]]:
    """The noise seeds of PGD step ``step``: distinct for every step and draw, fixed by ``seed``."""
    if seed is None:
        return None
    return [derive_seed(seed, step, draw) for draw in range(eot_draws)]


# --- PGD -----------------------------------------------------------------------------------------------
def _check_attack_inputs(images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
                         step_size: Optional[float], eot_draws: int, l1_sparsity: float) -> None:
    """Fail before any forward pass on settings that would silently produce a meaningless attack."""
    if images.ndim != 4:
        raise AttackError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise AttackError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    low, high = float(images.min()), float(images.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise AttackError(f"attacks work on images in [0, 1] (got values in [{low:.3f}, {high:.3f}]); "
                          f"load images without Normalize and put the normalisation inside the model "
                          f"with pixel_space_model()")
    if not (eps >= 0 and math.isfinite(eps)):
        raise AttackError(f"eps must be a finite number >= 0, got {eps}")
    if steps < 0:
        raise AttackError(f"steps must be >= 0, got {steps}")
    if step_size is not None and not step_size > 0:
        raise AttackError(f"step_size must be > 0, got {step_size}")
    if eot_draws < 1:
        raise AttackError(f"eot_draws must be at least 1, got {eot_draws}")
    if not 0 <= l1_sparsity < 1:
        raise AttackError(f"l1_sparsity is the gradient quantile below which L1 steps leave coordinates "
                          f"alone; it must be in [0, 1), got {l1_sparsity}")


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str = 'linf',
        eps: float = PAPER_EPS_LOW['linf'], steps: int = PAPER_STEPS, step_size: Optional[float] = None,
        eot_draws: int = 1, random_start: bool = False, seed: Optional[int] = 0,
        l1_sparsity: float = L1_SPARSITY, loss_fn: LossFunction = summed_cross_entropy,
        progress: bool = False) -> torch.Tensor:
    """Untargeted PGD: adversarial versions of ``images`` (in [0, 1]) within ``eps`` in ``norm``.

    ``model`` takes [0, 1] images (normalisation inside, see ``pixel_space_model``), so eps is in
    pixel units. ``step_size`` defaults to eps/4 (the paper's). With a stochastic model every step
    averages the gradient over ``eot_draws`` noise draws; a deterministic model needs only one,
    so it gets one whatever ``eot_draws`` says. ``seed`` fixes the random start and the noise
    draws (None: torch's and the model's own random streams). Returns a detached batch with
    ``||adv - images|| <= eps`` (up to float32 rounding) and values in [0, 1].
    """
    norm = check_norm(norm)
    _check_attack_inputs(images, labels, eps, steps, step_size, eot_draws, l1_sparsity)
    images = images.detach()
    if eps == 0 or steps == 0:
        return images.clone()
    step_size = PAPER_STEP_FRACTION * eps if step_size is None else step_size
    if eot_draws > 1 and not is_stochastic(model):
        LOG.debug("model has no active VOneBlock noise; one gradient draw per step instead of %d", eot_draws)
        eot_draws = 1
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x5EED)) if seed is not None else None
    delta = random_start_perturbation(images, norm, eps, generator) if random_start else torch.zeros_like(images)
    with evaluation_mode(model):
        for step in tqdm(range(steps), desc=f'PGD {norm} eps={eps:g}', leave=False, disable=not progress):
            adversarial = images + delta
            gradient, loss = eot_gradient(model, adversarial, labels, eot_draws,
                                          step_noise_seeds(seed, step, eot_draws), loss_fn)
            delta = delta + _steepest_ascent(gradient, adversarial, norm, step_size, l1_sparsity)
            delta = clip_to_images(images, project(delta, norm, eps))
    LOG.debug("PGD %s eps=%g: %d steps, final mean loss %.4f", norm, eps, steps, loss / len(images))
    return (images + delta).detach()
