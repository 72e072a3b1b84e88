"""PNG plots of evaluation and tuning results.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``: nothing here selects a backend or touches
pyplot's global figure state, so importing or calling these functions is safe
in a notebook or GUI session that already configured an interactive backend,
and works headless without ``matplotlib.use("Agg")``. Each PNG is written to a
temporary file and renamed into place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval import metrics
from eval.metrics import SubmissionRow, Solution
from index.manifest import atomic_output

logger = logging.getLogger(__name__)


def _new_figure(width: float = 7.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    fig.tight_layout()
    with atomic_output(out, keep_suffix=True) as tmp:
        fig.savefig(tmp, format="png")
    logger.info("wrote %s", out)
    return out


def plot_gap_vs_value(
    sweep_df: pd.DataFrame,
    out_png: str | os.PathLike,
    chosen_value: float | None = None,
    xlabel: str = "inlier threshold",
    title: str | None = None,
) -> Path:
    """GAP against the candidate value (from :func:`eval.tuning.sweep`), with its CI band.

    A vertical line marks ``chosen_value`` when given. Returns the PNG path.
    """
    missing = [c for c in ("value", "gap", "gap_ci_lo", "gap_ci_hi") if c not in sweep_df.columns]
    if missing:
        raise ValueError(f"sweep_df lacks column(s) {missing}; found {list(sweep_df.columns)}")
    df = sweep_df.sort_values("value")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    x = df["value"].to_numpy(dtype=float)
    ax.fill_between(
        x,
        df["gap_ci_lo"].to_numpy(dtype=float),
        df["gap_ci_hi"].to_numpy(dtype=float),
        alpha=0.25,
        color="C0",
        label="95% bootstrap CI",
    )
    ax.plot(x, df["gap"].to_numpy(dtype=float), marker="o", markersize=3, color="C0", label="GAP")
    if "top1_accuracy" in df.columns:
        ax.plot(x, df["top1_accuracy"].to_numpy(dtype=float), linestyle="--", color="C2", label="top-1 accuracy")
    if chosen_value is not None:
        ax.axvline(float(chosen_value), color="C3", linestyle=":", label=f"chosen = {chosen_value:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title if title is not None else f"GAP vs {xlabel}")
    return _save(fig, out_png)


def plot_precision_vs_rank(
    predictions: Mapping[str, SubmissionRow], solution: Solution, out_png: str | os.PathLike
) -> Path:
    """Precision P(i) and cumulative correct against i, predictions in GAP order.

    The area under P(i) at the correct predictions, over M, is the GAP shown
    in the title. Returns the PNG path.
    """
    value = metrics.gap(predictions, solution)
    ranked = metrics.ranked_predictions(predictions, solution)
    m = sum(1 for s in solution.values() if len(s) > 0)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ranks = ranked["rank"].to_numpy()
    ax.plot(ranks, ranked["precision"].to_numpy(dtype=float), color="C0", label="precision P(i)")
    ax.set_xlabel("number of predictions taken (confidence order)")
    ax.set_ylabel("precision", color="C0")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ranks, ranked["cum_correct"].to_numpy(), color="C1", label="cumulative correct")
    ax2.axhline(m, color="C1", linestyle=":", label=f"M = {m} landmark queries")
    ax2.set_ylabel("cumulative correct", color="C1")
    ax2.set_ylim(0, max(m, 1) * 1.05)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize="small")
    ax.set_title(f"GAP = {value:.4f} ({len(ranked)} predictions, M = {m})")
    return _save(fig, out_png)


def plot_confidence_histogram(
    predictions: Mapping[str, SubmissionRow], solution: Solution, out_png: str | os.PathLike
) -> Path:
    """Confidence histograms of correct, wrong-landmark and non-landmark-query predictions.

    "wrong landmark": a landmark query answered with a landmark not in its
    solution; "non-landmark query": any answer to a query whose solution is
    empty. Returns the PNG path.
    """
    ranked = metrics.ranked_predictions(predictions, solution)
    conf = ranked["confidence"].to_numpy(dtype=float)
    correct = ranked["correct"].to_numpy(dtype=bool)
    is_lm = ranked["is_landmark_query"].to_numpy(dtype=bool)
    groups = {
        "correct": conf[correct],
        "wrong landmark": conf[is_lm & ~correct],
        "non-landmark query": conf[~is_lm],
    }
    finite = conf[np.isfinite(conf)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for (label, values), color in zip(groups.items(), ("C2", "C3", "C7")):
        values = values[np.isfinite(values)]
        ax.hist(values, bins=bins, alpha=0.5, color=color, label=f"{label} ({values.size})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("predictions")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(f"confidence of {len(ranked)} predictions")
    return _save(fig, out_png)
