"""Step three of the V1 model (vone/: params -> filters -> block): the VOneBlock, a fixed-weight model
of primate V1 (Gabor filter bank, simple and complex cells, gain, and Poisson-like neuronal noise),
and ``VOneBlockConfig``, its settings and the one source of every fact about its geometry.

The Gabor stage has several methods (``METHODS``) that give the same outputs: 'dense' here, the
faster ones in ``accel/``. ``model.py`` puts the block in front of a back-end.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .accel import native
from .accel.compiled import CompiledCells
from .accel.grouped import GroupedGabors
from .accel.spectral import SpectralGabors
from .filters import GaborFilterBank, NotSingleChannel, assign_colour_channels, gabor_kernels, output_side
from .inputs import InputError, InputTypeError, check_images, check_matches
from .noise import NoiseSource
from .params import GaborParameters, sample_gabor_parameters

NOISE_MODES = (None, 'neuronal', 'gaussian')
# Ways to compute the Gabor stage: 'dense' is the original's two convolutions (the reference);
# 'grouped' and 'spectral' skip the work it discards; 'compiled' is 'spectral' fused with the cells
# in C kernels (CPU inference); 'auto' picks the fastest that applies to the input.
METHODS = ('auto', 'compiled', 'spectral', 'grouped', 'dense')
# What torch.fft (so the Fourier methods) computes in.
FFT_DTYPES = (torch.float32, torch.float64)
# Added under the square root of the neuronal noise so its gradient stays finite at zero rate.
NEURONAL_NOISE_EPS = 10e-5


@dataclass(frozen=True)
class VOneBlockConfig:
    """Every setting that changes a VOneBlock's output. Defaults are the published VOneNets'."""

    simple_channels: int = 256
    complex_channels: int = 256
    gabor_seed: int = 0
    colour_seed: int = 0
    rand_param: bool = False
    sf_corr: float = 0.75
    sf_max: float = 9
    sf_min: float = 0
    k_exc: float = 25
    noise_mode: Optional[str] = 'neuronal'
    noise_scale: float = 0.35
    noise_level: float = 0.07
    image_size: int = 224
    visual_degrees: float = 8
    ksize: int = 25
    stride: int = 4

    FORWARD_SETTINGS: ClassVar[Tuple[str, ...]] = ('k_exc', 'noise_mode', 'noise_scale', 'noise_level')
    """Settings read at each forward pass; all others are built into the filters."""

    def __post_init__(self):
        def setting(name, rule):
            return f"VOneBlock setting {name} must be {rule}, got {getattr(self, name)!r}"
        for name in ('simple_channels', 'complex_channels', 'gabor_seed', 'colour_seed', 'image_size', 'ksize',
                     'stride'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(setting(name, 'a whole number'))
        for name in ('sf_corr', 'sf_max', 'sf_min', 'k_exc', 'noise_scale', 'noise_level', 'visual_degrees'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(setting(name, 'a number'))
            if not math.isfinite(value):
                raise ValueError(setting(name, 'finite'))
        for name in ('image_size', 'ksize', 'stride'):
            if getattr(self, name) < 1:
                raise ValueError(setting(name, '>= 1'))
        if self.visual_degrees <= 0:
            raise ValueError(setting('visual_degrees', '> 0 (the image width in degrees of visual angle)'))
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.simple_channels < 0 or self.complex_channels < 0 or self.out_channels == 0:
            raise ValueError(f"channel counts must be >= 0 with at least one channel, got "
                             f"simple={self.simple_channels}, complex={self.complex_channels}")
        if self.ksize % 2 != 1:
            raise ValueError(f"ksize must be odd so filters are centred, got {self.ksize}")
        if self.noise_mode == 'neuronal' and self.noise_scale == 0:
            raise ValueError("neuronal noise divides by noise_scale; it must be non-zero")

    @property
    def out_channels(self) -> int:
        return self.simple_channels + self.complex_channels

    @property
    def pixels_per_degree(self) -> float:
        return self.image_size / self.visual_degrees

    @property
    def padding(self) -> int:
        """The filters' half size: the original pads so that output (i, j) centres on pixel stride * (i, j)."""
        return self.ksize // 2

    def output_side(self, length: int, padding: Optional[int] = None) -> int:
        """Outputs along an image axis of ``length`` pixels (padded by ``padding``, default the filters')."""
        return output_side(length, self.ksize, self.stride, self.padding if padding is None else padding)

    def output_shape(self, image_size: Optional[int] = None) -> tuple:
        """(channels, rows, columns) of the block's output for square images (default ``image_size``)."""
        side = self.output_side(image_size or self.image_size)
        return self.out_channels, side, side

    def replace(self, **changes) -> 'VOneBlockConfig':
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ', '.join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown VOneBlock setting(s) {sorted(unknown)}; valid settings: {valid}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _setting(name: str) -> property:
    """A read-only view of ``config.<name>``, for code that reads the setting off the block."""
    return property(lambda self: getattr(self.config, name), doc=f"``config.{name}`` (read-only).")


class VOneBlock(nn.Module):
    """Simple cells (rectified even-phase Gabor), complex cells (quadrature energy / sqrt 2), gain
    ``k_exc``, then noise and a final rectification.

    The two filter banks ``simple_conv_q0`` (phase) and ``simple_conv_q1`` (phase + 90 deg) are the
    only weights, so published checkpoints restore exactly the filters (and colour channels) they
    were trained with. ``config`` holds every setting. The noise comes from ``noise_source`` (torch's
    global RNG unless ``noise_seed`` is given, in which case the block owns its generator);
    ``fix_noise`` freezes one draw for deterministic evaluation.
    """

    in_channels = 3  # the images' colour channels (RGB)
    simple_channels = _setting('simple_channels')
    stride = _setting('stride')
    k_exc = _setting('k_exc')
    noise_mode = _setting('noise_mode')

    # Below this many output positions per image the direct matrix product beats the Fourier route
    # (measured on CPU: benchmarks/vone_block.py --sides).
    SPECTRAL_MIN_POSITIONS = 256

    def __init__(self, config: Optional[VOneBlockConfig] = None, *, noise_seed: Optional[int] = None,
                 **settings):
        super().__init__()
        config = (config or VOneBlockConfig()).replace(**settings)
        self._config = config
        self.gabor_parameters = sample_gabor_parameters(
            config.out_channels, seed=config.gabor_seed, rand_param=config.rand_param,
            sf_corr=config.sf_corr, sf_max=config.sf_max, sf_min=config.sf_min)
        banks = [GaborFilterBank(self.in_channels, config.out_channels, config.ksize, config.stride, config.padding)
                 for _ in range(2)]
        self.simple_conv_q0, self.simple_conv_q1 = banks
        self._initialize_filters(self.gabor_parameters, config)

        # Named hook points, as in the original, so layer names such as 'vone_block.output' resolve.
        self.simple = nn.ReLU(inplace=True)
        self.complex = nn.Identity()
        self.gabors = nn.Identity()
        self.noise = nn.ReLU(inplace=True)
        self.output = nn.Identity()

        self.noise_source = NoiseSource(noise_seed)
        # How the Gabor stage is computed; every method gives the same outputs (to float32 rounding).
        self.method = 'auto'
        self._plans: dict = {}
        self._plans_key = None

    @property
    def config(self) -> VOneBlockConfig:
        """The block's settings, the one source of every fact about it."""
        return self._config

    @config.setter
    def config(self, config: VOneBlockConfig) -> None:
        """Change the settings read at each forward pass (gain, noise); the others are built into the filters."""
        if not isinstance(config, VOneBlockConfig):
            raise TypeError(f"VOneBlock.config must be a VOneBlockConfig, got {type(config).__name__}")
        built_in = [field.name for field in dataclasses.fields(config) if field.name not in config.FORWARD_SETTINGS
                    and getattr(config, field.name) != getattr(self._config, field.name)]
        if built_in:
            raise ValueError(f"VOneBlock settings {built_in} are built into its filters and cannot change; "
                             f"build a new VOneBlock (only {', '.join(config.FORWARD_SETTINGS)} can)")
        self._config = config

    def _initialize_filters(self, params: GaborParameters, config: VOneBlockConfig) -> None:
        """Convert degrees to pixels and fill both quadrature banks on seeded colour channels."""
        sf_px = params.sf / config.pixels_per_degree
        sigma_x, sigma_y = params.nx / sf_px, params.ny / sf_px
        theta, phase = np.deg2rad(params.theta), np.deg2rad(params.phase)
        generator = torch.Generator().manual_seed(config.colour_seed)
        for bank, offset in ((self.simple_conv_q0, 0.0), (self.simple_conv_q1, np.pi / 2)):
            kernels = gabor_kernels(sf_px, sigma_x, sigma_y, theta, phase + offset, config.ksize)
            bank.initialize(kernels, assign_colour_channels(config.out_channels, self.in_channels, generator))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x):
        x = self.gabors_f(x)
        x = self.noise_f(x)
        return self.output(x)

    def check_input(self, x, padding=None, *, name: str = 'images', where: str = 'the VOneBlock') -> None:
        """Raise :class:`~vonenet_brainscore.vone.inputs.InputError` (a ValueError, or a TypeError for
        the wrong type or dtype) unless ``x`` is a batch this block computes the same way with every
        method: non-empty (N, 3, H, W) floating point, at least the filters' size, finite pixels.
        Metadata checks plus one reduction over ``x`` (that one skipped under tracing and compiling)."""
        padding = self._padding(padding)
        check_images(x, name=name, where=where, in_channels=self.in_channels, ksize=self.config.ksize,
                     padding=padding, check_finite=not (torch.jit.is_tracing() or torch.compiler.is_compiling()))

    def _padding(self, padding) -> int:
        if padding is None:
            return self.config.padding
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise InputError(f"VOneBlock padding must be a whole number of pixels >= 0 (or None for the "
                             f"filters' half size, {self.config.padding}); got {padding!r}")
        return padding

    def _check_method_takes(self, x: torch.Tensor, method: str) -> None:
        """The dtype and device ``method`` needs (metadata only)."""
        weight = self.simple_conv_q0.weight
        if method == 'spectral':  # any weights: the filters' spectra follow the images' dtype and device
            if x.dtype not in FFT_DTYPES:
                raise InputTypeError(f"VOneBlock.method = 'spectral' takes float32 or float64 images (torch.fft); "
                                     f"got {x.dtype}: use method = 'auto' or 'grouped', or pass images.float()")
            return
        check_matches(x, weight, where='the VOneBlock')

    def gabors_f(self, x, padding=None):
        """Simple and complex cell responses times the gain, before noise."""
        self.check_input(x, padding)
        method = self.method_for(x, padding)
        self._check_method_takes(x, method)
        simple, k_exc = self.config.simple_channels, self.config.k_exc
        if method == 'dense':  # the original's arithmetic, operation for operation
            q0 = self.simple_conv_q0(x, padding)
            q1 = self.simple_conv_q1(x, padding)
            s = self.simple(q0[:, :simple])
            c = self.complex(torch.sqrt(q0[:, simple:] ** 2 + q1[:, simple:] ** 2) / np.sqrt(2))
            return self.gabors(k_exc * torch.cat((s, c), 1))
        if method == 'compiled':
            if self.method == 'compiled':  # 'auto' picked it only where it applies
                self._check_compiled(x)
            return self.gabors(self._compiled_plan()(x, (k_exc, k_exc / np.sqrt(2)), padding))
        # Same cells with fewer passes over memory: hypot for the energy, gain folded into one multiply,
        # results written straight into the output (differences are float32 rounding).
        q0, q1_complex = self._filter_plans()[method](x, padding)
        s = self.simple(q0[:, :simple])
        c = self.complex(torch.hypot(q0[:, simple:], q1_complex))
        if torch.is_grad_enabled() and x.requires_grad:  # out= writes are not differentiable
            return self.gabors(torch.cat((s * k_exc, c * (k_exc / np.sqrt(2))), 1))
        out = torch.empty((q0.shape[0], self.config.out_channels) + tuple(q0.shape[2:]), dtype=q0.dtype,
                          device=q0.device)
        torch.mul(s, k_exc, out=out[:, :simple])
        torch.mul(c, k_exc / np.sqrt(2), out=out[:, simple:])
        return self.gabors(out)

    def method_for(self, x: torch.Tensor, padding=None) -> str:
        """The method ``gabors_f`` uses for ``x``: 'compiled', 'spectral', 'grouped' or 'dense'."""
        if self.method not in METHODS:
            raise ValueError(f"VOneBlock.method must be one of {METHODS}, got {self.method!r}")
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if self.method == 'dense' or (self.method == 'auto' and tracing):
            return 'dense'  # under tracers and compilers: the original's operators, what they handle best
        if self._filter_plans() is None:
            return 'dense'
        if self.method != 'auto':
            return self.method
        if x.dtype != self.simple_conv_q0.weight.dtype and x.dtype in FFT_DTYPES:
            return 'spectral'  # the one method whose filters follow the images' dtype
        if x.dtype not in FFT_DTYPES:
            return 'grouped'  # torch.fft takes neither float16 nor bfloat16 on the CPU
        positions = self.config.output_side(x.shape[-2], padding) * self.config.output_side(x.shape[-1], padding)
        if x.device.type != 'cpu' or positions < self.SPECTRAL_MIN_POSITIONS:
            return 'grouped'
        obstacle = self._compiled_obstacle(x)
        if obstacle is None:
            return 'compiled'
        if obstacle == native.unavailable_reason():
            native.warn_unavailable_once()
        return 'spectral'

    def _compiled_obstacle(self, x: torch.Tensor):
        """Why the compiled kernels cannot compute ``x`` (None when they can)."""
        if x.device.type != 'cpu' or x.dtype != torch.float32:
            return f"they take float32 CPU input, not {x.dtype} on {x.device}"
        if torch.is_grad_enabled() and x.requires_grad:
            return "they are not differentiable (x requires grad)"
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return "torch.jit.trace and torch.compile cannot see inside them"
        if (type(self.simple) is not nn.ReLU or type(self.complex) is not nn.Identity
                or any(m._forward_hooks or m._forward_pre_hooks for m in (self.simple, self.complex))):
            return "they do not run the 'simple' and 'complex' modules, which are hooked or replaced"
        if native.kernels() is None:
            return native.unavailable_reason()
        return None

    def _check_compiled(self, x: torch.Tensor) -> None:
        obstacle = self._compiled_obstacle(x)
        if obstacle is not None:
            raise RuntimeError(f"VOneBlock.method = 'compiled' cannot be used here: {obstacle}. "
                               f"Use method = 'auto' (picks what applies) or 'spectral'.")

    def _filter_plans(self) -> Optional[dict]:
        """The regrouped filters for each fast method, rebuilt whenever the weights change; None
        means use the dense path (a filter reads several colour channels, or someone hooks the
        filter-bank modules and expects them to run)."""
        q0, q1 = self.simple_conv_q0, self.simple_conv_q1
        if q0._forward_hooks or q1._forward_hooks or q0._forward_pre_hooks or q1._forward_pre_hooks:
            return None
        key = (q0.weight._version, q1.weight._version, q0.weight.data_ptr(), q1.weight.data_ptr(),
               q0.weight.device, q0.weight.dtype)
        if key != self._plans_key:
            arguments = self._plan_arguments(q0.weight.detach(), q1.weight.detach())
            try:
                self._plans = {'grouped': GroupedGabors(*arguments), 'spectral': SpectralGabors(*arguments)}
            except NotSingleChannel:
                self._plans = None
            self._plans_key = key
        return self._plans

    def _plan_arguments(self, q0: torch.Tensor, q1: torch.Tensor) -> tuple:
        """What every fast method is built from: both banks' weights and the block's geometry."""
        return q0, q1, self.config.simple_channels, self.config.stride, self.config.padding

    def _compiled_plan(self) -> CompiledCells:
        """The compiled method's units, built on first use (after the kernels are compiled)."""
        plans = self._filter_plans()
        if 'compiled' not in plans:
            arguments = self._plan_arguments(self.simple_conv_q0.weight, self.simple_conv_q1.weight)
            plans['compiled'] = CompiledCells(*arguments, native.kernels())
        return plans['compiled']

    def noise_f(self, x):
        """Add noise in the block's mode, then rectify. The arithmetic order is the original's."""
        mode, scale, level = self.config.noise_mode, self.config.noise_scale, self.config.noise_level
        if mode == 'neuronal':
            x = x * scale  # not in place: never write into the caller's tensor
            x += level
            x += self.noise_source.draw(x) * torch.sqrt(F.relu(x) + NEURONAL_NOISE_EPS)
            x -= level
            x /= scale
        elif mode == 'gaussian':
            x = x + self.noise_source.draw(x) * scale
        return self.noise(x)

    # --- noise control (delegates to noise_source, kept for the original's API) ----------------
    def reseed_noise(self, seed: Optional[int]) -> None:
        """Restart the noise stream at ``seed`` (None: draw from torch's global RNG, as the original)."""
        self.noise_source.reseed(seed)

    def fix_noise(self, batch_size: int = 256, seed: Optional[int] = 0, image_size: Optional[int] = None) -> None:
        """Freeze one standard-normal draw so every forward pass sees the same noise.

        With ``seed`` the draw equals the original's ``fix_noise(batch_size, seed)`` (for a non-zero
        seed; the original ignores seed 0). A batch smaller than ``batch_size`` uses the first rows,
        so image i of a batch gets the same noise whatever the batch size.
        """
        draw = None
        if self.config.noise_mode:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            shape = (batch_size,) + self.output_shape(image_size)
            draw = torch.randn(shape, generator=generator).to(self.simple_conv_q0.weight.device)
        self.noise_source.freeze(draw)

    # --- geometry -------------------------------------------------------------------------------
    def output_shape(self, image_size: Optional[int] = None) -> tuple:
        """(channels, rows, columns) of the output for square images (default: the configured size)."""
        return self.config.output_shape(image_size)

    def units_within(self, centre_deg: tuple, radius_deg: float) -> tuple:
        """Output rows ``r0:r1`` and columns ``c0:c1`` whose centres lie within ``radius_deg`` (per
        axis) of ``centre_deg`` = (y, x) degrees from the image centre, y downwards, x rightwards."""
        c = self.config
        side = c.output_side(c.image_size)
        centres = (np.arange(side) * c.stride + 0.5 - c.image_size / 2) / c.pixels_per_degree
        rows = np.flatnonzero(np.abs(centres - centre_deg[0]) <= radius_deg)
        cols = np.flatnonzero(np.abs(centres - centre_deg[1]) <= radius_deg)
        if len(rows) == 0 or len(cols) == 0:
            raise ValueError(f"no V1 unit lies within {radius_deg} deg of {centre_deg} deg")
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def extra_repr(self):
        c = self.config
        return (f'simple={c.simple_channels}, complex={c.complex_channels}, k_exc={c.k_exc}, '
                f'noise_mode={c.noise_mode!r}, noise_scale={c.noise_scale}, noise_level={c.noise_level}, '
                f'gabor_seed={c.gabor_seed}, colour_seed={c.colour_seed}')
