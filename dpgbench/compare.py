"""Checkpoint comparison: per-category deltas with paired bootstrap confidence intervals over prompts.

Only prompts that every compared run scored are used. A resample draws prompts with replacement (seeded)
and recomputes each category the way scoring pools it (sum of question scores / number of question-image
pairs), so the interval is for the very number the tables show. Pure arithmetic on top of `RunDetail`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dpgbench.errors import DpgBenchError
from dpgbench.scored import PromptDetail, RunDetail, category_order

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Delta:
    """B minus A on one category, with its paired bootstrap interval."""

    level: str  # overall | l1 | l2
    category: str
    a: float  # percent
    b: float
    delta: float
    low: float  # 2.5th percentile of the resampled deltas
    high: float  # 97.5th percentile
    p_value: float  # two-sided, from the share of resampled deltas on the other side of 0
    n_prompts: int  # prompts that carry this category
    n_pairs: int  # question-image pairs in A (the category's weight)

    @property
    def verdict(self) -> str:
        if math.isnan(self.low) or math.isnan(self.high):
            return "too few prompts"
        if self.low > 0:
            return "improved"
        if self.high < 0:
            return "regressed"
        return "no significant change"


@dataclass(frozen=True)
class PromptChange:
    item_id: str
    text: str
    a: float
    b: float

    @property
    def delta(self) -> float:
        return self.b - self.a


@dataclass(frozen=True)
class QuestionChange:
    item_id: str
    proposition_id: int
    question: str
    category: str
    a: float  # percent of images whose final score is 1
    b: float

    @property
    def delta(self) -> float:
        return self.b - self.a


@dataclass
class Comparison:
    a: str  # run labels
    b: str
    protocol: str
    prompts: int  # prompts both runs scored
    dropped: dict[str, int]  # run label -> prompts it scored that the other did not
    deltas: list[Delta]
    prompt_changes: list[PromptChange] = field(default_factory=list)  # sorted by delta
    question_changes: list[QuestionChange] = field(default_factory=list)
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED


# ------------------------------------------------------------------------------------------ bootstrap


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multiplicities of each prompt in each resample, from one seeded generator."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)


def paired_bootstrap(
    a_totals: np.ndarray,
    a_counts: np.ndarray,
    b_totals: np.ndarray,
    b_counts: np.ndarray,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ratio scores (percent) of A and B per column and their bootstrap interval of B - A.

    Arrays are (prompts, categories): per prompt the sum of its question scores and their number; for the
    overall score pass prompt scores as totals and ones as counts. Returns (a, b, low, high, p_value).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a_totals.sum(0) / a_counts.sum(0) * 100
        b = b_totals.sum(0) / b_counts.sum(0) * 100
        deltas = (weights @ b_totals) / (weights @ b_counts) * 100 - (weights @ a_totals) / (
            weights @ a_counts
        ) * 100
    low = np.full(a.shape, math.nan)
    high = np.full(a.shape, math.nan)
    p_value = np.full(a.shape, math.nan)
    for k in range(deltas.shape[1]):
        column = deltas[:, k]
        column = column[~np.isnan(column)]  # a resample without any prompt of a rare category
        if len(column) < 2 or a_counts[:, k].astype(bool).sum() < 2:
            continue
        low[k], high[k] = np.percentile(column, [2.5, 97.5])
        p_value[k] = min(1.0, 2 * min(float(np.mean(column <= 0)), float(np.mean(column >= 0))))
    return a, b, low, high, p_value


# ------------------------------------------------------------------------------------------- compare


def common_prompts(details: Sequence[RunDetail], protocol: str) -> list[str]:
    """Item ids every run counted under the protocol, in the first run's order."""
    counted = [
        {d.prompt.item_id for d in run.prompts if d.scores.get(protocol) is not None} for run in details
    ]
    shared = set.intersection(*counted) if counted else set()
    return [d.prompt.item_id for d in details[0].prompts if d.prompt.item_id in shared]


def _matrices(
    prompts: Sequence[PromptDetail], protocol: str, categories: list[str], level: str
) -> tuple[np.ndarray, np.ndarray]:
    totals = np.zeros((len(prompts), len(categories)))
    counts = np.zeros((len(prompts), len(categories)))
    column = {c: k for k, c in enumerate(categories)}
    for i, detail in enumerate(prompts):
        for l2, (t, n) in detail.categories[protocol].items():
            name = l2 if level == "l2" else l2.split("-")[0].strip()
            if name in column:
                totals[i, column[name]] += t
                counts[i, column[name]] += n
    return totals, counts


def compare(
    a: RunDetail,
    b: RunDetail,
    protocol: str = "strict",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    items: Sequence[str] | None = None,
) -> Comparison:
    """B against A on the prompts both scored (or on `items`, which both must have scored)."""
    if resamples < 100:
        raise DpgBenchError(f"--resamples {resamples}: use at least 100 (2000 gives stable 95% intervals)")
    both = set(common_prompts([a, b], protocol))
    ids = list(items) if items is not None else common_prompts([a, b], protocol)
    if any(i not in both for i in ids):
        raise ValueError(f"compare(items=...): every item must be scored by both runs under {protocol}")
    if len(ids) < 2:
        raise DpgBenchError(
            f"{a.run.label} and {b.run.label} have {len(ids)} prompt(s) in common under {protocol}; "
            "a comparison needs at least 2 (did they run on the same prompts?)"
        )
    a_by, b_by = a.by_id(), b.by_id()
    pa, pb = [a_by[i] for i in ids], [b_by[i] for i in ids]
    weights = resample_weights(len(ids), resamples, seed)
    deltas: list[Delta] = []
    # Overall: the mean of prompt scores (each prompt weighs one).
    sa = np.array([[d.scores[protocol] or 0.0] for d in pa]) / 100
    sb = np.array([[d.scores[protocol] or 0.0] for d in pb]) / 100
    ones = np.ones_like(sa)
    deltas += _deltas("overall", ["all"], (sa, ones), (sb, ones), weights)
    for level in ("l1", "l2"):
        names = {
            c if level == "l2" else c.split("-")[0].strip() for d in pa + pb for c in d.categories[protocol]
        }
        categories = category_order(names)
        deltas += _deltas(
            level,
            categories,
            _matrices(pa, protocol, categories, level),
            _matrices(pb, protocol, categories, level),
            weights,
        )
    chosen = set(ids)
    dropped = {
        run.run.label: sum(
            1 for d in run.prompts if d.scores.get(protocol) is not None and d.prompt.item_id not in chosen
        )
        for run in (a, b)
    }
    return Comparison(
        a.run.label,
        b.run.label,
        protocol,
        len(ids),
        dropped,
        deltas,
        _prompt_changes(pa, pb, protocol),
        _question_changes(pa, pb, protocol),
        resamples,
        seed,
    )


def _deltas(
    level: str,
    categories: list[str],
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    weights: np.ndarray,
) -> list[Delta]:
    if not categories:
        return []
    sa, sb, low, high, p = paired_bootstrap(a[0], a[1], b[0], b[1], weights)
    return [
        Delta(
            level,
            c,
            float(sa[k]),
            float(sb[k]),
            float(sb[k] - sa[k]),
            float(low[k]),
            float(high[k]),
            float(p[k]),
            int(a[1][:, k].astype(bool).sum()),
            int(a[1][:, k].sum()),
        )
        for k, c in enumerate(categories)
    ]


def _prompt_changes(
    pa: Sequence[PromptDetail], pb: Sequence[PromptDetail], protocol: str
) -> list[PromptChange]:
    changes = [
        PromptChange(x.prompt.item_id, x.prompt.text, x.scores[protocol] or 0.0, y.scores[protocol] or 0.0)
        for x, y in zip(pa, pb)
    ]
    return sorted(changes, key=lambda c: (c.delta, c.item_id))


def _question_changes(
    pa: Sequence[PromptDetail], pb: Sequence[PromptDetail], protocol: str
) -> list[QuestionChange]:
    """Per question: the share of images where it finally scored 1, in A and in B."""
    changes = []
    for x, y in zip(pa, pb):
        for k, q in enumerate(x.prompt.questions):
            va = [v for v in (image[k] for image in x.finals[protocol]) if v is not None]
            vb = [v for v in (image[k] for image in y.finals[protocol]) if v is not None]
            if not va or not vb:
                continue
            changes.append(
                QuestionChange(
                    x.prompt.item_id,
                    q.proposition_id,
                    q.question,
                    q.l2,
                    sum(va) / len(va) * 100,
                    sum(vb) / len(vb) * 100,
                )
            )
    return sorted(changes, key=lambda c: (c.delta, c.item_id, c.proposition_id))


@dataclass
class Curve:
    """Category scores of several checkpoints on the prompts all of them scored, for a curve per category."""

    labels: list[str]
    protocol: str
    prompts: int
    scores: dict[tuple[str, str], list[float]]  # (level, category) -> score per checkpoint, percent


def curves(details: Sequence[RunDetail], protocol: str = "strict") -> Curve:
    ids = common_prompts(details, protocol)
    if not ids:
        raise DpgBenchError(f"the {len(details)} runs have no prompt in common under {protocol}")
    scores: dict[tuple[str, str], list[float]] = {}
    for run in details:
        by = run.by_id()
        chosen = [by[i] for i in ids]
        values = [d.scores[protocol] or 0.0 for d in chosen]
        scores.setdefault(("overall", "all"), []).append(sum(values) / len(values))
        for level in ("l1", "l2"):
            names = category_order(
                {
                    c if level == "l2" else c.split("-")[0].strip()
                    for r in details
                    for d in r.prompts
                    for c in d.categories[protocol]
                }
            )
            totals, counts = _matrices(chosen, protocol, names, level)
            for k, name in enumerate(names):
                n = counts[:, k].sum()
                scores.setdefault((level, name), []).append(
                    float(totals[:, k].sum() / n * 100) if n else math.nan
                )
    return Curve([d.run.label for d in details], protocol, len(ids), scores)


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict[str, object]]:
    """One CSV row per (comparison, category)."""
    rows: list[dict[str, object]] = []
    for c in comparisons:
        for d in c.deltas:
            rows.append(
                {
                    "a": c.a,
                    "b": c.b,
                    "protocol": c.protocol,
                    "level": d.level,
                    "category": d.category,
                    "score_a": d.a,
                    "score_b": d.b,
                    "delta": d.delta,
                    "ci_low": d.low,
                    "ci_high": d.high,
                    "p_value": d.p_value,
                    "verdict": d.verdict,
                    "prompts": d.n_prompts,
                    "pairs": d.n_pairs,
                    "resamples": c.resamples,
                    "seed": c.seed,
                }
            )
    return rows


def change_rows(comparisons: Sequence[Comparison], what: str) -> list[dict[str, object]]:
    """Every prompt ("prompts") or question ("questions") of each comparison, most regressed first."""
    rows: list[dict[str, object]] = []
    for c in comparisons:
        if what == "prompts":
            rows += [
                {"a": c.a, "b": c.b, "item_id": p.item_id, "score_a": p.a, "score_b": p.b, "delta": p.delta}
                for p in c.prompt_changes
            ]
        else:
            rows += [
                {
                    "a": c.a,
                    "b": c.b,
                    "item_id": q.item_id,
                    "proposition_id": q.proposition_id,
                    "category": q.category,
                    "question": q.question,
                    "score_a": q.a,
                    "score_b": q.b,
                    "delta": q.delta,
                }
                for q in c.question_changes
            ]
    return rows


COMPARISON_COLUMNS = [
    "a",
    "b",
    "protocol",
    "level",
    "category",
    "score_a",
    "score_b",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "verdict",
    "prompts",
    "pairs",
    "resamples",
    "seed",
]
