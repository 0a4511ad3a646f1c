"""Structural checks of question graphs (`dpgbench lint`, and validation of generated graphs).

Pure functions over loaded `Prompt`s: each problem becomes a `Finding` with the file line it comes from.
Errors make a graph ill-defined or change its scores; warnings are worth a look but are legal DSG.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dpgbench.data import GraphSet, Prompt, Question, parse_dependency

YES_NO_STARTS = frozenset(
    "is are am was were do does did has have had can could will would should shall may might must".split()
)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    level: str  # "error" | "warning"
    code: str  # short stable name, e.g. "dangling-parent"
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.level}: {self.message} [{self.code}]"


def tuple_arguments(tuple_text: str) -> list[str]:
    """'relation - spatial (cat, mat, on)' -> ['cat', 'mat', 'on']."""
    if "(" not in tuple_text:
        return []
    inside = tuple_text.split("(", 1)[1].rsplit(")", 1)[0]
    return [a.strip() for a in inside.split(",") if a.strip()]


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def mentions_argument(question: str, arguments: Iterable[str]) -> bool:
    """True if any content word (3+ letters) of any tuple argument appears in the question, plurals aside."""
    words = {_stem(w) for w in _WORD.findall(question.lower())}
    wanted = {_stem(w) for arg in arguments for w in _WORD.findall(arg.lower()) if len(w) >= 3}
    return not wanted or bool(words & wanted)


def is_yes_no_question(question: str) -> bool:
    words = _WORD.findall(question.lower())
    return bool(words) and words[0] in YES_NO_STARTS


def check_prompt(prompt: Prompt, path: str) -> list[Finding]:
    found: list[Finding] = []

    def add(q: Question | None, level: str, code: str, message: str) -> None:
        line = q.line if q is not None else prompt.line
        found.append(Finding(path, line, level, code, f"{prompt.item_id}: {message}"))

    if not prompt.text.strip():
        add(None, "error", "empty-field", "empty prompt text")
    position: dict[int, int] = {}
    for index, q in enumerate(prompt.questions):
        if q.proposition_id in position:
            first = prompt.questions[position[q.proposition_id]]
            add(
                q,
                "error",
                "duplicate-id",
                f"question id {q.proposition_id} already used on line {first.line}",
            )
        else:
            position[q.proposition_id] = index
    for index, q in enumerate(prompt.questions):
        pid = q.proposition_id
        _, non_numeric = parse_dependency(q.dependency)
        if non_numeric:
            add(
                q,
                "error",
                "non-numeric-parent",
                f"question {pid}: dependency '{q.dependency}' holds non-numeric {', '.join(non_numeric)}; "
                "list parent ids like 1,2",
            )
        if not q.dependency.strip():
            add(q, "warning", "empty-field", f"question {pid}: empty dependency (read as 0, no parent)")
        for parent in q.parents:
            if parent == 0:
                continue
            if parent == pid:
                add(q, "error", "cycle", f"question {pid} lists itself as its parent")
            elif parent not in position:
                add(q, "error", "dangling-parent", f"question {pid}: parent {parent} does not exist")
            elif position[parent] > index:
                add(
                    q,
                    "warning",
                    "parent-after-child",
                    f"question {pid}: parent {parent} comes later (line {prompt.questions[position[parent]].line}); "
                    "the official scorer cascades in row order",
                )
        if not q.question:
            add(q, "error", "empty-field", f"question {pid}: empty question text")
        elif not is_yes_no_question(q.question):
            add(q, "error", "not-yes-no", f"question {pid}: '{q.question}' is not a yes/no question")
        elif not q.question.rstrip().endswith("?"):
            add(q, "warning", "no-question-mark", f"question {pid}: '{q.question}' does not end with '?'")
        if not q.tuple:
            add(q, "error", "empty-field", f"question {pid}: empty tuple")
        elif q.question and not mentions_argument(q.question, tuple_arguments(q.tuple)):
            add(
                q,
                "warning",
                "question-misses-tuple",
                f"question {pid}: '{q.question}' mentions none of {tuple_arguments(q.tuple)}",
            )
        for name in ("keywords", "category_broad", "category_detailed"):
            if not getattr(q, name).strip():
                add(q, "warning", "empty-field", f"question {pid}: empty {name}")
    for cycle in find_cycles(prompt.questions):
        first = next(q for q in prompt.questions if q.proposition_id == cycle[0])
        add(first, "error", "cycle", f"dependency cycle {' -> '.join(map(str, cycle + [cycle[0]]))}")
    return found


def find_cycles(questions: list[Question]) -> list[list[int]]:
    """Cycles of length >= 2 among parent links (self-loops are reported separately), each once."""
    parents = {q.proposition_id: [p for p in q.parents if p not in (0, q.proposition_id)] for q in questions}
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[int]] = []

    def visit(node: int, path: list[int]) -> None:
        state[node] = 1
        path.append(node)
        for parent in parents.get(node, []):
            if parent not in parents:
                continue
            if state.get(parent) == 1:
                cycles.append(path[path.index(parent) :])
            elif parent not in state:
                visit(parent, path)
        path.pop()
        state[node] = 2

    for node in parents:
        if node not in state:
            visit(node, [])
    return cycles


def check_contiguous(graphs: GraphSet) -> list[Finding]:
    """Rows of one item_id must be consecutive: the official scorer restarts an item it sees again."""
    found = []
    for prompt in graphs.prompts:
        rows = [q.row for q in prompt.questions]
        for before, (q, row) in zip(rows, list(zip(prompt.questions, rows))[1:]):
            if row != before + 1:
                found.append(
                    Finding(
                        graphs.path,
                        q.line,
                        "error",
                        "not-contiguous",
                        f"{prompt.item_id}: rows of this item are interrupted by another item "
                        "(the official scorer keeps only the last run); keep them together",
                    )
                )
                break
    return found


def check_graphs(graphs: GraphSet) -> list[Finding]:
    """Every finding of a loaded graph set, sorted by line."""
    found = check_contiguous(graphs)
    for prompt in graphs.prompts:
        found.extend(check_prompt(prompt, graphs.path))
        found.extend(check_tuples(prompt, graphs.path))
    return sorted(found, key=lambda f: (f.line, f.code))


def check_tuples(prompt: Prompt, path: str) -> list[Finding]:
    """What DSG's tuple stage promises, as warnings (real DSG-1k has a few of each; `build graphs` treats them
    as errors): a whole entity has no parent, no tuple is asked twice, an entity is named in the prompt."""
    found: list[Finding] = []
    seen: dict[str, Question] = {}
    for q in prompt.questions:
        where = f"{prompt.item_id}: question {q.proposition_id}"
        if q.l2 == "entity - whole" and any(p != 0 for p in q.parents):
            found.append(
                Finding(
                    path,
                    q.line,
                    "warning",
                    "entity-not-root",
                    f"{where}: whole entity '{q.tuple}' has parents {list(q.parents)}; make it a root (0)",
                )
            )
        key = " ".join(q.tuple.lower().split())
        if key in seen:
            found.append(
                Finding(
                    path,
                    q.line,
                    "warning",
                    "duplicate-tuple",
                    f"{where}: tuple '{q.tuple}' repeats question {seen[key].proposition_id}; delete one",
                )
            )
        elif key:
            seen[key] = q
        arguments = tuple_arguments(q.tuple)
        # The first argument of an entity tuple is the entity; for a part ("man's hair") its words include
        # the part. Matching any content word tolerates plurals and possessives.
        if q.l1 == "entity" and arguments and not mentions_argument(prompt.text, arguments[:1]):
            found.append(
                Finding(
                    path,
                    q.line,
                    "warning",
                    "entity-not-in-prompt",
                    f"{where}: entity '{arguments[0]}' is not named in the prompt text",
                )
            )
    return found
