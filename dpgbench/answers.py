"""Recorded answers: reading answer tables made elsewhere, and writing the two score tables.

Accepted layouts: ours (`item_id,image_index,proposition_id,answer`, image_index 0-3) and the DSG release
(`item_id,question_id,answer`, one image per prompt; other columns such as `t2i_model` can select rows).
Nothing is dropped silently: every ignored row is counted and the first few are quoted with their line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgbench.data import GraphSet, Note, Question, read_text
from dpgbench.errors import DpgBenchError
from dpgbench.runs import write_csv
from dpgbench.scoring import ProtocolResult, normalize_answer, prompt_rows, score_rows

OUR_COLUMNS = ("item_id", "image_index", "proposition_id", "answer")
DSG_COLUMNS = ("item_id", "question_id", "answer")


@dataclass
class AnswerTable:
    # item_id -> per image {question text: answer, (proposition_id, question text): answer}
    answers: dict[str, list[dict[Any, str] | None]]
    n_images: int
    layout: str  # "dpgbench" | "dsg"
    rows: int = 0  # rows selected by `where` (all rows without it)
    not_selected: int = 0  # rows left out by `where`
    ignored: list[Note] = field(default_factory=list)  # unknown items / questions, not selected rows
    not_yes_no: list[Note] = field(default_factory=list)


def read_answer_table(
    path: str | Path, graphs: GraphSet, where: Mapping[str, str] | None = None
) -> AnswerTable:
    """Map each answer row onto the question graph; `where` keeps only rows whose columns match."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DpgBenchError(f"{path}:1: empty file; expected a header: {','.join(OUR_COLUMNS)}")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader)]
    if all(c in header for c in OUR_COLUMNS):
        layout, qid_column, n_images = "dpgbench", "proposition_id", 4
    elif all(c in header for c in DSG_COLUMNS):
        layout, qid_column, n_images = "dsg", "question_id", 1
    else:
        raise DpgBenchError(
            f"{path}:1: columns {','.join(header)} are neither {','.join(OUR_COLUMNS)} "
            f"nor the DSG release layout {','.join(DSG_COLUMNS)}; rename the header columns"
        )
    for column in where or {}:
        if column not in header:
            raise DpgBenchError(f"--where {column}=...: {path} has no column '{column}'")
    col = {name: header.index(name) for name in header}
    by_id = graphs.by_id()
    with_id: dict[str, dict[int, list[Question]]] = {}
    table = AnswerTable({}, n_images, layout)
    first_line: dict[tuple[str, int, int, str], int] = {}
    seen_values: dict[str, set[str]] = {k: set() for k in where or {}}
    line = reader.line_num + 1
    for record in reader:
        start, line = line, reader.line_num + 1
        if not "".join(record).strip():
            continue
        if len(record) < len(header):
            raise DpgBenchError(
                f"{path}:{start}: {len(record)} fields, the header has {len(header)}; "
                "quote fields that contain commas"
            )
        cells = {name: record[i] for name, i in col.items()}
        if where and any(cells[k] != v for k, v in where.items()):
            table.not_selected += 1
            for k in where:
                seen_values[k].add(cells[k])
            continue
        table.rows += 1
        item_id = cells["item_id"].strip()
        index = _integer(cells, "image_index", path, start) if layout == "dpgbench" else 0
        pid = _integer(cells, qid_column, path, start)
        if not 0 <= index < n_images:
            raise DpgBenchError(
                f"{path}:{start}: image_index {index} is outside 0-{n_images - 1}; number the images 0-3"
            )
        prompt = by_id.get(item_id)
        if prompt is None:
            table.ignored.append(
                Note(str(path), start, f"unknown item_id '{item_id}' (not in {graphs.path})")
            )
            continue
        if item_id not in with_id:
            with_id[item_id] = {}
            for q in prompt.questions:
                with_id[item_id].setdefault(q.proposition_id, []).append(q)
        candidates = with_id[item_id].get(pid, [])
        if not candidates:
            table.ignored.append(Note(str(path), start, f"{item_id} has no question {pid} in {graphs.path}"))
            continue
        # A repeated id: the question text (DSG's release has it) decides.
        if len(candidates) > 1 and "question" in cells:
            candidates = [q for q in candidates if q.question == cells["question"].strip()] or candidates
        # A repeated id without a text column: its rows answer its questions in graph order.
        free = [q for q in candidates if (item_id, index, pid, q.question) not in first_line]
        if not free:
            hint = " (select one model with --where t2i_model=NAME)" if "t2i_model" in header else ""
            first = first_line[(item_id, index, pid, candidates[0].question)]
            raise DpgBenchError(
                f"{path}:{start}: a second answer for {item_id} image {index} question {pid} "
                f"(first on line {first}){hint}"
            )
        question = free[0]
        first_line[(item_id, index, pid, question.question)] = start
        answer = cells["answer"]
        if normalize_answer(answer) not in ("yes", "no"):
            table.not_yes_no.append(
                Note(str(path), start, f"answer {answer!r} is neither yes nor no (scored as no)")
            )
        slots = table.answers.setdefault(item_id, [None] * n_images)
        slot = slots[index]
        if slot is None:
            slot = slots[index] = {}
        slot.setdefault(question.question, answer)
        slot[(pid, question.question)] = answer  # what scoring reads first (see scoring.ImageAnswers)
    if not table.rows:
        if table.not_selected:
            k = next(iter(where or {}))
            values = ", ".join(sorted(seen_values[k])[:10])
            raise DpgBenchError(
                f"{path}: --where {k}={(where or {})[k]} matches none of its {table.not_selected} rows; "
                f"{k} here is one of: {values}"
            )
        raise DpgBenchError(f"{path}:2: no answer rows after the header; one row per answer is expected")
    return table


def _integer(cells: dict[str, str], column: str, path: Path, line: int) -> int:
    try:
        return int(cells[column].strip())
    except ValueError:
        raise DpgBenchError(
            f"{path}:{line}: {column} '{cells[column]}' is not an integer; write whole numbers (0, 1, 2, ...)"
        ) from None


def write_score_tables(out: Path, results: Mapping[str, ProtocolResult]) -> None:
    """scores.csv (protocol, level, category, score, n) and prompt_scores.csv (protocol, item_id, score)."""
    write_csv(out / "scores.csv", score_rows(results), ["protocol", "level", "category", "score", "n"])
    write_csv(out / "prompt_scores.csv", prompt_rows(results), ["protocol", "item_id", "score"])
