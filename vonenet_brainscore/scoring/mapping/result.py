"""The mapping's result: layer x benchmark scores, which of them are degenerate, the best layers, and the
files written from them (CSV, JSON, heatmap).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

V1_PROPERTIES = 'V1-properties'
# A ceiled score is a fraction of the ceiling; beyond this rounding margin outside [0, 1] it is not one.
SCORE_TOLERANCE = 5e-4
DEGENERATE_MARK = '!'


class DegenerateScoreWarning(UserWarning):
    """A layer's score on a region cannot be read as a fraction of the ceiling, so it is no candidate
    for the best layer: a negative correlation (r^2 / ceiling turns it positive), a ceiling <= 0 or
    NaN, or a score outside [0, 1]."""


def degenerate_reason(score: float, raw: float, ceiling: float, ceiled: bool = True) -> Optional[str]:
    """Why a (ceiled score, raw score, ceiling) triple is degenerate, or None when it reads normally.

    ``ceiled``: the column divides by a ceiling (False for the V1 property mean, ceiled per benchmark).
    A score that was not computed (NaN with no ceiling problem) is missing, not degenerate.
    """
    reasons = []
    if ceiled and ceiling is not None and not pd.isna(ceiling) and ceiling <= 0:
        reasons.append(f'ceiling {ceiling:.3g} <= 0')
    elif ceiled and (ceiling is None or pd.isna(ceiling)) and not (pd.isna(score) and pd.isna(raw)):
        reasons.append('ceiling is NaN')
    if raw is not None and not pd.isna(raw) and raw < 0:
        reasons.append(f'negative correlation (raw {raw:.3f}; r^2 / ceiling would count it as positive)')
    if score is not None and not pd.isna(score) and (not np.isfinite(score) or score < -SCORE_TOLERANCE
                                                      or score > 1 + SCORE_TOLERANCE):
        reasons.append(f'score {score:.3g} outside [0, 1]')
    return '; '.join(reasons) or None


@dataclass
class LayerMapping:
    """Scores of every layer (rows) on every benchmark (columns), with what is needed to read them."""

    model: str
    scores: pd.DataFrame          # ceiled scores (Brain-Score's r^2 / ceiling for neural benchmarks)
    raw: pd.DataFrame             # raw scores (median Pearson r for neural benchmarks)
    ceilings: Dict[str, float]
    regions: Dict[str, Optional[str]]   # benchmark -> region
    committed: Dict[str, str]           # region -> committed layer
    metric: str = 'pls'
    layer_info: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # stimulus set -> layer -> info
    v1_properties: Dict[str, List[dict]] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return self.scores

    def region_scores(self) -> pd.DataFrame:
        """layer x region: the mean over each region's benchmarks."""
        columns = {}
        for benchmark, region in self.regions.items():
            columns.setdefault(region or benchmark, []).append(benchmark)
        return pd.DataFrame({region: self.scores[names].mean(axis=1) for region, names in columns.items()})

    def degenerate(self) -> Dict[Tuple[str, str], str]:
        """``{(layer, benchmark): reason}`` for every score that cannot be read as a fraction of the
        ceiling (see ``degenerate_reason``); these are left out of the best-layer choice."""
        found = {}
        for benchmark in self.scores.columns:
            ceiling = self.ceilings.get(benchmark, math.nan)
            for layer in self.scores.index:
                reason = degenerate_reason(self.scores.loc[layer, benchmark], self.raw.loc[layer, benchmark]
                                           if benchmark in self.raw.columns else math.nan, ceiling,
                                           ceiled=benchmark != V1_PROPERTIES)
                if reason:
                    found[layer, benchmark] = reason
        return found

    def _region_of(self, benchmark: str) -> str:
        return self.regions.get(benchmark) or benchmark

    def degenerate_messages(self) -> List[str]:
        """One line per (layer, region) with a degenerate score, naming the benchmark and why."""
        by_region: Dict[Tuple[str, str], List[str]] = {}
        for (layer, benchmark), reason in self.degenerate().items():
            by_region.setdefault((layer, self._region_of(benchmark)), []).append(f'{benchmark}: {reason}')
        return [f"layer {layer!r} on region {region}: {'; '.join(notes)}; left out of the best-layer choice"
                for (layer, region), notes in by_region.items()]

    def best_layers(self) -> pd.DataFrame:
        """Per region: the best-scoring layer next to the committed one, with both scores.

        A layer with a degenerate score on any of the region's benchmarks (``degenerate``) is no
        candidate; ``excluded_layers`` names those layers.
        """
        rows = []
        per_region = self.region_scores()
        excluded: Dict[str, List[str]] = {}
        for layer, benchmark in self.degenerate():
            names = excluded.setdefault(self._region_of(benchmark), [])
            if layer not in names:
                names.append(layer)
        for region in per_region.columns:
            column = per_region[region]
            committed = self.committed.get(region)
            candidates = column.drop(index=[layer for layer in excluded.get(region, []) if layer in column.index])
            best = candidates.idxmax() if candidates.notna().any() else None
            rows.append({'region': region, 'best_layer': best,
                         'best_score': float(column[best]) if best is not None else math.nan,
                         'committed_layer': committed,
                         'committed_score': float(column[committed]) if committed in column.index else math.nan,
                         'benchmarks': ', '.join(b for b, r in self.regions.items() if (r or b) == region),
                         'excluded_layers': ', '.join(excluded.get(region, []))})
        return pd.DataFrame(rows).set_index('region')

    def formatted_scores(self, digits: int = 3) -> pd.DataFrame:
        """The score table as text, degenerate scores marked with a trailing ``!`` (see ``degenerate``)."""
        degenerate = self.degenerate()
        return pd.DataFrame(
            [[('n/a' if pd.isna(value) else f'{value:.{digits}f}')
              + (f' {DEGENERATE_MARK}' if (layer, benchmark) in degenerate else '')
              for benchmark, value in row.items()] for layer, row in self.scores.iterrows()],
            index=self.scores.index, columns=self.scores.columns)

    def as_dict(self) -> dict:
        def clean(frame):
            return {layer: {b: (None if pd.isna(v) else float(v)) for b, v in row.items()}
                    for layer, row in frame.iterrows()}
        best = self.best_layers().reset_index()
        return {'model': self.model, 'metric': self.metric, 'layers': list(self.scores.index),
                'benchmarks': [{'identifier': b, 'region': self.regions[b],
                                'ceiling': None if pd.isna(self.ceilings.get(b, math.nan)) else self.ceilings[b]}
                               for b in self.scores.columns],
                'scores': clean(self.scores), 'raw': clean(self.raw),
                'best_layers': json.loads(best.to_json(orient='records')),
                'committed': self.committed, 'layer_info': self.layer_info, 'v1_properties': self.v1_properties,
                'degenerate': [{'layer': layer, 'benchmark': benchmark, 'region': self._region_of(benchmark),
                                'reason': reason} for (layer, benchmark), reason in self.degenerate().items()]}

    def to_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    def to_csv(self, path) -> Path:
        """The layer x benchmark table of ceiled scores (rows in network order)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.scores.rename_axis('layer').to_csv(path)
        return path

    def plot_heatmap(self, path, title: Optional[str] = None) -> Path:
        """Layers (rows, network order) x benchmarks; boxes mark each column's best layer, * the committed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
        values = self.scores.to_numpy(dtype=float)
        layers, benchmarks = list(self.scores.index), list(self.scores.columns)
        flagged = self.degenerate()
        degenerate = np.array([[(layer, benchmark) in flagged for benchmark in benchmarks]
                               for layer in layers], dtype=bool).reshape(values.shape)
        readable = np.where(degenerate, np.nan, values)  # degenerate cells: grey, hatched, never the best
        figure = Figure(figsize=(max(5., 2.6 + 1.3 * len(benchmarks)), 1.8 + 0.32 * len(layers)))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        finite = readable[np.isfinite(readable)]
        vmax = max(float(finite.max()) if finite.size else 1., 1e-6)
        image = axes.imshow(np.ma.masked_invalid(readable), aspect='auto', cmap='viridis', vmin=0, vmax=vmax)
        axes.set_xticks(range(len(benchmarks)))
        axes.set_xticklabels(benchmarks, rotation=30, ha='right', fontsize=8)
        axes.set_yticks(range(len(layers)))
        axes.set_yticklabels(layers, fontsize=8)
        for col, benchmark in enumerate(benchmarks):
            committed = self.committed.get(self.regions.get(benchmark) or '')
            column = readable[:, col]
            for row in range(len(layers)):
                value = values[row, col]
                text = 'n/a' if np.isnan(value) else f'{value:.2f}'
                if degenerate[row, col]:
                    text += DEGENERATE_MARK
                    axes.add_patch(Rectangle((col - .5, row - .5), 1, 1, facecolor='0.75', edgecolor='0.45',
                                             hatch='///', linewidth=0))
                if layers[row] == committed:
                    text += '*'
                axes.text(col, row, text, ha='center', va='center', fontsize=7,
                          color='black' if degenerate[row, col] or (np.isfinite(value) and value > 0.6 * vmax)
                          else 'white')
            if np.isfinite(column).any():
                best = int(np.nanargmax(column))
                axes.add_patch(Rectangle((col - .5, best - .5), 1, 1, fill=False, edgecolor='red', linewidth=2))
        figure.colorbar(image, ax=axes, label='score (ceiled)')
        legend = 'red box: best layer, *: committed layer'
        if degenerate.any():
            legend += f'\n{DEGENERATE_MARK} grey: degenerate, never best (r < 0, ceiling <= 0 or NaN, or outside [0, 1])'
        axes.set_title(title or f'{self.model}\n{legend}', fontsize=8)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
        return path

    def save(self, directory) -> Dict[str, Path]:
        """layer_mapping.csv, layer_mapping.json and layer_mapping.png in ``directory``."""
        directory = Path(directory)
        return {'csv': self.to_csv(directory / 'layer_mapping.csv'),
                'json': self.to_json(directory / 'layer_mapping.json'),
                'heatmap': self.plot_heatmap(directory / 'layer_mapping.png')}

