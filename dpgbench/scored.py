"""Scored runs as the reporting commands see them: one (run folder, judge) with its tables and provenance.

`load_scored` turns what the user typed (a run folder, an eval folder, a folder of score tables) into
`ScoredRun`s. `load_detail` recomputes every question of every image from answers.jsonl and the question
graph with the per-image rules of `scoring.py`, and checks the sums against `scoring.score` and scores.csv.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgbench import catalog
from dpgbench.data import GraphSet, Prompt, read_text
from dpgbench.errors import DpgBenchError
from dpgbench.evaluate import cached_answers, run_prompts
from dpgbench.runs import RunPaths, finished_images, read_json, sha256_bytes
from dpgbench.scoring import (
    PROTOCOLS,
    CategoryScore,
    ProtocolResult,
    ancestors,
    dsg_image,
    official_image,
    official_view,
    score,
    strict_image,
)

# The order of DPG-Bench's level-1 categories in the ELLA paper (Table 4); others follow alphabetically.
L1_ORDER = ("global", "entity", "attribute", "relation", "other")


def category_order(names: Sequence[str] | set[str]) -> list[str]:
    """L1 or L2 category names in the paper's L1 order, then by name."""

    def key(name: str) -> tuple[int, str]:
        l1 = name.split("-")[0].strip()
        return (L1_ORDER.index(l1) if l1 in L1_ORDER else len(L1_ORDER), name)

    return sorted(set(names), key=key)


@dataclass
class ProtocolScores:
    """One protocol's block of scores.csv."""

    overall: float
    n: int
    l1: dict[str, CategoryScore] = field(default_factory=dict)
    l2: dict[str, CategoryScore] = field(default_factory=dict)


@dataclass
class ScoredRun:
    """A judge's finished scores of one run, with where they came from."""

    label: str
    eval_dir: Path
    judge: str
    scores: dict[str, ProtocolScores]
    summary: dict[str, Any]
    eval_manifest: dict[str, Any] | None = None
    run_root: Path | None = None
    run_manifest: dict[str, Any] | None = None

    @property
    def questions(self) -> dict[str, Any]:
        """{name, path, sha256} of the question graphs the scores were computed with."""
        source = self.eval_manifest or self.summary
        return dict(source.get("questions") or {})

    @property
    def judge_identity(self) -> str:
        """What decides the answers (judge name and its settings); equal strings = comparable judges."""
        if self.eval_manifest is not None:
            identity = self.eval_manifest.get("identity", {})
            return json.dumps(
                {"judge": identity.get("judge", self.judge), "judge_args": identity.get("judge_args", {})},
                sort_keys=True,
            )
        return json.dumps({"answers_table": str(self.summary.get("answers", self.eval_dir))})

    @property
    def judge_label(self) -> str:
        """The judge name with its non-default settings, for tables."""
        if self.eval_manifest is None:
            return f"answer table {Path(str(self.summary.get('answers', '?'))).name}"
        args = self.eval_manifest.get("identity", {}).get("judge_args", {})
        return self.judge + "".join(f" {k}={v}" for k, v in sorted(args.items()))

    @property
    def item_ids(self) -> list[str] | None:
        return list(self.run_manifest["item_ids"]) if self.run_manifest else None

    @property
    def n_images(self) -> int:
        if self.run_manifest is None:
            return 4
        return int(self.run_manifest.get("config", {}).get("images_per_prompt", 4))


# ------------------------------------------------------------------------------------------- loading


def read_scores_csv(path: Path) -> dict[str, ProtocolScores]:
    """scores.csv (protocol, level, category, score, n) -> per protocol blocks."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    wanted = ("protocol", "level", "category", "score", "n")
    if not reader.fieldnames or any(c not in reader.fieldnames for c in wanted):
        raise DpgBenchError(
            f"{path}:1: expected columns {','.join(wanted)}; rerun `dpgbench score` to rewrite it"
        )
    out: dict[str, ProtocolScores] = {}
    for line, row in enumerate(reader, 2):
        try:
            value = float(row["score"]) if row["score"].strip() else math.nan
            n = int(row["n"])
        except ValueError:
            raise DpgBenchError(
                f"{path}:{line}: score '{row['score']}' or n '{row['n']}' is not a number"
            ) from None
        block = out.setdefault(row["protocol"], ProtocolScores(math.nan, 0))
        if row["level"] == "overall":
            block.overall, block.n = value, n
        elif row["level"] in ("l1", "l2"):
            getattr(block, row["level"])[row["category"]] = CategoryScore(value, n)
    return out


def split_label(spec: str) -> tuple[str | None, Path]:
    """'ckpt-1000=results/run' -> ('ckpt-1000', Path('results/run')); a plain path has no label."""
    if "=" in spec and not Path(spec).exists():
        label, _, path = spec.partition("=")
        return label.strip() or None, Path(path)
    return None, Path(spec)


def _kind(folder: Path) -> str | None:
    manifest = folder / "manifest.json"
    return str(read_json(manifest).get("kind")) if manifest.is_file() else None


def load_scored(spec: str, judge: str | None = None) -> list[ScoredRun]:
    """The scored (run, judge) pairs a command-line argument names: one per judge of a run folder, or one
    for an eval folder or a folder of score tables (`dpgbench score --answers ... --out DIR`)."""
    label, path = split_label(spec)
    if path.is_file() and path.name == "scores.csv":
        path = path.parent
    if not path.is_dir():
        raise DpgBenchError(f"{path}: no such folder; give a run folder made by `dpgbench generate`")
    kind = _kind(path)
    if kind == "dpgbench-run":
        paths = RunPaths(path)
        judges = paths.judges()
        if judge is not None:
            if judge not in judges:
                known = ", ".join(judges) or "none yet"
                raise DpgBenchError(
                    f"{path}: judge '{judge}' has not scored this run (judges here: {known}); "
                    f"run `dpgbench score {path} --judge {judge}`"
                )
            judges = [judge]
        if not judges:
            raise DpgBenchError(
                f"{path}: no judge has scored this run yet; run `dpgbench score {path} --judge mplug-large`"
            )
        many = len(judges) > 1
        return [
            _load_eval(paths.eval_dir(j), (label or path.name) + (f"/{j}" if many else "")) for j in judges
        ]
    if kind == "dpgbench-eval":
        return [_load_eval(path, label)]
    if (path / "scores.csv").is_file():
        summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
        return [ScoredRun(label or path.name, path, path.name, read_scores_csv(path / "scores.csv"), summary)]
    raise DpgBenchError(
        f"{path}: not a run folder (manifest.json), an eval folder (eval/<judge>) or a folder with scores.csv"
    )


def _load_eval(eval_dir: Path, label: str | None) -> ScoredRun:
    manifest = read_json(eval_dir / "manifest.json")
    judge = str(manifest.get("identity", {}).get("judge", eval_dir.name))
    root = eval_dir.parent.parent
    run_manifest = read_json(root / "manifest.json") if _kind(root) == "dpgbench-run" else None
    if not (eval_dir / "scores.csv").is_file():
        target = root if run_manifest is not None else eval_dir
        raise DpgBenchError(
            f"{eval_dir}: not scored yet (some answers are still missing, other shards may be running); "
            f"run `dpgbench score {target} --judge {judge}` to finish"
        )
    summary = read_json(eval_dir / "summary.json") if (eval_dir / "summary.json").is_file() else {}
    name = label or (root.name if run_manifest is not None else eval_dir.name)
    return ScoredRun(
        name,
        eval_dir,
        judge,
        read_scores_csv(eval_dir / "scores.csv"),
        summary,
        manifest,
        root if run_manifest is not None else None,
        run_manifest,
    )


def load_many(specs: Sequence[str], judge: str | None = None) -> list[ScoredRun]:
    """Every scored pair of several arguments, with labels made unique (a repeated name gets its folder)."""
    runs = [run for spec in specs for run in load_scored(spec, judge)]
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = str(run.run_root or run.eval_dir) + (f"/{run.judge}" if run.run_root else "")
    return runs


def check_same_setup(runs: Sequence[ScoredRun], what: str) -> None:
    """Refuse to compare runs judged differently or on different question graphs (one line, with the fix)."""
    first = runs[0]
    for run in runs[1:]:
        if run.questions.get("sha256") != first.questions.get("sha256"):
            raise DpgBenchError(
                f"{what}: {run.label} was scored on questions '{run.questions.get('name')}' "
                f"(sha256 {str(run.questions.get('sha256'))[:12]}), {first.label} on "
                f"'{first.questions.get('name')}' ({str(first.questions.get('sha256'))[:12]}); "
                "score both with the same question file"
            )
        if run.judge_identity != first.judge_identity:
            raise DpgBenchError(
                f"{what}: {run.label} was judged by '{run.judge_label}', {first.label} by '{first.judge_label}'; "
                "pick one judge with --judge NAME (scores of different judges are not comparable)"
            )


# -------------------------------------------------------------------------------------------- detail


@dataclass
class ImageRef:
    index: int
    file: str | None  # relative to the run folder
    problem: str | None = None  # why this image has no answers
    # sha256 of the file's bytes, as its answers are keyed (logged, or read when it changed)
    sha256: str | None = None


@dataclass
class PromptDetail:
    """One prompt of one scored run, question by question."""

    prompt: Prompt
    images: list[ImageRef]
    answers: list[dict[str, str] | None]  # per image: question text -> raw answer; None = no image
    # protocol -> per image -> per question of `prompt.questions`: final 0/1, None where the protocol
    # does not count the question (official: the CSV's first row, a repeated id, an excluded prompt).
    finals: dict[str, list[list[float | None]]] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)  # percent; None = not counted
    excluded: dict[str, str] = field(default_factory=dict)
    # protocol -> l2 category -> (sum of 0/1 question scores, number of question-image pairs)
    categories: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


@dataclass
class RunDetail:
    run: ScoredRun
    graphs: GraphSet
    n_images: int
    prompts: list[PromptDetail]
    results: dict[str, ProtocolResult]  # `scoring.score` of the same answers: the authoritative totals

    def by_id(self) -> dict[str, PromptDetail]:
        return {d.prompt.item_id: d for d in self.prompts}


def resolve_questions(run: ScoredRun, questions: str | None = None) -> GraphSet:
    """The question graphs the run was scored with, found by path or name and verified by sha256."""
    want = run.questions.get("sha256")
    candidates: list[Any] = [questions, run.questions.get("path")]
    candidates.append((run.eval_manifest or {}).get("config", {}).get("questions"))
    tried: list[str] = []
    for spec in candidates:
        if not spec or spec in tried:
            continue
        tried.append(spec)
        try:
            graphs = catalog.resolve(str(spec))
        except DpgBenchError:
            continue
        if want is None or graphs.sha256 == want:
            return graphs
    raise DpgBenchError(
        f"{run.eval_dir}: the question file it was scored with (sha256 {str(want)[:12]}, tried "
        f"{', '.join(map(str, tried)) or 'nothing'}) is not available unchanged; pass it with --questions PATH"
    )


def load_detail(run: ScoredRun, questions: str | None = None) -> RunDetail:
    """Every question of every image of the run, recomputed from the cached raw answers."""
    if run.run_root is None or run.eval_manifest is None:
        raise DpgBenchError(
            f"{run.eval_dir}: per-question detail needs a run folder with images and answers.jsonl "
            "(this folder holds only score tables)"
        )
    graphs = resolve_questions(run, questions)
    try:
        return _detail(run, graphs, hash_files=False)
    except DpgBenchError:
        # An image changed on disk after it was logged: evaluate() keyed its answers by the file's bytes,
        # so do the same (slower: every image is read) before calling the table stale.
        return _detail(run, graphs, hash_files=True)


def _detail(run: ScoredRun, graphs: GraphSet, hash_files: bool) -> RunDetail:
    assert run.run_root is not None
    paths = RunPaths(run.run_root)
    prompts, _ = run_prompts(paths, graphs)
    n_images = run.n_images
    cache = cached_answers(run.eval_dir)
    records = finished_images(paths)
    details: list[PromptDetail] = []
    slots: dict[str, list[dict[str, str] | None]] = {}
    # 1. The answers of each image, found by the image's sha256 as evaluate() cached them.
    for prompt in prompts:
        texts = list(dict.fromkeys(q.question for q in prompt.questions))
        images: list[ImageRef] = []
        answers: list[dict[str, str] | None] = []
        for index in range(n_images):
            record = records.get((prompt.item_id, index))
            if record is None or record.get("status") != "ok":
                why = "not generated" if record is None else f"generation failed: {record.get('error', '')}"
                images.append(ImageRef(index, (record or {}).get("file"), why))
                answers.append(None)
                continue
            known, sha = _answers_of(paths, record, texts, cache, hash_files)
            problem = None if known is not None else "file is missing"
            images.append(ImageRef(index, record["file"], problem, sha if known is not None else None))
            answers.append(known)
        slots[prompt.item_id] = answers
        details.append(PromptDetail(prompt, images, answers))
    # 2. Totals by the scoring module itself; 3. the per-question finals that add up to them.
    results = score(prompts, slots, n_images=n_images)
    view = official_view(prompts)
    for detail in details:
        for protocol in PROTOCOLS:
            _fill_protocol(detail, protocol, results[protocol], view, n_images)
    _check_sums(details, results, run)
    return RunDetail(run, graphs, n_images, details, results)


def _answers_of(
    paths: RunPaths,
    record: dict[str, Any],
    texts: list[str],
    cache: dict[tuple[str, str], str],
    hash_files: bool,
) -> tuple[dict[str, str] | None, str | None]:
    """Cached answers of one image and the sha256 they are keyed by; (None, None) if its file is gone
    (evaluate scores it as missing then).

    Fast path: the sha256 logged when the image was made (one stat, no read); otherwise the file's bytes.
    """
    file = paths.root / record["file"]
    sha = record.get("sha256")
    if not hash_files and sha and file.is_file() and any((sha, t) in cache for t in texts):
        return {t: cache[(sha, t)] for t in texts if (sha, t) in cache}, sha
    try:
        sha = sha256_bytes(file.read_bytes())
    except OSError:
        return None, None
    return {t: cache[(sha, t)] for t in texts if (sha, t) in cache}, sha


def _fill_protocol(
    detail: PromptDetail,
    protocol: str,
    result: ProtocolResult,
    view: dict[str, dict[int, Any]],
    n_images: int,
) -> None:
    prompt = detail.prompt
    item_id = prompt.item_id
    detail.scores[protocol] = result.prompts.get(item_id)
    if item_id in result.excluded:
        detail.excluded[protocol] = result.excluded[item_id]
    pool: dict[str, list[int]] = {}
    if protocol in ("strict", "dsg"):
        tree = ancestors(prompt.questions) if protocol == "strict" else None
        finals: list[list[float | None]] = []
        for image in detail.answers:
            final = (
                strict_image(prompt.questions, image, tree)
                if protocol == "strict"
                else dsg_image(prompt.questions, image)
            )
            finals.append(list(final))
            if prompt.questions:
                for q, value in zip(prompt.questions, final):
                    pool.setdefault(q.l2, [0, 0])
                    pool[q.l2][0] += int(value)
                    pool[q.l2][1] += 1
        detail.finals[protocol] = finals
    else:
        graph = view.get(item_id) or {}
        counted = item_id in result.prompts
        finals = []
        raw: list[float] = []
        for image in detail.answers:
            if not counted or not graph:
                finals.append([None] * len(prompt.questions))
                continue
            raw, final = official_image(graph, image or {})
            by_pid = dict(zip(graph, final))
            finals.append(
                [
                    by_pid[q.proposition_id] if graph.get(q.proposition_id) is q else None
                    for q in prompt.questions
                ]
            )
        detail.finals[protocol] = finals
        if counted:
            # Upstream pools the raw answers of the last image only and stops at an empty tuple.
            for q, value in zip(graph.values(), raw):
                if not q.tuple:
                    break
                pool.setdefault(q.l2, [0, 0])
                pool[q.l2][0] += int(value)
                pool[q.l2][1] += 1
    detail.categories[protocol] = {c: (t, n) for c, (t, n) in pool.items()}


def _check_sums(details: list[PromptDetail], results: dict[str, ProtocolResult], run: ScoredRun) -> None:
    """The per-prompt pieces must add up to scoring.score's totals, and those to the run's scores.csv."""
    for protocol, result in results.items():
        totals: dict[str, list[int]] = {}
        for detail in details:
            for category, (t, n) in detail.categories[protocol].items():
                totals.setdefault(category, [0, 0])
                totals[category][0] += t
                totals[category][1] += n
        for category, c in result.l2.items():
            t, n = totals.get(category, [0, 0])
            if n != c.n or abs(t / n * 100 - c.score) > 1e-9:
                raise RuntimeError(
                    f"{protocol} {category}: per-prompt detail does not add up to scoring.score"
                )
        table = run.scores.get(protocol)
        # Overall and every category: an image replaced on disk can leave the overall score unchanged.
        pairs = [("", None if table is None else (table.overall, table.n), (result.overall, result.n))]
        for level in ("l1", "l2"):
            have = {} if table is None else getattr(table, level)
            for category, c in getattr(result, level).items():
                cell = have.get(category)
                pairs.append((f" {category}", None if cell is None else (cell.score, cell.n), (c.score, c.n)))
        for what, shown, (value, n) in pairs:
            if shown is not None and shown[1] == n and _same_number(shown[0], value):
                continue
            where = run.run_root or run.eval_dir
            unit = "prompts" if not what else "question-image pairs"
            text = "missing" if shown is None else f"{shown[0]:.4f} over {shown[1]} {unit}"
            raise DpgBenchError(
                f"{run.eval_dir / 'scores.csv'}: {protocol}{what} score is {text}, the cached answers give "
                f"{value:.4f} over {n}; the table is stale, rerun `dpgbench score {where} "
                f"--judge {run.judge}`"
            )


def _same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-9
