"""Step one of the V1 model (vone/: params -> filters -> block): the VOneBlock's Gabor parameters,
sampled from published macaque V1 distributions.

The sampling reproduces the original VOneNet code draw for draw: the same ``gabor_seed`` gives the
same parameters. It uses a private ``numpy.random.RandomState`` instead of the global numpy RNG, so
building a model never disturbs (or depends on) anybody else's random state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

# --- Published distributions (facts, with their sources) ------------------------------------------
# De Valois, Yund & Hepler 1982 (Vision Res 22:531), preferred orientation, 45 deg bins centred on
# 0/45/90/135 deg; counts of cells.
ORIENTATION_BINS_DEG = np.array([-22.5, 22.5, 67.5, 112.5, 157.5])
ORIENTATION_COUNTS = np.array([66, 49, 77, 54])

# De Valois, Albrecht & Thorell 1982 (Vision Res 22:545), peak spatial frequency (cycles/deg),
# half-octave bins; counts of cells.
SPATIAL_FREQUENCY_BINS_CPD = np.array([0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8])
SPATIAL_FREQUENCY_COUNTS = np.array([4, 4, 8, 25, 32, 26, 28, 12])

# Ringach 2002 (J Neurophysiol 88:455), joint distribution of Gabor envelope sizes in units of the
# carrier period (nx: along the carrier, ny: across it), log-spaced bins 10^-1 .. 10^0.2.
ENVELOPE_BINS = np.logspace(-1, 0.2, 6, base=10)
ENVELOPE_JOINT_COUNTS = np.array([[2., 0., 1., 0., 0.],
                                  [8., 9., 4., 1., 0.],
                                  [1., 2., 19., 17., 3.],
                                  [0., 0., 1., 7., 4.],
                                  [0., 0., 0., 0., 0.]])

# Uniform alternative (``rand_param=True``): flat over the same ranges.
UNIFORM_ENVELOPE_BINS = np.array([0.1, 10 ** 0.2])


@dataclass(frozen=True)
class GaborParameters:
    """One row per filter: spatial frequency (cycles/deg), orientation and phase (deg), nx, ny."""

    sf: np.ndarray
    theta: np.ndarray
    phase: np.ndarray
    nx: np.ndarray
    ny: np.ndarray

    def __len__(self):
        return len(self.sf)


def _sample_histogram(rng, counts, bins, n, scale='linear'):
    """Inverse-CDF sampling from a histogram, linear within each bin on the given axis scale."""
    cdf = np.hstack(([0], np.cumsum(counts)))
    u = rng.rand(n)
    if scale == 'linear':
        return np.interp(u, cdf, bins)
    if scale == 'log2':
        return 2 ** np.interp(u, cdf, np.log2(bins))
    if scale == 'log10':
        return 10 ** np.interp(u, cdf, np.log10(bins))
    raise ValueError(f"unknown scale {scale!r}")


def _spatial_frequency_histogram(sf_min, sf_max, uniform):
    """Half-octave bins cut to [sf_min, sf_max]; the original cuts the uniform case with ``<``."""
    bins = SPATIAL_FREQUENCY_BINS_CPD
    counts = np.ones(len(bins) - 1) if uniform else SPATIAL_FREQUENCY_COUNTS
    upper = bins < sf_max if uniform else bins <= sf_max
    if not upper.any() or not (bins >= sf_min).any():
        raise ValueError(f"sf range [{sf_min}, {sf_max}] cycles/deg leaves no bin of {bins.tolist()}")
    top = np.where(upper)[0][-1]
    bottom = np.where(bins >= sf_min)[0][0]
    if top <= bottom:
        raise ValueError(f"sf range [{sf_min}, {sf_max}] cycles/deg is narrower than one bin of {bins.tolist()}")
    bins = bins[bottom:top + 1]
    counts = counts[bottom:top]
    return bins, counts / counts.sum()


def sample_gabor_parameters(n_filters: int, seed: int = 0, rand_param: bool = False, sf_corr: float = 0.75,
                            sf_max: float = 9, sf_min: float = 0) -> GaborParameters:
    """Draw ``n_filters`` Gabor parameter sets.

    ``rand_param=False`` (the VOneNet default) samples the neuronal distributions, with envelope
    size nx correlated with spatial frequency through a Gaussian copula of correlation ``sf_corr``
    (Schiller et al. 1976), and ny drawn from Ringach's joint histogram given nx.
    ``rand_param=True`` samples flat distributions over the same ranges.
    """
    if n_filters < 1:
        raise ValueError(f"n_filters must be positive, got {n_filters}")
    if not -1 <= sf_corr <= 1:
        raise ValueError(f"sf_corr is a correlation and must lie in [-1, 1], got {sf_corr}")
    rng = np.random.RandomState(seed)
    sf_bins, sf_dist = _spatial_frequency_histogram(sf_min, sf_max, uniform=rand_param)
    if rand_param:
        ori_bins, ori_dist = np.array([0, 180]), np.array([1])
    else:
        ori_bins, ori_dist = ORIENTATION_BINS_DEG, ORIENTATION_COUNTS / ORIENTATION_COUNTS.sum()

    # The draw order below is the original's: phase, orientation, then the size/frequency draws.
    phase = _sample_histogram(rng, np.array([1]), np.array([0, 360]), n_filters)
    theta = _sample_histogram(rng, ori_dist, ori_bins, n_filters)
    theta[theta < 0] += 180

    if rand_param:
        sf = _sample_histogram(rng, sf_dist, sf_bins, n_filters, scale='log2')
        nx = _sample_histogram(rng, np.array([1]), UNIFORM_ENVELOPE_BINS, n_filters, scale='log10')
        ny = _sample_histogram(rng, np.array([1]), UNIFORM_ENVELOPE_BINS, n_filters, scale='log10')
        return GaborParameters(sf=sf, theta=theta, phase=phase, nx=nx, ny=ny)

    joint = ENVELOPE_JOINT_COUNTS / ENVELOPE_JOINT_COUNTS.sum()
    nx_dist = joint.sum(axis=1)
    nx_dist = nx_dist / nx_dist.sum()
    with np.errstate(invalid='ignore', divide='ignore'):  # the empty last row is never selected
        ny_given_nx = joint / joint.sum(axis=1, keepdims=True)

    copula = rng.multivariate_normal([0, 0], [[1, sf_corr], [sf_corr, 1]], n_filters)
    uniform = stats.norm.cdf(copula)
    log_bins = np.log10(ENVELOPE_BINS)
    nx = 10 ** np.interp(uniform[:, 0], np.hstack(([0], nx_dist.cumsum())), log_bins)

    u_ny = rng.rand(n_filters)
    # Row of the joint histogram that each nx falls in (last bin edge strictly below nx).
    rows = np.searchsorted(ENVELOPE_BINS, nx, side='left') - 1
    ny = np.empty(n_filters)
    for row in np.unique(rows):
        members = rows == row
        ny[members] = np.interp(u_ny[members], np.hstack(([0], ny_given_nx[row].cumsum())), log_bins)
    ny = 10 ** ny

    sf = 2 ** np.interp(uniform[:, 1], np.hstack(([0], sf_dist.cumsum())), np.log2(sf_bins))
    return GaborParameters(sf=sf, theta=theta, phase=phase, nx=nx, ny=ny)
