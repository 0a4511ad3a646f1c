"""The human check of generated graphs (the paper's "verified by humans"): a review sheet out, edits back in.

The sheet is the DSG-format CSV plus `action` (keep/delete), `comment`, and `lint` (what to look at, from the
lint checks). A reviewer edits cells, deletes rows by `action`, or adds rows; importing validates the result
with the same checks as `dpgbench lint` and refuses the sheet with the first error's line and fix.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpgbench.data import (
    CSV_COLUMNS,
    GraphSet,
    Prompt,
    load_csv,
    read_text,
    save_graphs,
    sha256_file,
    write_atomic,
)
from dpgbench.errors import DpgBenchError
from dpgbench.graphcheck import Finding, check_prompt, check_tuples

REVIEW_COLUMNS = (*CSV_COLUMNS, "action", "comment", "lint")
ACTIONS = ("keep", "delete")


def export_review(graphs: GraphSet, sheet: Path) -> int:
    """Write the review sheet; returns how many rows carry a lint note for the reviewer."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REVIEW_COLUMNS)
    flagged = 0
    row = 0
    for prompt in graphs.prompts:
        # Number the rows so each finding lands on its own row (JSONL questions share their prompt's line).
        numbered = [replace(q, line=row + i + 1) for i, q in enumerate(prompt.questions)]
        row += len(numbered)
        notes: dict[int, set[str]] = {}
        draft = replace(prompt, questions=numbered, line=numbered[0].line if numbered else 0)
        for f in check_prompt(draft, graphs.path) + check_tuples(draft, graphs.path):
            notes.setdefault(f.line, set()).add(f.code)
        for q in numbered:
            codes = sorted(notes.get(q.line, set()))
            flagged += bool(codes)
            writer.writerow(
                [
                    prompt.item_id,
                    prompt.text,
                    q.keywords,
                    q.proposition_id,
                    ",".join(str(p) for p in q.parents),
                    q.category_broad,
                    q.category_detailed,
                    q.tuple,
                    q.question,
                    "keep",
                    "",
                    " ".join(codes),
                ]
            )
    write_atomic(sheet, out.getvalue())
    return flagged


@dataclass
class ReviewResult:
    graphs: list[Prompt]
    deleted: int
    edited: int  # questions whose text, tuple, parents or categories differ from the original
    added: int
    warnings: list[Finding] = field(default_factory=list)


def import_review(sheet: Path, original: GraphSet | None, out: Path) -> ReviewResult:
    """Read an edited sheet, apply deletions, validate, and write the reviewed graphs (.csv or .jsonl)."""
    actions = _read_actions(sheet)
    loaded = load_csv(sheet)  # the sheet is a DSG-format CSV with three more columns
    _check_prompt_text_unchanged_within_items(sheet)
    graphs: list[Prompt] = []
    deleted = 0
    for prompt in loaded.prompts:
        kept = [q for q in prompt.questions if actions.get(q.line) != "delete"]
        deleted += len(prompt.questions) - len(kept)
        if kept:  # deleting every question of a prompt drops the prompt
            graphs.append(replace(prompt, questions=kept))
    findings: list[Finding] = []
    for prompt in graphs:
        findings += check_prompt(prompt, str(sheet)) + check_tuples(prompt, str(sheet))
    errors = sorted((f for f in findings if f.level == "error"), key=lambda f: f.line)
    if errors:
        more = f" ({len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise DpgBenchError(f"{errors[0]}{more}; fix the sheet and import it again")
    edited = added = 0
    if original is not None:
        before = {p.item_id: {q.proposition_id: q for q in p.questions} for p in original.prompts}
        for prompt in graphs:
            if prompt.item_id not in before:
                raise DpgBenchError(
                    f"{sheet}:{prompt.line}: item_id '{prompt.item_id}' is not in {original.path}; "
                    "review sheets edit graphs, they do not add prompts"
                )
            for q in prompt.questions:
                old = before[prompt.item_id].get(q.proposition_id)
                if old is None:
                    added += 1
                elif _content(old) != _content(q):
                    edited += 1
    save_graphs(graphs, out)
    warnings = [f for f in findings if f.level == "warning"]
    return ReviewResult(graphs, deleted, edited, added, warnings)


def _content(q: object) -> tuple[object, ...]:
    return tuple(
        getattr(q, name)
        for name in ("question", "tuple", "parents", "keywords", "category_broad", "category_detailed")
    )


def _read_actions(sheet: Path) -> dict[int, str]:
    """`action` per physical line; an unknown action is an error naming the line."""
    reader = csv.reader(io.StringIO(read_text(sheet), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DpgBenchError(
            f"{sheet}: empty file; export a sheet with `dpgbench build review export`"
        ) from None
    if "action" not in header:
        raise DpgBenchError(
            f"{sheet}:1: no 'action' column; export the sheet with `dpgbench build review export`"
        )
    column = header.index("action")
    actions: dict[int, str] = {}
    line = reader.line_num + 1
    for record in reader:
        start, line = line, reader.line_num + 1
        value = record[column].strip().lower() if column < len(record) else ""
        if value and value not in ACTIONS:
            raise DpgBenchError(
                f"{sheet}:{start}: action '{value}' is not one of {', '.join(ACTIONS)} (or empty)"
            )
        actions[start] = value or "keep"
    return actions


def _check_prompt_text_unchanged_within_items(sheet: Path) -> None:
    """A prompt's text appears on each of its rows; editing it on some rows only is ambiguous."""
    reader = csv.DictReader(io.StringIO(read_text(sheet), newline=""))
    first: dict[str, str] = {}
    line = reader.line_num + 1
    for record in reader:
        start, line = line, reader.line_num + 1
        item, text = (record.get("item_id") or "").strip(), record.get("text") or ""
        if item in first and first[item] != text:
            raise DpgBenchError(
                f"{sheet}:{start}: the text of '{item}' differs from its first row; edit it on every row or none"
            )
        first.setdefault(item, text)


def review_record(
    sheet: Path, original: GraphSet | None, out: Path, result: ReviewResult
) -> dict[str, object]:
    """What goes into `<out>.review.json`: which sheet made which file, and what the review changed."""
    return {
        "sheet": str(sheet),
        "sheet_sha256": sha256_file(sheet),
        "original": original.path if original is not None else None,
        "original_sha256": original.sha256 if original is not None else None,
        "output": str(out),
        "prompts": len(result.graphs),
        "questions": sum(len(p.questions) for p in result.graphs),
        "deleted": result.deleted,
        "edited": result.edited,
        "added": result.added,
        "warnings": len(result.warnings),
    }
