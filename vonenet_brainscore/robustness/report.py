"""Writing robustness tables (CSV, JSON) and plotting accuracy against perturbation strength: the last
step of robustness/, on the table evaluate.py returns."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

STRENGTH_LABELS = {'pgd_linf': 'eps (L-inf, pixels in [0, 1])', 'pgd_l2': 'eps (L2, pixels in [0, 1])',
                   'pgd_l1': 'eps (L1, pixels in [0, 1])'}
REQUIRED_COLUMNS = ('model', 'family', 'kind', 'strength', 'accuracy')


def _check_table(table: pd.DataFrame) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; pass the table evaluate_robustness returns")


def write_results(table: pd.DataFrame, path) -> Path:
    """Save the table as CSV or JSON (a list of records), chosen by the file suffix."""
    _check_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == '.csv':
        table.to_csv(path, index=False)
    elif path.suffix.lower() == '.json':
        path.write_text(json.dumps(table.to_dict(orient='records'), indent=2))
    else:
        raise ValueError(f"cannot tell the format of {path}: use a .csv or .json file name")
    return path


def read_results(path) -> pd.DataFrame:
    """A table written by write_results."""
    path = Path(path)
    if path.suffix.lower() == '.csv':
        return pd.read_csv(path)
    if path.suffix.lower() == '.json':
        return pd.DataFrame.from_records(json.loads(path.read_text()))
    raise ValueError(f"cannot tell the format of {path}: use a .csv or .json file name")


def _families(table: pd.DataFrame) -> list:
    """Perturbation families in table order; clean accuracy alone if there are none."""
    families = list(dict.fromkeys(table.loc[table.kind != 'clean', 'family']))
    return families or ['clean']


def _curve(table: pd.DataFrame, model: str, family: str) -> pd.DataFrame:
    """One model's accuracy against strength, starting from its clean accuracy at strength 0."""
    rows = table[(table.model == model) & (table.family == family)][['strength', 'accuracy']]
    if family != 'clean' and not (rows.strength == 0).any():
        clean = table[(table.model == model) & (table.kind == 'clean')][['strength', 'accuracy']]
        rows = pd.concat([clean.assign(strength=0.0), rows])
    return rows.sort_values('strength')


def plot_robustness(table: pd.DataFrame, path, title: Optional[str] = None,
                    families: Optional[Sequence[str]] = None, columns: int = 4) -> Path:
    """Accuracy against strength, one panel per perturbation family and one line per model, saved
    as an image (PNG by suffix). Uses matplotlib's Agg canvas without touching the global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_table(table)
    families = list(families) if families is not None else _families(table)
    unknown = sorted(set(families) - set(table.family))
    if unknown:
        raise ValueError(f"no results for famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                         f"the table has {sorted(set(table.family))}")
    columns = max(1, min(columns, len(families)))
    rows = math.ceil(len(families) / columns)
    figure = Figure(figsize=(3.6 * columns, 3.0 * rows), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, family in zip(axes, families):
        for model in dict.fromkeys(table.model):
            curve = _curve(table, model, family)
            axis.plot(curve.strength, curve.accuracy, marker='o', label=str(model))
        axis.set_title(family)
        axis.set_xlabel(STRENGTH_LABELS.get(family, 'severity' if family != 'clean' else ''))
        axis.set_ylabel('top-1 accuracy')
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    for axis in axes[len(families):]:
        axis.set_visible(False)
    axes[0].legend(fontsize='small')
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
