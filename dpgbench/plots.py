"""Figures for the tables: category bars, prompt-score distributions, deltas with intervals, checkpoint curves.

matplotlib is imported inside each function and drawn through `Figure` with the Agg canvas (no pyplot, no
display, no global state), so the core stays light and plots work on headless machines and in threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dpgbench.data import write_atomic
from dpgbench.errors import DpgBenchError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dpgbench.compare import Comparison, Curve


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DpgBenchError(
            "plots need matplotlib: pip install 'dpgbench[report]' (or pass --no-plots)"
        ) from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(figure: Figure) -> bytes:
    out = io.BytesIO()
    # A fixed Software tag and no timestamp keep the bytes reproducible for the same data.
    figure.savefig(out, format="png", metadata={"Software": "dpgbench"})
    return out.getvalue()


def save_png(figure: Figure, path: str | Path) -> bytes:
    data = png_bytes(figure)
    write_atomic(path, data)
    return data


def category_bars(scores: Mapping[str, Mapping[str, float]], categories: Sequence[str], title: str) -> Figure:
    """Grouped bars: one group per category, one bar per run (label -> category -> percent)."""
    labels = list(scores)
    figure = _figure(max(6.0, 1.1 * len(categories) + 0.35 * len(categories) * len(labels)), 3.6)
    ax = figure.add_subplot()
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        heights = [_or_zero(scores[label].get(c)) for c in categories]
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(categories))]
        ax.bar(xs, heights, width, label=label)
    ax.set_xticks(
        range(len(categories)), list(categories), rotation=30 if len(categories) > 6 else 0, ha="right"
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    if len(labels) > 1:
        ax.legend(fontsize="small")
    return figure


def score_histogram(prompt_scores: Mapping[str, Sequence[float]], title: str, bins: int = 20) -> Figure:
    """Distribution of prompt scores per run, 0-100 in equal bins (step outlines so runs overlap readably)."""
    figure = _figure(6.0, 3.4)
    ax = figure.add_subplot()
    edges = [100 * i / bins for i in range(bins + 1)]
    for label, values in prompt_scores.items():
        ax.hist(
            [v for v in values if not math.isnan(v)], bins=edges, histtype="step", linewidth=1.6, label=label
        )
    ax.set_xlim(0, 100)
    ax.set_xlabel("prompt score (%)")
    ax.set_ylabel("prompts")
    ax.set_title(title)
    if len(prompt_scores) > 1:
        ax.legend(fontsize="small")
    return figure


def delta_bars(comparison: Comparison, levels: Sequence[str] = ("overall", "l1", "l2")) -> Figure:
    """Horizontal bars of B - A per category with the bootstrap 95% interval as error bars."""
    deltas = [d for d in comparison.deltas if d.level in levels]
    figure = _figure(7.0, 0.32 * len(deltas) + 1.4)
    ax = figure.add_subplot()
    ys = list(range(len(deltas)))[::-1]
    colours = [
        "tab:green" if d.verdict == "improved" else "tab:red" if d.verdict == "regressed" else "tab:gray"
        for d in deltas
    ]
    errors = [
        [0 if math.isnan(d.low) else d.delta - d.low for d in deltas],
        [0 if math.isnan(d.high) else d.high - d.delta for d in deltas],
    ]
    ax.barh(ys, [d.delta for d in deltas], color=colours, xerr=errors, capsize=2)
    ax.set_yticks(ys, [d.category if d.level != "overall" else "OVERALL" for d in deltas], fontsize="small")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{comparison.b} - {comparison.a} ({comparison.protocol}, points; bars: 95% CI)")
    ax.set_title(f"{comparison.prompts} prompts in common, {comparison.resamples} paired resamples")
    return figure


def curve_plot(curve: Curve, level: str = "l1") -> Figure:
    """One line per category of `level` (and the overall score) across checkpoints, in the order given."""
    n_lines = sum(1 for lvl, _ in curve.scores if lvl == level) + 1
    figure = _figure(max(6.0, 0.9 * len(curve.labels) + 2) + 2.2, max(3.8, 0.22 * n_lines + 1.0))
    ax = figure.add_subplot()
    xs = list(range(len(curve.labels)))
    shown = [(category, values) for (lvl, category), values in curve.scores.items() if lvl == level]
    for k, (category, values) in enumerate(shown):
        # The default cycle has 10 colours; the 13 L2 lines continue dashed so no two look alike.
        ax.plot(xs, values, marker="o", linewidth=1.2, linestyle="-" if k < 10 else "--", label=category)
    ax.plot(xs, curve.scores[("overall", "all")], marker="s", color="black", linewidth=2.2, label="overall")
    ax.set_xticks(xs, curve.labels, rotation=30 if len(xs) > 5 else 0, ha="right")
    ax.set_ylabel(f"score (%, {curve.protocol})")
    ax.set_title(f"{len(xs)} checkpoints on {curve.prompts} common prompts")
    # Beside the axes, so no line's last point hides under it.
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def agreement_scatter(pairs: Mapping[str, Sequence[tuple[str, float, float]]], title: str) -> Figure:
    """Per-prompt score against the mean human rating, one colour per model (item_id, score, rating)."""
    figure = _figure(5.6, 4.2)
    ax = figure.add_subplot()
    for model, rows in pairs.items():
        ax.scatter([s for _, s, _ in rows], [r for _, _, r in rows], s=14, alpha=0.7, label=model)
    ax.set_xlim(-2, 102)
    ax.set_xlabel("prompt score (%)")
    ax.set_ylabel("human rating (mean over raters)")
    ax.set_title(title)
    if len(pairs) > 1:
        ax.legend(fontsize="small")
    return figure


def _or_zero(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else value
