"""Pure arithmetic: raw answers + question graphs -> per-image, per-prompt, per-category scores.

Three protocols from one set of answers (see `docs/protocols.md` for the why of each rule):
- `strict` (default): all rows; dependency zeros cascade through the whole graph whatever the row order;
  a missing image scores 0 on every question; answers are normalised ("Yes." counts as yes).
- `official`: exactly upstream `dpg_bench/compute_dpg_bench.py` (ELLA repo, commit 3c228f1), quirks kept.
- `dsg`: DSG's `calc_vqa_score`: a question scores 0 if a parent's raw answer is not "yes" (no cascade).
No I/O here. Scores are percentages (0-100); `n` counts prompts (overall) or question-image pairs
(categories).
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpgbench.data import Prompt, Question

PROTOCOLS = ("strict", "official", "dsg")

# Answers of one image: question text -> raw answer (a judge gives one answer per text). An answer table
# made elsewhere answers per question id, and two questions of one prompt can share a text (54 prompts of
# DSG-1k do: "Is there a chair?" for two chairs), so it also keys each answer by (proposition_id, text),
# which wins. A prompt has one slot per image; None = the image is missing or unreadable. Prompts absent
# from the mapping have no images at all.
ImageAnswers = Mapping[Any, str]
PromptAnswers = Sequence[ImageAnswers | None]


def answer_for(image: ImageAnswers, q: Question) -> str | None:
    """The raw answer to one question of one image, or None if there is none."""
    answer = image.get((q.proposition_id, q.question))
    return image.get(q.question) if answer is None else answer


def normalize_answer(answer: str | None) -> str:
    """'Yes.' -> 'yes', ' NO ' -> 'no'; anything else is returned lower-cased and stripped."""
    if answer is None:
        return ""
    if answer in ("yes", "no"):  # nearly every answer: skip the string work
        return answer
    return answer.strip().lower().strip(string.punctuation + " ")


def is_yes(answer: str | None, protocol: str) -> bool:
    """official and dsg compare exactly as their reference code does; strict normalises first."""
    if protocol == "strict":
        return normalize_answer(answer) == "yes"
    return answer == "yes"


@dataclass(frozen=True)
class CategoryScore:
    score: float  # percent
    n: int


@dataclass
class ProtocolResult:
    protocol: str
    overall: float  # percent, nan when no prompt was scored
    n: int
    l1: dict[str, CategoryScore]
    l2: dict[str, CategoryScore]
    prompts: dict[str, float]  # item_id -> percent, for the prompts this protocol counts
    excluded: dict[str, str] = field(default_factory=dict)  # item_id -> why it is not counted
    missing_images: list[tuple[str, int]] = field(default_factory=list)  # scored as 0 (strict, dsg)


@dataclass
class AnswerStats:
    """What the answers looked like, so nothing odd goes unreported."""

    answers: int = 0
    other: int = 0  # neither yes nor no after normalisation
    unanswered: int = 0  # a question of an existing image with no recorded answer
    examples: list[str] = field(default_factory=list)


class _Pool:
    """Per-category sums of 0/1 question scores; exact, since the sums are integers."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, category: str, value: float) -> None:
        self.total[category] = self.total.get(category, 0.0) + value
        self.count[category] = self.count.get(category, 0) + 1

    def result(self) -> dict[str, CategoryScore]:
        return {
            c: CategoryScore(self.total[c] / self.count[c] * 100, self.count[c]) for c in sorted(self.total)
        }


def _l1_of(l2_scores: _Pool) -> _Pool:
    pool = _Pool()
    for category, total in l2_scores.total.items():
        l1 = category.split("-")[0].strip()
        pool.total[l1] = pool.total.get(l1, 0.0) + total
        pool.count[l1] = pool.count.get(l1, 0) + l2_scores.count[category]
    return pool


def _mean_percent(values: list[float]) -> float:
    return float(np.mean(values)) * 100 if values else math.nan


# ---------------------------------------------------------------------------------------------- strict


def ancestors(questions: Sequence[Question]) -> list[tuple[list[int], bool]]:
    """For each question: indices of all its ancestors, and whether every ancestor id exists.

    Cascading zeros in graph order equals: a question keeps its score only if every ancestor was answered
    yes. This form is order-free and terminates on cycles.
    """
    by_id: dict[int, list[int]] = {}
    for i, q in enumerate(questions):
        by_id.setdefault(q.proposition_id, []).append(i)
    out = []
    for q in questions:
        seen: set[int] = set()
        complete = True
        stack = [p for p in q.parents if p != 0]
        while stack:
            parent = stack.pop()
            if parent not in by_id:
                complete = False
                continue
            for j in by_id[parent]:
                if j not in seen:
                    seen.add(j)
                    stack.extend(p for p in questions[j].parents if p != 0)
        out.append((sorted(seen), complete))
    return out


def strict_image(
    questions: Sequence[Question],
    answers: ImageAnswers | None,
    tree: list[tuple[list[int], bool]] | None = None,
) -> list[float]:
    """Final 0/1 score of each question of one image under the strict protocol."""
    if answers is None:
        return [0.0] * len(questions)
    tree = tree or ancestors(questions)
    raw = [is_yes(answer_for(answers, q), "strict") for q in questions]
    return [
        float(raw[i] and complete and all(raw[j] for j in above)) for i, (above, complete) in enumerate(tree)
    ]


def dsg_image(questions: Sequence[Question], answers: ImageAnswers | None) -> list[float]:
    """DSG: zero a question whose parent's raw answer is not yes; a missing parent id counts as not yes."""
    if answers is None:
        return [0.0] * len(questions)
    own = [is_yes(answer_for(answers, q), "dsg") for q in questions]
    by_id = {
        q.proposition_id: yes for q, yes in zip(questions, own)
    }  # a repeated id: the last wins, as in DSG
    return [
        float(yes and all(p == 0 or by_id.get(p, False) for p in q.parents)) for q, yes in zip(questions, own)
    ]


def _score_graph_protocol(
    protocol: str, prompts: Sequence[Prompt], answers: Mapping[str, PromptAnswers], n_images: int
) -> ProtocolResult:
    pool = _Pool()
    prompt_scores: dict[str, float] = {}
    excluded: dict[str, str] = {}
    missing: list[tuple[str, int]] = []
    for prompt in prompts:
        questions = prompt.questions
        if not questions:
            excluded[prompt.item_id] = "no questions"
            continue
        slots = list(answers.get(prompt.item_id, ()))
        slots += [None] * (n_images - len(slots))
        tree = ancestors(questions) if protocol == "strict" else None
        categories = [q.l2 for q in questions]
        image_scores = []
        for index, image in enumerate(slots):
            if image is None:
                missing.append((prompt.item_id, index))
            final = (
                strict_image(questions, image, tree) if protocol == "strict" else dsg_image(questions, image)
            )
            for category, value in zip(categories, final):
                pool.add(category, value)
            image_scores.append(sum(final) / len(final))
        prompt_scores[prompt.item_id] = sum(image_scores) / len(image_scores) * 100
    overall = sum(prompt_scores.values()) / len(prompt_scores) if prompt_scores else math.nan
    return ProtocolResult(
        protocol,
        overall,
        len(prompt_scores),
        _l1_of(pool).result(),
        pool.result(),
        prompt_scores,
        excluded,
        missing,
    )


# -------------------------------------------------------------------------------------------- official


class _UpstreamFailure(Exception):
    """Where upstream's per-file try/except would drop the prompt."""


def official_view(prompts: Sequence[Prompt]) -> dict[str, dict[int, Question]]:
    """Upstream's `prepare_dpg_data`: rows in file order, the first data row skipped; an item seen again
    after another item starts over; a repeated id overwrites the earlier question in its place."""
    rows = sorted(((q.row, p.item_id, q) for p in prompts for q in p.questions), key=lambda r: r[0])
    view: dict[str, dict[int, Question]] = {}
    previous = ""
    for _, item_id, q in rows[1:]:
        if item_id == previous:
            view[item_id][q.proposition_id] = q
        else:
            view[item_id] = {q.proposition_id: q}
        previous = item_id
    return view


def official_image(graph: Mapping[int, Question], answers: ImageAnswers) -> tuple[list[float], list[float]]:
    """(raw, final) scores in upstream's order; raises _UpstreamFailure where upstream raises KeyError."""
    scores = {pid: float(answer_for(answers, q) == "yes") for pid, q in graph.items()}
    raw = list(scores.values())
    for pid, q in graph.items():
        for parent in q.parents:
            if parent == 0:
                continue
            if parent not in scores:
                raise _UpstreamFailure(
                    f"question {pid}: parent {parent} is not in the graph (KeyError upstream)"
                )
            if scores[parent] == 0:
                scores[pid] = 0
                break
    return raw, list(scores.values())


def _score_official(
    prompts: Sequence[Prompt], answers: Mapping[str, PromptAnswers], n_images: int
) -> ProtocolResult:
    view = official_view(prompts)
    l2_lists: dict[str, list[float]] = {}
    prompt_scores: dict[str, float] = {}
    fractions: list[float] = []
    excluded: dict[str, str] = {}
    for prompt in prompts:
        item_id = prompt.item_id
        graph = view.get(item_id)
        slots = answers.get(item_id)
        if not graph:
            excluded[item_id] = "no questions left after upstream skips the first CSV row"
            continue
        if not slots or all(s is None for s in slots):
            excluded[item_id] = "no images"
            continue
        if len(slots) < n_images or any(s is None for s in slots[:n_images]):
            excluded[item_id] = "incomplete grid (an image is missing)"
            continue
        if not any(slots[i] for i in range(n_images)):
            excluded[item_id] = "no recorded answers"
            continue
        try:
            scores = []
            raw: list[float] = []
            for index in range(n_images):
                raw, final = official_image(graph, slots[index] or {})
                scores.append(sum(final) / len(final))
        except _UpstreamFailure as exc:
            excluded[item_id] = f"dropped as upstream does: {exc}"
            continue
        average = sum(scores) / len(scores)
        fractions.append(average)
        prompt_scores[item_id] = average * 100
        # Upstream pools the raw answers of the last image only; an empty tuple (NaN upstream) raises there
        # after the prompt score is kept, leaving the remaining questions out of the categories.
        for q, value in zip(graph.values(), raw):
            if not q.tuple:
                break
            l2_lists.setdefault(q.l2, []).append(value)
    pool = _Pool()
    for category, values in l2_lists.items():
        pool.total[category] = float(sum(values))
        pool.count[category] = len(values)
    return ProtocolResult(
        "official",
        _mean_percent(fractions),
        len(fractions),
        _l1_of(pool).result(),
        pool.result(),
        prompt_scores,
        excluded,
        [],
    )


# ----------------------------------------------------------------------------------------------- entry


def answer_stats(prompts: Sequence[Prompt], answers: Mapping[str, PromptAnswers]) -> AnswerStats:
    stats = AnswerStats()
    for prompt in prompts:
        for index, image in enumerate(answers.get(prompt.item_id, ())):
            if image is None:
                continue
            for q in prompt.questions:
                answer = answer_for(image, q)
                if answer is None:
                    stats.unanswered += 1
                    continue
                stats.answers += 1
                if normalize_answer(answer) not in ("yes", "no"):
                    stats.other += 1
                    if len(stats.examples) < 5:
                        stats.examples.append(f"{prompt.item_id}[{index}] '{q.question}' -> {answer!r}")
    return stats


def score(
    prompts: Sequence[Prompt],
    answers: Mapping[str, PromptAnswers],
    protocols: Sequence[str] = PROTOCOLS,
    n_images: int = 4,
) -> dict[str, ProtocolResult]:
    """Score one set of answers under each protocol."""
    results = {}
    for protocol in protocols:
        if protocol == "official":
            results[protocol] = _score_official(prompts, answers, n_images)
        elif protocol in ("strict", "dsg"):
            results[protocol] = _score_graph_protocol(protocol, prompts, answers, n_images)
        else:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return results


def score_rows(results: Mapping[str, ProtocolResult]) -> list[dict[str, object]]:
    """Rows of scores.csv: protocol, level (overall/l1/l2), category, score (percent), n."""
    rows: list[dict[str, object]] = []
    for r in results.values():
        rows.append(
            {"protocol": r.protocol, "level": "overall", "category": "all", "score": r.overall, "n": r.n}
        )
        for level, table in (("l1", r.l1), ("l2", r.l2)):
            for category, c in table.items():
                rows.append(
                    {"protocol": r.protocol, "level": level, "category": category, "score": c.score, "n": c.n}
                )
    return rows


def prompt_rows(results: Mapping[str, ProtocolResult]) -> list[dict[str, object]]:
    """Rows of prompt_scores.csv: protocol, item_id, score (percent)."""
    return [
        {"protocol": r.protocol, "item_id": item_id, "score": value}
        for r in results.values()
        for item_id, value in r.prompts.items()
    ]
