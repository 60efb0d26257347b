"""One figure per V1 property: the model's distribution (or several models', side by side) against the
primate histogram.

Part of V1 scoring (scoring/v1_properties/): draws ``score.BenchmarkResult``s; the command line saves them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _is_log_spaced(bins: np.ndarray) -> bool:
    positive = bins[bins > 0]
    if len(positive) != len(bins) or len(bins) < 3:
        return False
    ratios = positive[1:] / positive[:-1]
    return np.allclose(ratios, ratios[0], rtol=0.05) and not np.allclose(np.diff(bins), np.diff(bins)[0], rtol=0.05)


def property_histograms(result):
    """Fractions of primate and model neurons per bin, as the metric bins them (clipped to the range)."""
    bins = result.bins
    clip = lambda values: np.clip(values[np.isfinite(values)], bins[0], bins[-1])
    primate = np.histogram(clip(result.primate_values), bins=bins)[0].astype(float)
    model = np.histogram(clip(result.model_values), bins=bins)[0].astype(float)
    return primate / max(primate.sum(), 1), model / max(model.sum(), 1)


def _save_histograms(path, bins, property_name: str, primate, primate_n: int, series, title: str,
                     size=(5, 3.4)) -> Path:
    """One figure: the primate histogram filled in grey, each ``(label, fractions, colour)`` of ``series``
    as a step line over it; log x axis for log-spaced bins."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=size, dpi=120)
    axes.stairs(primate, bins, fill=True, alpha=0.35, color='0.35', label=f'primate V1 (n={primate_n})')
    for label, fractions, colour in series:
        axes.stairs(fractions, bins, linewidth=2, color=colour, label=label)
    if _is_log_spaced(bins):
        axes.set_xscale('log')
    axes.set_xlabel(property_name.replace('_', ' '))
    axes.set_ylabel('fraction of neurons')
    axes.set_title(title, fontsize=8)
    # a light frame keeps the legend readable where it has to sit over the bars
    axes.legend(fontsize=6.5, frameon=True, framealpha=0.85, edgecolor='none')
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_property(result, path, model_label: str = 'model') -> Path:
    """Save a step histogram of the model's property values over the primate distribution."""
    primate, model = property_histograms(result)
    return _save_histograms(
        path, result.bins, result.property_name, primate, len(result.primate_values),
        [(f'{model_label} (n={len(result.model_values)})', model, 'tab:red')],
        f"{result.benchmark}\nscore {result.score:.3f} (raw {result.raw:.3f} / ceiling {result.ceiling:.3f})")


_COLOURS = ('tab:red', 'tab:blue', 'tab:green', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:cyan')


def plot_properties(labelled, path) -> Path:
    """Side by side: every model's distribution of one property over the primate histogram.

    ``labelled``: ``[(label, BenchmarkResult), ...]``, all of the same benchmark (the primate data and
    bins are the first result's; every result of a benchmark compares with the same ones). One model
    gives the figure of :func:`plot_property`."""
    labelled = list(labelled)
    if not labelled:
        raise ValueError('plot_properties needs at least one (label, result)')
    if len(labelled) == 1:
        return plot_property(labelled[0][1], path, model_label=labelled[0][0])
    first = labelled[0][1]
    benchmarks = {result.benchmark for _, result in labelled}
    if len(benchmarks) != 1:
        raise ValueError(f'plot_properties: results of one benchmark only, got {sorted(benchmarks)}')
    primate, _ = property_histograms(first)
    series = [(f'{label}: score {result.score:.3f} (n={len(result.model_values)})', property_histograms(result)[1],
               _COLOURS[index % len(_COLOURS)]) for index, (label, result) in enumerate(labelled)]
    return _save_histograms(path, first.bins, first.property_name, primate, len(first.primate_values), series,
                            f"{first.benchmark} (ceiling {first.ceiling:.3f})", size=(5.6, 3.8))
