"""The judging loop: ask a judge about each image of a run, cache raw answers, then score.

Answers are keyed by (image sha256, question text) inside `eval/<judge>/`, so a second pass asks nothing,
a re-generated image is re-asked by itself, and re-scoring with another protocol needs no judge call.
A judge is handed in (never imported here).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from dpgbench.answers import write_score_tables
from dpgbench.data import GraphSet, Prompt
from dpgbench.errors import DpgBenchError
from dpgbench.runs import (
    JsonlLog,
    RunPaths,
    check_manifest,
    environment,
    finished_images,
    read_json,
    read_logs,
    sha256_bytes,
    write_json,
)
from dpgbench.scoring import AnswerStats, ImageAnswers, ProtocolResult, answer_stats, score

if TYPE_CHECKING:
    from dpgbench.judges import Judge


EVAL_FOLDER_FIX = "add --label NAME to keep this evaluation beside the other, or the same settings to resume"


@dataclass
class EvaluateConfig:
    judge: str
    judge_args: dict[str, str] = field(default_factory=dict)
    questions: str = "dpg-bench"  # benchmark name or path, as the user gave it
    images_per_call: int = 1  # images per judge call, for judges with ask_batch
    label: str = ""  # eval folder name when it is not the judge's (two settings of one judge side by side)
    soft_scores: bool = False  # also record P(yes) per answer (judges with ask_with_scores), VQAScore-style

    @property
    def folder(self) -> str:
        return self.label or self.judge

    def identity(self, questions_sha256: str) -> dict[str, Any]:
        """What decides the answers: an eval folder made with a different identity is refused."""
        identity: dict[str, Any] = {
            "judge": self.judge,
            "judge_args": dict(sorted(self.judge_args.items())),
            "questions_sha256": questions_sha256,
        }
        if self.soft_scores:  # a folder holds P(yes) for every answer, or for none
            identity["soft_scores"] = True
        return identity


@dataclass
class ImageProblem:
    item_id: str
    index: int
    file: str
    reason: str


@dataclass
class EvaluateSummary:
    asked: int = 0  # questions sent to the judge in this call
    cached: int = 0  # questions answered from the cache
    images: int = 0  # readable images judged or found in cache
    problems: list[ImageProblem] = field(
        default_factory=list
    )  # missing/unreadable images (score 0 in strict)
    not_in_questions: list[str] = field(default_factory=list)  # run prompts the question file lacks
    complete: bool = False  # every readable image has all its answers (tables written)
    results: dict[str, ProtocolResult] = field(default_factory=dict)
    stats: AnswerStats = field(default_factory=AnswerStats)
    soft: dict[str, Any] = field(default_factory=dict)  # VQAScore-style mean P(yes), when recorded
    usage: dict[str, Any] = field(default_factory=dict)  # an API judge's requests/tokens/cost, this call
    seconds: float = 0.0


@dataclass
class _Job:
    prompt: Prompt
    index: int
    path: Path
    file: str  # relative to the run folder, for reports
    sha256: str
    questions: list[str]


def run_prompts(paths: RunPaths, graphs: GraphSet) -> tuple[list[Prompt], list[str]]:
    """The prompts of the question file that this run was made for, and run prompts it does not have."""
    manifest = read_json(paths.manifest)
    wanted = list(manifest.get("item_ids", []))
    by_id = graphs.by_id()
    return [by_id[i] for i in wanted if i in by_id], [i for i in wanted if i not in by_id]


def load_image(path: Path, data: bytes | None = None) -> Image.Image:
    """The image as RGB; raises ValueError with the reason if it cannot be read."""
    try:
        data = path.read_bytes() if data is None else data
    except FileNotFoundError:
        raise ValueError("file is missing") from None
    # A truncated file must fail even where a library has set Pillow's process-wide leniency (modelscope's
    # OFA preprocessors, imported with its VQA pipeline, do): otherwise it is judged half grey.
    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:  # Pillow's message names only an in-memory buffer's address
        raise ValueError("unreadable image (not an image format Pillow can read)") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"unreadable image ({' '.join(str(exc).split())})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return image.convert("RGB")


def write_eval_manifest(
    out: Path, config: EvaluateConfig, graphs: GraphSet, judge_info: dict[str, Any]
) -> None:
    identity = config.identity(graphs.sha256)
    check_manifest(out / "manifest.json", identity, "evaluation", EVAL_FOLDER_FIX)
    write_json(
        out / "manifest.json",
        {
            "kind": "dpgbench-eval",
            "identity": identity,
            "config": asdict(config),
            "questions": {"name": graphs.name, "path": graphs.path, "sha256": graphs.sha256},
            "judge": judge_info,
            "environment": environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def cached_answers(out: Path) -> dict[tuple[str, str], str]:
    return {(r["image"], r["question"]): r["answer"] for r in read_logs(sorted(out.glob("answers*.jsonl")))}


def evaluate(
    paths: RunPaths,
    config: EvaluateConfig,
    graphs: GraphSet,
    judge: Judge | None,
    *,
    shard: tuple[int, int] = (0, 1),
    n_images: int = 4,
    on_questions: Callable[[int], None] | None = None,
    plan_only: bool = False,
) -> EvaluateSummary:
    """Answer every uncached question of this shard's images, then score if every answer is present.

    With `plan_only` nothing is asked: `summary.asked` is the number of questions that would be.
    """
    start = time.perf_counter()
    summary = EvaluateSummary()
    out = paths.eval_dir(config.folder)
    # never mix caches
    check_manifest(out / "manifest.json", config.identity(graphs.sha256), "evaluation", EVAL_FOLDER_FIX)
    prompts, summary.not_in_questions = run_prompts(paths, graphs)
    records = finished_images(paths)
    cache = cached_answers(out)
    slots: dict[str, list[ImageAnswers | None]] = {}
    jobs: list[_Job] = []
    others: list[_Job] = []  # images of other shards with answers still missing when this call began
    # 1. Find each image, read it, split its questions into cached and to-ask.
    for number, prompt in enumerate(prompts):
        slots[prompt.item_id] = []
        texts = list(dict.fromkeys(q.question for q in prompt.questions))
        for index in range(n_images):
            record = records.get((prompt.item_id, index))
            file = (record or {}).get("file", f"(no image {index} for {prompt.item_id})")
            if record is None or record["status"] != "ok":
                reason = (
                    "not generated" if record is None else f"generation failed: {record.get('error', '')}"
                )
                summary.problems.append(ImageProblem(prompt.item_id, index, file, reason))
                slots[prompt.item_id].append(None)
                continue
            try:
                sha = sha256_bytes((paths.root / file).read_bytes())
            except OSError:
                summary.problems.append(ImageProblem(prompt.item_id, index, file, "file is missing"))
                slots[prompt.item_id].append(None)
                continue
            # The image is decoded only when the judge needs it (answers in cache: it was decoded then).
            known = {t: cache[(sha, t)] for t in texts if (sha, t) in cache}
            summary.cached += len(known)
            slots[prompt.item_id].append(known)
            missing = [t for t in texts if t not in known]
            if missing:
                job = _Job(prompt, index, paths.root / file, file, sha, missing)
                (jobs if number % shard[1] == shard[0] else others).append(job)
    # 2. Ask the judge, a few images per call when it can batch, logging answers as they come.
    if plan_only or judge is None:
        summary.asked = sum(len(j.questions) for j in jobs)
    elif jobs:
        if config.soft_scores and not hasattr(judge, "ask_with_scores"):
            raise DpgBenchError(
                f"judge '{config.judge}' gives no P(yes); drop --soft-scores or use hf-vqa/openai-vlm"
            )
        try:
            _ask_all(
                out,
                shard,
                judge,
                jobs,
                slots,
                summary,
                config.images_per_call,
                config.soft_scores,
                on_questions,
            )
        finally:  # what an API judge spent is kept even when it gave up or was interrupted
            summary.usage = record_usage(out, shard, judge)
    if others and not plan_only:
        _collect_other_shards(out, others, slots, summary)
    summary.images = sum(1 for images in slots.values() for image in images if image is not None)
    # 3. Score when nothing is missing (a sharded run: the last rank to finish writes the tables).
    summary.stats = answer_stats(prompts, slots)
    summary.complete = not plan_only and summary.stats.unanswered == 0
    if summary.complete:
        summary.results = score(prompts, slots, n_images=n_images)
        write_score_tables(out, summary.results)
        if config.soft_scores:
            summary.soft = soft_scores(out, prompts, records, n_images)
        write_json(out / "summary.json", _summary_record(summary, out))
    summary.seconds = time.perf_counter() - start
    return summary


def _ask_all(
    out: Path,
    shard: tuple[int, int],
    judge: Judge,
    jobs: Sequence[_Job],
    slots: dict[str, list[ImageAnswers | None]],
    summary: EvaluateSummary,
    images_per_call: int,
    soft: bool,
    on_questions: Callable[[int], None] | None,
) -> None:
    name = "answers.jsonl" if shard[1] == 1 else f"answers.rank{shard[0]}.jsonl"
    batch_fn = getattr(judge, "ask_batch", None)
    step = max(1, images_per_call) if batch_fn else 1
    with JsonlLog(out / name) as log:
        for first in range(0, len(jobs), step):
            group, images = [], []
            for job in jobs[first : first + step]:
                try:
                    images.append(load_image(job.path))
                    group.append(job)
                except ValueError as exc:
                    problem = ImageProblem(job.prompt.item_id, job.index, job.file, str(exc))
                    summary.problems.append(problem)
                    slots[job.prompt.item_id][job.index] = None
                    if on_questions:
                        on_questions(len(job.questions))
            p_yes: list[list[float | None]] = [[None] * len(j.questions) for j in group]
            if soft:
                scored = [judge.ask_with_scores(image, j.questions) for image, j in zip(images, group)]  # type: ignore[attr-defined]
                answers = [[a for a, _ in pairs] for pairs in scored]
                p_yes = [[p for _, p in pairs] for pairs in scored]
            elif batch_fn and len(group) > 1:
                answers = batch_fn(images, [j.questions for j in group])
            else:
                answers = [judge.ask(image, j.questions) for image, j in zip(images, group)]
            for job, got, probabilities in zip(group, answers, p_yes):
                if len(got) != len(job.questions):
                    raise DpgBenchError(
                        f"judge '{out.name}' gave {len(got)} answers for {len(job.questions)} questions"
                    )
                log.append(
                    {
                        "image": job.sha256,
                        "question": q,
                        "answer": a,
                        "item_id": job.prompt.item_id,
                        "index": job.index,
                        **({"p_yes": p} if p is not None else {}),
                    }
                    for q, a, p in zip(job.questions, got, probabilities)
                )
                known = slots[job.prompt.item_id][job.index]
                slots[job.prompt.item_id][job.index] = {**(known or {}), **dict(zip(job.questions, got))}
                summary.asked += len(job.questions)
                if on_questions:
                    on_questions(len(job.questions))


def _collect_other_shards(
    out: Path, others: Sequence[_Job], slots: dict[str, list[ImageAnswers | None]], summary: EvaluateSummary
) -> None:
    """Answers other shards logged while this one worked, so whichever shard ends last writes the tables.

    An image still unanswered is decoded: if it is unreadable its shard reported it and logged nothing, so
    it is this call's problem too (else a run with one broken image would never be complete).
    """
    fresh = cached_answers(out)
    for job in others:
        known = slots[job.prompt.item_id][job.index]
        got = {t: fresh[(job.sha256, t)] for t in job.questions if (job.sha256, t) in fresh}
        if len(got) < len(job.questions):
            try:
                load_image(job.path)
            except ValueError as exc:
                summary.problems.append(ImageProblem(job.prompt.item_id, job.index, job.file, str(exc)))
                slots[job.prompt.item_id][job.index] = None
                continue
        slots[job.prompt.item_id][job.index] = {**(known or {}), **got}


def record_usage(out: Path, shard: tuple[int, int], judge: Judge) -> dict[str, Any]:
    """Append this call's usage of a judge that keeps one (`judge.usage`: requests, tokens, cost_usd)."""
    usage = getattr(judge, "usage", None)
    if usage is None:
        return {}
    record = asdict(usage) if is_dataclass(usage) and not isinstance(usage, type) else dict(usage)
    name = "usage.jsonl" if shard[1] == 1 else f"usage.rank{shard[0]}.jsonl"
    with JsonlLog(out / name) as log:
        log.append([{**record, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])
    return record


def usage_totals(out: Path) -> dict[str, Any]:
    """Sums over every call (resumes and shards) of `usage*.jsonl`; cost_usd is None if any was unknown."""
    records = read_logs(sorted(out.glob("usage*.jsonl")))
    if not records:
        return {}
    totals: dict[str, Any] = {"calls": len(records)}
    for record in records:
        for key, value in record.items():
            if key == "cost_usd":
                known = totals.get(key, 0.0)
                totals[key] = None if value is None or known is None else known + value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    return totals


def soft_scores(
    out: Path, prompts: Sequence[Prompt], records: dict[tuple[str, int], dict[str, Any]], n_images: int
) -> dict[str, Any]:
    """VQAScore-style soft score: per prompt, the mean P(yes) over its images' questions (no dependencies);
    overall = 100 x mean over prompts. Images without recorded P(yes) are left out and counted."""
    p_yes = {
        (r["image"], r["question"]): float(r["p_yes"])
        for r in read_logs(sorted(out.glob("answers*.jsonl")))
        if r.get("p_yes") is not None
    }
    per_prompt: dict[str, float] = {}
    left_out = 0
    for prompt in prompts:
        texts = list(dict.fromkeys(q.question for q in prompt.questions))
        values = []
        for index in range(n_images):
            sha = (records.get((prompt.item_id, index)) or {}).get("sha256")
            found = [p_yes[(sha, t)] for t in texts if (sha, t) in p_yes]
            if found and len(found) == len(texts):
                values.append(sum(found) / len(found))
            else:
                left_out += 1
        if values:
            per_prompt[prompt.item_id] = sum(values) / len(values) * 100
    overall = sum(per_prompt.values()) / len(per_prompt) if per_prompt else None
    return {"overall": overall, "n": len(per_prompt), "images_left_out": left_out, "prompts": per_prompt}


def _summary_record(summary: EvaluateSummary, out: Path) -> dict[str, Any]:
    return {
        "soft_score": summary.soft,
        "judge_usage": usage_totals(out),
        "images_judged": summary.images,
        "problems": [asdict(p) for p in summary.problems],
        "not_in_questions": summary.not_in_questions,
        "answers": asdict(summary.stats),
        "protocols": {
            name: {
                "overall": r.overall,
                "n": r.n,
                "excluded": r.excluded,
                "missing_images": [list(m) for m in r.missing_images],
            }
            for name, r in summary.results.items()
        },
    }
