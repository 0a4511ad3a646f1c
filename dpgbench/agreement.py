"""Agreement between two judges on the same run: per-question agreement, Cohen's kappa, score deltas.

So a swapped judge is measured and labelled before anyone puts its numbers next to another judge's.
Pure arithmetic over the answers each judge cached in `eval/<judge>/`; nothing is asked again.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dpgbench.data import GraphSet
from dpgbench.errors import DpgBenchError
from dpgbench.runs import RunPaths, read_json, read_logs
from dpgbench.scoring import normalize_answer


@dataclass(frozen=True)
class Agreement:
    n: int  # question-image pairs both judges answered
    agree: float  # share of pairs with the same yes / not-yes verdict
    kappa: float  # Cohen's kappa on yes / not-yes (nan when it is undefined)
    yes_a: float  # share of yes from judge A
    yes_b: float


@dataclass(frozen=True)
class ScoreDelta:
    protocol: str
    level: str
    category: str
    a: float  # percent, judge A
    b: float

    @property
    def delta(self) -> float:
        return self.b - self.a


@dataclass
class JudgeComparison:
    judges: tuple[str, str]
    overall: Agreement
    by_category: dict[str, Agreement]  # level-2 category -> agreement
    score_deltas: list[ScoreDelta] = field(default_factory=list)
    only_a: int = 0  # pairs only judge A answered
    only_b: int = 0


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> Agreement:
    """Agreement and Cohen's kappa of two binary raters: (p_o - p_e) / (1 - p_e)."""
    n = len(pairs)
    if n == 0:
        return Agreement(0, math.nan, math.nan, math.nan, math.nan)
    observed = sum(a == b for a, b in pairs) / n
    yes_a = sum(a for a, _ in pairs) / n
    yes_b = sum(b for _, b in pairs) / n
    expected = yes_a * yes_b + (1 - yes_a) * (1 - yes_b)
    kappa = (observed - expected) / (1 - expected) if expected < 1 else math.nan
    return Agreement(n, observed, kappa, yes_a, yes_b)


def _answers(paths: RunPaths, judge: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(image sha256, question) -> (item_id, raw answer) from a judge's logs."""
    folder = paths.eval_dir(judge)
    logs = sorted(folder.glob("answers*.jsonl"))
    if not logs:
        raise DpgBenchError(
            f"{folder}: no answers from judge '{judge}'; run `dpgbench score {paths.root} --judge {judge}`"
        )
    return {(r["image"], r["question"]): (r["item_id"], r["answer"]) for r in read_logs(logs)}


def _scores(path: Path) -> dict[tuple[str, str, str], float]:
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return {
            (r["protocol"], r["level"], r["category"]): float(r["score"]) if r["score"] else math.nan
            for r in csv.DictReader(f)
        }


def questions_sha(paths: RunPaths, judge: str) -> str:
    return str(read_json(paths.eval_dir(judge) / "manifest.json")["identity"]["questions_sha256"])


def compare_judges(paths: RunPaths, judge_a: str, judge_b: str, graphs: GraphSet) -> JudgeComparison:
    """Compare the cached answers of two judges on one run, question by question."""
    for judge in (judge_a, judge_b):
        if not (paths.eval_dir(judge) / "manifest.json").exists():
            raise DpgBenchError(
                f"{paths.eval_dir(judge)}: not scored by '{judge}'; run `dpgbench score {paths.root} --judge {judge}`"
            )
    if questions_sha(paths, judge_a) != questions_sha(paths, judge_b):
        raise DpgBenchError(
            f"{paths.root}: judges '{judge_a}' and '{judge_b}' answered different question files; "
            "score both with the same --questions"
        )
    a, b = _answers(paths, judge_a), _answers(paths, judge_b)
    category = {(p.item_id, q.question): q.l2 for p, q in graphs.questions()}
    pairs: list[tuple[bool, bool]] = []
    by_category: dict[str, list[tuple[bool, bool]]] = {}
    for key in sorted(a.keys() & b.keys()):
        item_id, answer_a = a[key]
        verdict = (normalize_answer(answer_a) == "yes", normalize_answer(b[key][1]) == "yes")
        pairs.append(verdict)
        by_category.setdefault(category.get((item_id, key[1]), "(not in the question file)"), []).append(
            verdict
        )
    comparison = JudgeComparison(
        (judge_a, judge_b),
        cohen_kappa(pairs),
        {c: cohen_kappa(v) for c, v in sorted(by_category.items())},
        only_a=len(a.keys() - b.keys()),
        only_b=len(b.keys() - a.keys()),
    )
    comparison.score_deltas = score_deltas(
        _scores(paths.eval_dir(judge_a) / "scores.csv"), _scores(paths.eval_dir(judge_b) / "scores.csv")
    )
    return comparison


def score_deltas(
    a: Mapping[tuple[str, str, str], float], b: Mapping[tuple[str, str, str], float]
) -> list[ScoreDelta]:
    return [ScoreDelta(*key, a[key], b[key]) for key in sorted(a.keys() & b.keys())]
