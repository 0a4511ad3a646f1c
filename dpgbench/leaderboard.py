"""The leaderboard: one row per scored (run, judge) with its scores, coverage and provenance, as CSV or Markdown.

Rows judged differently or on other question graphs are refused, or kept with a `flags` cell that says
so (`mixed=True`). Published results come from `dpgbench/results/reference.csv` (package data, so a wheel
has it), each number with its source, and are always flagged as self-reported: they were not recomputed here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpgbench.data import read_text
from dpgbench.errors import DpgBenchError
from dpgbench.scored import L1_ORDER, ScoredRun, category_order
from dpgbench.scoring import PROTOCOLS

REFERENCE_CSV = Path(__file__).resolve().parent / "results" / "reference.csv"
REFERENCE_COLUMNS = (
    "model",
    "overall",
    *L1_ORDER,
    "protocol",
    "judge",
    "self_reported",
    "source",
    "source_url",
    "notes",
)
# Run and judge facts shown after the scores; taken from the manifests when the backend reports them.
PROVENANCE_COLUMNS = [
    "prompts",
    "prompts_scored",
    "prompts_missing",
    "images_missing",
    "backend",
    "model",
    "revision",
    "other_models",
    "scheduler",
    "steps",
    "guidance",
    "size",
    "dtype",
    "negative_prompt",
    "seed",
    "images_per_prompt",
    "judge_model",
    "questions",
    "questions_sha256",
    "dpgbench",
    "git_revision",
    "flags",
    "source",
]


def _setup_key(run: ScoredRun) -> tuple[str, str]:
    return (str(run.questions.get("sha256")), run.judge_identity)


def leaderboard(
    runs: Sequence[ScoredRun],
    protocol: str = "strict",
    reference: Sequence[dict[str, Any]] = (),
    mixed: bool = False,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): runs sorted by their `protocol` overall score, then reference rows.

    Category columns hold the `protocol` scores of a run (reference rows: the paper's own protocol, named in
    `category_protocol`).
    """
    if protocol not in PROTOCOLS:
        raise DpgBenchError(f"--protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    if not runs and not reference:
        raise DpgBenchError("no runs given; pass run folders (results/NAME) or --reference")
    groups = Counter(_setup_key(r) for r in runs)
    majority = groups.most_common(1)[0][0] if groups else None
    if len(groups) > 1 and not mixed:
        odd = next(r for r in runs if _setup_key(r) != majority)
        base = next(r for r in runs if _setup_key(r) == majority)
        what = "question graphs" if odd.questions.get("sha256") != base.questions.get("sha256") else "judge"
        raise DpgBenchError(
            f"{odd.label} differs from {base.label} in its {what} ('{odd.judge_label}' on "
            f"{odd.questions.get('name')} vs '{base.judge_label}' on {base.questions.get('name')}); "
            "keep one judge with --judge NAME, or pass --mixed to list them with a flag"
        )
    l1 = category_order({c for r in runs for c in _block(r, protocol).get("l1", {})} | set(L1_ORDER))
    l2 = category_order({c for r in runs for c in _block(r, protocol).get("l2", {})})
    columns = ["run", "judge", *PROTOCOLS, "category_protocol"]
    columns += [f"l1:{c}" for c in l1] + [f"l2:{c}" for c in l2] + PROVENANCE_COLUMNS
    majority_items = Counter(frozenset(r.item_ids or ()) for r in runs).most_common(1)[0][0] if runs else None
    rows = [_run_row(r, protocol, majority, majority_items) for r in runs]
    rows.sort(key=lambda row: -_number(row.get(protocol)))
    rows += [_reference_row(r) for r in sorted(reference, key=lambda r: -_number(r.get("overall")))]
    return columns, rows


def _number(value: Any) -> float:
    return value if isinstance(value, float) and not math.isnan(value) else -math.inf


def _block(run: ScoredRun, protocol: str) -> dict[str, Any]:
    s = run.scores.get(protocol)
    return {} if s is None else {"l1": s.l1, "l2": s.l2}


def _run_row(
    run: ScoredRun, protocol: str, majority: tuple[str, str] | None, majority_items: frozenset[str] | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run.label, "judge": run.judge_label, "category_protocol": protocol}
    for p in PROTOCOLS:
        row[p] = run.scores[p].overall if p in run.scores else math.nan
    chosen = run.scores.get(protocol)
    if chosen is not None:
        row.update({f"l1:{c}": s.score for c, s in chosen.l1.items()})
        row.update({f"l2:{c}": s.score for c, s in chosen.l2.items()})
    items = run.item_ids
    not_in_questions = len(run.summary.get("not_in_questions", []))
    if items is not None:
        expected = len(items) - not_in_questions
    else:
        expected = (chosen.n if chosen else 0) + len(
            run.summary.get("protocols", {}).get(protocol, {}).get("excluded", {})
        )
    scored = chosen.n if chosen else 0
    row["prompts"] = expected
    row["prompts_scored"] = scored
    row["prompts_missing"] = expected - scored
    row["images_missing"] = len(run.summary.get("problems", []))
    row.update(_provenance(run))
    flags = []
    if run.scores.get(protocol) is None:
        flags.append(f"no {protocol} scores")
    if expected - scored:
        flags.append(f"{expected - scored} prompt(s) not scored under {protocol}")
    if row["images_missing"]:
        flags.append(f"{row['images_missing']} image(s) missing (scored 0 in strict)")
    if not_in_questions:
        flags.append(f"{not_in_questions} run prompt(s) have no questions")
    if items is not None and majority_items is not None and frozenset(items) != majority_items:
        flags.append(f"other prompt subset ({len(items)} prompts)")
    if majority is not None and _setup_key(run) != majority:
        if run.questions.get("sha256") != majority[0]:
            flags.append(f"MIXED: other question graphs ({run.questions.get('name')})")
        if run.judge_identity != majority[1]:
            flags.append("MIXED: other judge")
    row["flags"] = "; ".join(flags)
    return row


def _provenance(run: ScoredRun) -> dict[str, Any]:
    backend = (run.run_manifest or {}).get("backend", {})
    config = (run.run_manifest or {}).get("config", {})
    environment = (run.eval_manifest or run.run_manifest or {}).get("environment", {})
    judge = (run.eval_manifest or {}).get("judge", {})
    width, height = backend.get("width"), backend.get("height")
    # Models beside the main one (ELLA's TSC and T5, LLM4GEN's projector): any part of the backend's info
    # that names a model or a checkpoint.
    others = [
        f"{part}={value.get('model') or value.get('checkpoint')}"
        + (f"@{value['resolved_commit']}" if value.get("resolved_commit") else "")
        for part, value in backend.items()
        if isinstance(value, dict) and (value.get("model") or value.get("checkpoint"))
    ]
    return {
        "backend": backend.get("name", config.get("backend", "")),
        "model": backend.get("model", ""),
        "revision": backend.get("resolved_commit") or backend.get("revision") or "",
        "other_models": "; ".join(others),
        "scheduler": backend.get("scheduler", ""),
        "steps": backend.get("steps", ""),
        "guidance": backend.get("guidance", ""),
        "size": f"{width}x{height}" if width and height else "",
        "dtype": backend.get("dtype", ""),
        "negative_prompt": backend.get("negative_prompt") or "",
        "seed": config.get("seed", ""),
        "images_per_prompt": config.get("images_per_prompt", ""),
        "judge_model": judge.get("model", ""),
        "questions": run.questions.get("name", ""),
        "questions_sha256": str(run.questions.get("sha256", ""))[:12],
        "dpgbench": environment.get("packages", {}).get("dpgbench", ""),
        "git_revision": environment.get("git_revision") or "",
        "source": str(run.eval_dir),
    }


# ----------------------------------------------------------------------------------------- reference


def load_reference(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Published scores, each with a source; refuses a row without one."""
    path = Path(path) if path else REFERENCE_CSV
    if not path.is_file():
        raise DpgBenchError(
            f"{path}: no reference table here; pass --reference-file PATH (see dpgbench/results/reference.csv)"
        )
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DpgBenchError(
            f"{path}:1: missing column(s) {', '.join(missing)}; expected {','.join(REFERENCE_COLUMNS)}"
        )
    rows = []
    for line, row in enumerate(reader, 2):
        if not row["source"].strip():
            raise DpgBenchError(f"{path}:{line}: '{row['model']}' has no source; every number needs one")
        parsed: dict[str, Any] = dict(row)
        for column in ("overall", *L1_ORDER):
            text = row[column].strip()
            try:
                parsed[column] = float(text) if text else math.nan
            except ValueError:
                raise DpgBenchError(f"{path}:{line}: {column} '{text}' is not a number") from None
        rows.append(parsed)
    return rows


def _reference_row(ref: dict[str, Any]) -> dict[str, Any]:
    protocol = ref["protocol"] if ref["protocol"] in PROTOCOLS else "official"
    row: dict[str, Any] = {p: math.nan for p in PROTOCOLS}
    row.update(
        {
            "run": ref["model"],
            "judge": ref["judge"],
            protocol: ref["overall"],
            "category_protocol": ref["protocol"],
            "flags": "self-reported, not recomputed",
            "source": f"{ref['source']} {ref['source_url']}".strip(),
        }
    )
    row.update({f"l1:{c}": ref[c] for c in L1_ORDER})
    return row


# ------------------------------------------------------------------------------------------- output


def to_markdown(columns: Sequence[str], rows: Sequence[dict[str, Any]], digits: int = 2) -> str:
    """A GitHub Markdown table; numbers rounded, NaN and empty cells as '-'."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.{digits}f}"
        text = "" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ") or "-"

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """CSV text; floats keep every digit (repr), NaN is an empty cell."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                v = "" if math.isnan(v) else repr(v)
            elif isinstance(v, dict | list):
                v = json.dumps(v, sort_keys=True)
            values.append(v)
        writer.writerow(values)
    return out.getvalue()
