"""Agreement of per-prompt scores with human ratings: Spearman and Kendall tau-b, with p-values and n.

Human ratings come as `model,item_id,rating` (several raters of one pair are averaged); `model` matches the
NAME given to each score table. This is how a judge or a protocol is validated against people, as the
DSG paper did. scipy is imported inside `correlations`, so the core stays light.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpgbench.data import read_text
from dpgbench.errors import DpgBenchError
from dpgbench.scored import load_scored
from dpgbench.scoring import PROTOCOLS

HUMAN_COLUMNS = ("model", "item_id", "rating")


@dataclass(frozen=True)
class Agreement:
    scope: str  # "all" (every model pooled) or one model's name
    n: int  # (model, item_id) pairs with both a score and a rating
    spearman: float
    spearman_p: float
    kendall_tau_b: float
    kendall_p: float


def read_human(path: str | Path) -> dict[tuple[str, str], float]:
    """(model, item_id) -> mean rating over raters."""
    path = Path(path)
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in HUMAN_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DpgBenchError(
            f"{path}:1: missing column(s) {', '.join(missing)}; expected {','.join(HUMAN_COLUMNS)}"
        )
    sums: dict[tuple[str, str], list[float]] = {}
    for line, row in enumerate(reader, 2):
        try:
            rating = float(row["rating"])
        except (TypeError, ValueError):
            raise DpgBenchError(f"{path}:{line}: rating '{row['rating']}' is not a number") from None
        if math.isnan(rating):
            raise DpgBenchError(f"{path}:{line}: rating is NaN; leave the row out instead")
        key = (row["model"].strip(), row["item_id"].strip())
        sums.setdefault(key, []).append(rating)
    if not sums:
        raise DpgBenchError(f"{path}: no ratings; expected rows of {','.join(HUMAN_COLUMNS)}")
    return {key: sum(values) / len(values) for key, values in sums.items()}


def read_prompt_scores(spec: str, protocol: str) -> dict[str, float]:
    """item_id -> percent from a prompt_scores.csv, an eval folder or a run folder scored by one judge."""
    if protocol not in PROTOCOLS:
        raise DpgBenchError(f"--protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    path = Path(spec)
    if path.is_dir():
        runs = load_scored(spec)
        if len(runs) > 1:
            raise DpgBenchError(
                f"{path}: scored by {len(runs)} judges; name one eval folder ({runs[0].eval_dir}) instead"
            )
        path = runs[0].eval_dir / "prompt_scores.csv"
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    if not reader.fieldnames or any(c not in reader.fieldnames for c in ("protocol", "item_id", "score")):
        raise DpgBenchError(f"{path}:1: expected columns protocol,item_id,score (a prompt_scores.csv)")
    scores: dict[str, float] = {}
    for line, row in enumerate(reader, 2):
        if row["protocol"] != protocol:
            continue
        try:
            scores[row["item_id"]] = float(row["score"])
        except ValueError:
            raise DpgBenchError(f"{path}:{line}: score '{row['score']}' is not a number") from None
    if not scores:
        raise DpgBenchError(f"{path}: no {protocol} rows; choose another --protocol")
    return scores


def parse_named(specs: Sequence[str]) -> dict[str, str]:
    """['sdxl=runs/sdxl/eval/mplug/prompt_scores.csv', ...] -> {name: path}."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise DpgBenchError(
                f"--scores {spec}: write NAME=PATH, NAME being the model column of the human CSV"
            )
        if name.strip() in named:
            raise DpgBenchError(f"--scores {spec}: the name '{name.strip()}' is given twice")
        named[name.strip()] = path.strip()
    return named


def pair_up(
    scores: Mapping[str, Mapping[str, float]], human: Mapping[tuple[str, str], float]
) -> dict[str, list[tuple[str, float, float]]]:
    """Per model: (item_id, score, rating) for the items that have both, in item order."""
    pairs: dict[str, list[tuple[str, float, float]]] = {}
    for model, by_item in scores.items():
        pairs[model] = [(i, s, human[(model, i)]) for i, s in sorted(by_item.items()) if (model, i) in human]
    if not any(pairs.values()):
        have = sorted({m for m, _ in human})
        raise DpgBenchError(
            f"no (model, item_id) pair is in both: the human ratings name models {', '.join(have[:8])}; "
            f"--scores names {', '.join(scores)}; make the names match"
        )
    return pairs


def correlations(pairs: Mapping[str, Sequence[tuple[str, float, float]]]) -> list[Agreement]:
    """Pooled over all models first, then per model (n < 3 gives NaN: too few to rank)."""
    from scipy import stats

    def agreement(scope: str, rows: Sequence[tuple[str, float, float]]) -> Agreement:
        x = [s for _, s, _ in rows]
        y = [r for _, _, r in rows]
        if len(rows) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
            # Too few pairs, or a constant side: no ranking to agree with (scipy would warn and give NaN).
            return Agreement(scope, len(rows), math.nan, math.nan, math.nan, math.nan)
        rho = stats.spearmanr(x, y)
        tau = stats.kendalltau(x, y, variant="b")
        return Agreement(
            scope, len(rows), float(rho.statistic), float(rho.pvalue), float(tau.statistic), float(tau.pvalue)
        )

    pooled = [row for rows in pairs.values() for row in rows]
    return [agreement("all", pooled)] + [agreement(model, rows) for model, rows in pairs.items()]


AGREEMENT_COLUMNS = ["scope", "n", "spearman", "spearman_p", "kendall_tau_b", "kendall_p"]
