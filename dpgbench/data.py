"""Question graphs: the records (Question, Prompt, GraphSet) and their files.

Reads and writes DSG-format CSV (DPG-Bench, DSG-1k, TIFA-160: nine columns, one row per question) and our
JSONL (one prompt per line, questions nested), and folders of prompt-only `.txt` files. Loading never
crashes on the defects real files have; it keeps what DSG keeps (numeric parent ids) and records every
thing it ignored as a `Note`. Structural checks of a graph live in `graphcheck.py`.
"""

from __future__ import annotations

import builtins
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgbench.errors import DpgBenchError

CSV_COLUMNS = (
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
)


@dataclass(frozen=True)
class Question:
    """One row of a DSG-format graph. `parents` are the numeric ids of `dependency` (0 = root)."""

    proposition_id: int
    question: str
    tuple: str
    parents: builtins.tuple[int, ...]
    keywords: str = ""
    category_broad: str = ""
    category_detailed: str = ""
    dependency: str = ""  # the field as written in the file, kept so lint can quote it
    row: int = 0  # 0-based data-row index in the source file (official protocol's row order)
    line: int = 0  # 1-based physical line in the source file, for messages

    @property
    def l2(self) -> str:
        """Level-2 category: the tuple text before '(' (e.g. 'attribute - color')."""
        return self.tuple.split("(")[0].strip()

    @property
    def l1(self) -> str:
        """Level-1 category: the part of the level-2 category before the first '-' (e.g. 'attribute')."""
        return self.l2.split("-")[0].strip()


@dataclass
class Prompt:
    item_id: str
    text: str
    questions: list[Question] = field(default_factory=list)
    line: int = 0


@dataclass(frozen=True)
class Note:
    """Something the loader ignored or repaired, with where it was."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class GraphSet:
    """A prompt set, with question graphs when the source has them, and what loading ignored."""

    name: str
    path: str
    sha256: str
    prompts: list[Prompt]
    notes: list[Note] = field(default_factory=list)
    has_questions: bool = True

    def by_id(self) -> dict[str, Prompt]:
        return {p.item_id: p for p in self.prompts}

    def questions(self) -> Iterator[tuple[Prompt, Question]]:
        for prompt in self.prompts:
            for q in prompt.questions:
                yield prompt, q

    @property
    def n_questions(self) -> int:
        return sum(len(p.questions) for p in self.prompts)


def parse_dependency(text: str) -> tuple[tuple[int, ...], list[str]]:
    """'1, 2' -> ((1, 2), []); '5, right' -> ((5,), ['right']): DSG keeps the numeric ids."""
    parents: list[int] = []
    ignored: list[str] = []
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        if token.lstrip("-").isdigit():
            parents.append(int(token))
        else:
            ignored.append(token)
    return tuple(parents), ignored


def read_text(path: Path) -> str:
    """UTF-8 text (a BOM is dropped); other encodings get a message with the line of the first bad byte."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DpgBenchError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise DpgBenchError(f"{path}: is a folder, a file was expected") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DpgBenchError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_csv(path: str | Path, name: str | None = None) -> GraphSet:
    """Load a DSG-format CSV. Rows keep their file order; rows of one item_id are grouped into a Prompt."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DpgBenchError(f"{path}:1: empty file; expected a header row: {','.join(CSV_COLUMNS)}")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DpgBenchError(
            f"{path}:1: missing column(s) {', '.join(missing)}; a DSG-format CSV has: {','.join(CSV_COLUMNS)}"
        )
    col = {c: header.index(c) for c in CSV_COLUMNS}
    notes: list[Note] = []
    prompts: dict[str, Prompt] = {}
    row_index = 0
    line = reader.line_num + 1
    for record in reader:
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            notes.append(Note(str(path), start, "blank row ignored"))
            continue
        if len(record) < len(header):
            raise DpgBenchError(
                f"{path}:{start}: {len(record)} fields, the header has {len(header)}; "
                "quote fields that contain commas"
            )
        cells = {c: record[i] for c, i in col.items()}
        question = _question_from_cells(cells, path, start, row_index, notes)
        row_index += 1
        item_id = cells["item_id"].strip()
        if not item_id:
            raise DpgBenchError(f"{path}:{start}: empty item_id; every row needs the id of its prompt")
        prompt = prompts.get(item_id)
        if prompt is None:
            prompt = prompts[item_id] = Prompt(item_id, cells["text"], [], start)
        prompt.questions.append(question)
    if not prompts:
        raise DpgBenchError(f"{path}:2: no question rows after the header; one row per question is expected")
    return GraphSet(name or path.stem, str(path), sha256_file(path), list(prompts.values()), notes)


def _question_from_cells(
    cells: dict[str, str], path: Path, line: int, row: int, notes: list[Note]
) -> Question:
    pid_text = cells["proposition_id"].strip()
    try:
        pid = int(pid_text)
    except ValueError:
        raise DpgBenchError(
            f"{path}:{line}: proposition_id '{pid_text}' is not an integer; number the questions 1, 2, ..."
        ) from None
    dependency = cells["dependency"]
    parents, ignored = parse_dependency(dependency)
    if ignored:
        notes.append(
            Note(str(path), line, f"dependency '{dependency}': ignored non-numeric {', '.join(ignored)}")
        )
    if not parents:
        if not dependency.strip():
            notes.append(Note(str(path), line, "empty dependency read as 0 (no parent)"))
        parents = (0,)
    return Question(
        proposition_id=pid,
        question=cells["question_natural_language"].strip(),
        tuple=cells["tuple"].strip(),
        parents=parents,
        keywords=cells["keywords"],
        category_broad=cells["category_broad"],
        category_detailed=cells["category_detailed"],
        dependency=dependency,
        row=row,
        line=line,
    )


def load_jsonl(path: str | Path, name: str | None = None) -> GraphSet:
    """Load our JSONL: {"item_id", "text", "questions": [{"proposition_id", "question", "tuple",
    "dependency": [ids], ...}]} per line."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DpgBenchError(f"{path}:1: empty file; expected one JSON object per line with item_id and text")
    prompts: dict[str, Prompt] = {}
    notes: list[Note] = []
    row = 0
    for line_no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DpgBenchError(
                f"{path}:{line_no}: not valid JSON ({exc.msg}); fix or delete the line"
            ) from None
        if not isinstance(obj, dict) or "item_id" not in obj or "text" not in obj:
            raise DpgBenchError(f"{path}:{line_no}: each line needs an object with 'item_id' and 'text'")
        item_id = str(obj["item_id"])
        if item_id in prompts:
            raise DpgBenchError(f"{path}:{line_no}: item_id '{item_id}' appears twice; merge the two lines")
        questions = []
        for q in obj.get("questions", []):
            questions.append(_question_from_json(q, path, line_no, row, notes))
            row += 1
        prompts[item_id] = Prompt(item_id, str(obj["text"]), questions, line_no)
    has_questions = any(p.questions for p in prompts.values())
    return GraphSet(
        name or path.stem, str(path), sha256_file(path), list(prompts.values()), notes, has_questions
    )


def _question_from_json(q: Any, path: Path, line: int, row: int, notes: list[Note]) -> Question:
    if not isinstance(q, dict) or "proposition_id" not in q or "question" not in q:
        raise DpgBenchError(f"{path}:{line}: each question needs 'proposition_id' and 'question'")
    try:
        pid = int(q["proposition_id"])
    except (TypeError, ValueError):
        raise DpgBenchError(
            f"{path}:{line}: proposition_id {q['proposition_id']!r} is not an integer; use 1, 2, ..."
        ) from None
    dep = q.get("dependency", [0])
    dependency = ",".join(str(d) for d in dep) if isinstance(dep, list) else str(dep)
    parents, ignored = parse_dependency(dependency)
    if ignored:
        notes.append(
            Note(str(path), line, f"question {pid}: ignored non-numeric parent(s) {', '.join(ignored)}")
        )
    return Question(
        proposition_id=pid,
        question=str(q["question"]).strip(),
        tuple=str(q.get("tuple", "")).strip(),
        parents=parents or (0,),
        keywords=str(q.get("keywords", "")),
        category_broad=str(q.get("category_broad", "")),
        category_detailed=str(q.get("category_detailed", "")),
        dependency=dependency,
        row=row,
        line=line,
    )


def load_prompt_folder(path: str | Path, name: str | None = None) -> GraphSet:
    """A folder of `<item_id>.txt` prompt files (as DPG-Bench ships its prompts): prompts, no questions."""
    path = Path(path)
    files = sorted(path.glob("*.txt"))
    if not files:
        raise DpgBenchError(f"{path}: no .txt prompt files in this folder; expected <item_id>.txt files")
    digest = hashlib.sha256()
    prompts = []
    for file in files:
        text = read_text(file).strip()
        if not text:
            raise DpgBenchError(f"{file}:1: empty prompt file; write the prompt or delete the file")
        digest.update(f"{file.name}\0{text}\0".encode())
        prompts.append(Prompt(file.stem, text, [], 1))
    return GraphSet(name or path.name, str(path), digest.hexdigest(), prompts, [], has_questions=False)


def load_graphs(path: str | Path, name: str | None = None) -> GraphSet:
    """Any supported prompt source by its form: folder of .txt, .jsonl, or DSG-format .csv."""
    path = Path(path)
    if path.is_dir():
        return load_prompt_folder(path, name)
    if not path.exists():
        raise DpgBenchError(f"{path}: no such file or folder; give a benchmark name or an existing path")
    if path.suffix.lower() == ".jsonl":
        return load_jsonl(path, name)
    if path.suffix.lower() in (".csv", ".tsv"):
        return load_csv(path, name)
    raise DpgBenchError(
        f"{path}: unknown prompt file type; use a DSG-format .csv, our .jsonl or a folder of .txt"
    )


def write_atomic(path: str | Path, data: str | bytes, durable: bool = True) -> None:
    """Write a whole file so readers see the old or the new content, never a mix (temp file + rename).

    `durable` also fsyncs before the rename (survives a power cut, ~5 ms); without it the file still
    survives a killed process, and callers verify content hashes on resume instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dependency_text(q: Question) -> str:
    return ",".join(str(p) for p in q.parents)


def dump_csv(prompts: Iterable[Prompt]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in prompts:
        for q in p.questions:
            writer.writerow(
                [
                    p.item_id,
                    p.text,
                    q.keywords,
                    q.proposition_id,
                    _dependency_text(q),
                    q.category_broad,
                    q.category_detailed,
                    q.tuple,
                    q.question,
                ]
            )
    return out.getvalue()


def dump_jsonl(prompts: Iterable[Prompt]) -> str:
    lines = []
    for p in prompts:
        questions = [
            {
                "proposition_id": q.proposition_id,
                "question": q.question,
                "tuple": q.tuple,
                "dependency": list(q.parents),
                "keywords": q.keywords,
                "category_broad": q.category_broad,
                "category_detailed": q.category_detailed,
            }
            for q in p.questions
        ]
        lines.append(
            json.dumps({"item_id": p.item_id, "text": p.text, "questions": questions}, ensure_ascii=False)
        )
    return "".join(line + "\n" for line in lines)


def save_graphs(prompts: Iterable[Prompt], path: str | Path) -> None:
    """Write a graph set as DSG-format CSV or JSONL, chosen by the file suffix."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        write_atomic(path, dump_jsonl(prompts))
    elif path.suffix.lower() == ".csv":
        write_atomic(path, dump_csv(prompts))
    else:
        raise DpgBenchError(f"{path}: choose a .csv or .jsonl file name for the output")
