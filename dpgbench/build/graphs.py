"""DSG question graphs from prompts in three LLM stages: tuples, then questions and dependencies at once.

Each stage asks for a JSON object, checks it with graphcheck's rules and, when a rule fails, asks again with
the rule's message; a prompt still failing after `max_tries` is reported, never dropped silently. Writes the
nine-column DSG CSV (readable by every scorer), our JSONL, and a manifest with templates' hashes and cost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpgbench.build.llm import (
    Attempts,
    Failure,
    InvalidReply,
    LLMClient,
    LLMConfig,
    RequestFailed,
    Usage,
    ask_until_valid,
    parse_json_object,
)
from dpgbench.build.sources import Source, SourceSet
from dpgbench.build.templates import Template, load_template
from dpgbench.data import Prompt, Question, save_graphs
from dpgbench.graphcheck import (
    Finding,
    check_prompt,
    check_tuples,
    is_yes_no_question,
    mentions_argument,
    tuple_arguments,
)
from dpgbench.runs import check_manifest, environment, write_json

STAGES = ("dsg_tuples", "dsg_questions", "dsg_dependencies")
TUPLE_FORM = re.compile(r"^(entity|attribute|relation|global|other) - ([^()]*?)\s*\((.+)\)$")
# Arguments per category, as in DSG-1k (e.g. relation: subject, object, predicate).
ARITY = {"entity": (1, 1), "global": (1, 1), "attribute": (2, 2), "relation": (3, 3), "other": (2, 9)}
# graphcheck's warnings that a generated graph must not have (DSG's own promises about its graphs).
STRICT_CODES = frozenset(
    {"entity-not-root", "duplicate-tuple", "entity-not-in-prompt", "question-misses-tuple"}
)
MAX_REASONS = 6


@dataclass
class GraphConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    max_tries: int = 3  # per stage and prompt: the first answer plus retries with the validator's message
    template_dir: str | None = None  # None: the templates shipped with dpgbench

    def templates(self) -> dict[str, Template]:
        return {name: load_template(name, self.template_dir) for name in STAGES}


@dataclass
class GraphBuildSummary:
    graphs: list[Prompt]
    failures: list[Failure]
    usage: Usage
    seconds: float
    notes: list[str] = field(default_factory=list)  # what upstream's scorer will make of graphs.csv

    @property
    def n_questions(self) -> int:
        return sum(len(p.questions) for p in self.graphs)


# ------------------------------------------------------------------------------------------ validators


def _reasons(findings: list[Finding], item_id: str) -> str:
    texts = [f"{f.message.removeprefix(f'{item_id}: ')} [{f.code}]" for f in findings[:MAX_REASONS]]
    more = f" (and {len(findings) - MAX_REASONS} more)" if len(findings) > MAX_REASONS else ""
    return "; ".join(texts) + more


def _entries(obj: dict[str, Any], key: str, n: int | None) -> list[dict[str, Any]]:
    """The list under `key`, each entry an object with integer ids 1..n in order."""
    items = obj.get(key)
    if not isinstance(items, list) or not items:
        raise InvalidReply(f'the object needs a non-empty list "{key}"')
    if not all(isinstance(item, dict) for item in items):
        raise InvalidReply(f'every entry of "{key}" must be an object with an "id"')
    ids = [item.get("id") for item in items]
    expected = list(range(1, (n if n is not None else len(items)) + 1))
    if ids != expected:
        raise InvalidReply(
            f'"{key}" must have ids {expected[0]}..{expected[-1]} in order, one each; got {ids}'
        )
    return items


def validate_tuples(reply: str, prompt_text: str) -> list[str]:
    items = _entries(parse_json_object(reply), "tuples", None)
    tuples: list[str] = []
    problems: list[str] = []
    for item in items:
        text = " ".join(str(item.get("tuple", "")).split())
        match = TUPLE_FORM.match(text)
        if not match:
            problems.append(f"tuple {item['id']} '{text}' is not 'category - detail (arguments)'")
            continue
        low, high = ARITY[match[1]]
        n_args = len(tuple_arguments(text))
        if not low <= n_args <= high:
            want = str(low) if low == high else f"at least {low}"
            problems.append(f"tuple {item['id']} '{text}' has {n_args} argument(s), {match[1]} takes {want}")
        tuples.append(text)
    if problems:
        raise InvalidReply("; ".join(problems[:MAX_REASONS]))
    draft = Prompt("draft", prompt_text, [Question(i, "", t, (0,)) for i, t in enumerate(tuples, 1)])
    findings = [f for f in check_tuples(draft, "") if f.code in STRICT_CODES]
    if findings:
        raise InvalidReply(_reasons(findings, "draft").replace("question ", "tuple "))
    return tuples


def validate_questions(reply: str, tuples: list[str]) -> list[str]:
    items = _entries(parse_json_object(reply), "questions", len(tuples))
    questions: list[str] = []
    problems: list[str] = []
    for item, tuple_text in zip(items, tuples):
        question = " ".join(str(item.get("question", "")).split())
        if not is_yes_no_question(question) or not question.endswith("?"):
            problems.append(f"question {item['id']} '{question}' is not a yes/no question ending with '?'")
        elif not mentions_argument(question, tuple_arguments(tuple_text)):
            problems.append(f"question {item['id']} '{question}' does not name anything of '{tuple_text}'")
        questions.append(question)
    if problems:
        raise InvalidReply("; ".join(problems[:MAX_REASONS]))
    return questions


def validate_dependencies(reply: str, tuples: list[str], prompt_text: str) -> list[tuple[int, ...]]:
    items = _entries(parse_json_object(reply), "dependencies", len(tuples))
    parents: list[tuple[int, ...]] = []
    for item in items:
        value = item.get("parents", [0])
        if not isinstance(value, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in value
        ):
            raise InvalidReply(f'entry {item["id"]}: "parents" must be a list of integer ids, [0] for none')
        parents.append(tuple(sorted(set(value) - {0})) or (0,))
    questions = [
        Question(i, "", t, p, dependency=",".join(map(str, p)))
        for i, (t, p) in enumerate(zip(tuples, parents), 1)
    ]
    draft = Prompt("draft", prompt_text, questions)
    codes = {"dangling-parent", "cycle", "parent-after-child", "entity-not-root"}
    findings = [f for f in check_prompt(draft, "") + check_tuples(draft, "") if f.code in codes]
    if findings:
        raise InvalidReply(_reasons(findings, "draft"))
    return parents


def assemble(
    item_id: str, text: str, tuples: list[str], questions: list[str], parents: list[tuple[int, ...]]
) -> Prompt:
    """The graph as DSG-format rows: keywords are the tuple's arguments, categories its two levels."""
    rows = []
    for pid, (tuple_text, question, parent_ids) in enumerate(zip(tuples, questions, parents), 1):
        category = tuple_text.split("(")[0]
        level1, _, level2 = category.partition(" - ")
        rows.append(
            Question(
                proposition_id=pid,
                question=question,
                tuple=tuple_text,
                parents=parent_ids,
                keywords=", ".join(tuple_arguments(tuple_text)),
                category_broad=level1.strip(),
                category_detailed=level2.strip(),
                dependency=",".join(map(str, parent_ids)),
                row=pid - 1,
            )
        )
    return Prompt(item_id, text, rows)


def upstream_notes(graphs: list[Prompt]) -> list[str]:
    """What upstream's compute_dpg_bench.py will do with graphs.csv that our scorer does not (it reads the file
    with pandas' default types and drops its first row); said once in the manifest and the terminal."""
    if not graphs:
        return []
    notes = []
    first = graphs[0]
    if any(first.questions[0].proposition_id in q.parents for q in first.questions[1:]):
        notes.append(
            f"upstream's compute_dpg_bench.py skips the CSV's first row, so it cannot score '{first.item_id}' "
            "(its other questions depend on question 1); the `official` protocol of `dpgbench score` does the same"
        )
    if not any(len(q.parents) > 1 for p in graphs for q in p.questions):
        notes.append(
            "no question has two parents, so pandas reads the dependency column as numbers and upstream's "
            "`dependency.split(',')` fails on this file; our scorers read it"
        )
    if all(p.item_id.lstrip("-").isdigit() for p in graphs):
        notes.append(
            "every item_id is a number, so pandas reads them as integers and upstream finds no question "
            "for its image files; prefix the ids (e.g. `prompt_12`) if upstream must read this file"
        )
    dotted = [p.item_id for p in graphs if "." in p.item_id]
    if dotted:
        notes.append(
            f"{len(dotted)} item_id(s) contain '.', e.g. '{dotted[0]}': upstream cuts image file names at the "
            "first '.', so it finds no question for them"
        )
    return notes


# ---------------------------------------------------------------------------------------------- stages


def _tuple_lines(tuples: list[str]) -> str:
    return "\n".join(f"{i} | {t}" for i, t in enumerate(tuples, 1))


def build_graph(
    client: LLMClient, templates: dict[str, Template], source: Source, max_tries: int
) -> Prompt | Failure:
    """One prompt through the three stages; a stage that cannot be satisfied becomes a Failure."""
    text = source.text
    stage = "dsg_tuples"
    attempts = {name: Attempts() for name in STAGES}
    try:
        # 1. Tuples: everything else is asked about them.
        tuples = ask_until_valid(
            client,
            templates[stage].messages(prompt=text),
            lambda reply: validate_tuples(reply, text),
            max_tries,
            attempts[stage],
        )
        # 2+3. Questions and dependencies only need the tuples, so they are asked at the same time.
        listing = _tuple_lines(tuples)
        with ThreadPoolExecutor(max_workers=1) as side:
            dependencies = side.submit(
                ask_until_valid,
                client,
                templates["dsg_dependencies"].messages(prompt=text, tuples=listing),
                lambda reply: validate_dependencies(reply, tuples, text),
                max_tries,
                attempts["dsg_dependencies"],
            )
            stage = "dsg_questions"
            questions = ask_until_valid(
                client,
                templates[stage].messages(prompt=text, tuples=listing),
                lambda reply: validate_questions(reply, tuples),
                max_tries,
                attempts[stage],
            )
            stage = "dsg_dependencies"
            parents = dependencies.result()
    except (InvalidReply, RequestFailed) as exc:
        return Failure(source.item_id, stage, attempts[stage].tries, str(exc))
    # 4. The whole graph through the lint checks (each stage checked its part; this guards the seams).
    graph = assemble(source.item_id, text, tuples, questions, parents)
    findings = [
        f
        for f in check_prompt(graph, "") + check_tuples(graph, "")
        if f.level == "error" or f.code in STRICT_CODES
    ]
    if findings:
        return Failure(source.item_id, "final", 0, _reasons(findings, source.item_id))
    return graph


def build_graphs(
    config: GraphConfig,
    sources: SourceSet,
    out: Path,
    offline: bool = False,
    on_prompt: Callable[[int], None] | None = None,
) -> GraphBuildSummary:
    """Graphs for every source prompt into `out` (graphs.csv, graphs.jsonl, manifest.json, llm_cache.jsonl).

    Rerunning replays finished requests from the cache, so a killed build resumes where it stopped.
    """
    started = time.monotonic()
    templates = config.templates()
    identity = {
        "kind": "dsg-graphs",
        "llm": config.llm.identity(),
        "templates": {name: t.sha256 for name, t in templates.items()},
        "sources_sha256": sources.sha256,
    }
    manifest_path = out / "manifest.json"
    check_manifest(manifest_path, identity, "graph build")
    manifest: dict[str, Any] = {
        "identity": identity,
        "config": asdict(config),
        "sources": sources.path,
        "templates": {name: t.info() for name, t in templates.items()},
        "finished": False,
        "environment": environment(),
    }
    write_json(manifest_path, manifest)
    results: list[Prompt | Failure] = []
    with LLMClient(config.llm, out / "llm_cache.jsonl", offline) as client:
        pool = ThreadPoolExecutor(max_workers=max(1, config.llm.concurrency))
        try:
            futures = [
                pool.submit(build_graph, client, templates, s, config.max_tries) for s in sources.items
            ]
            for future in futures:
                results.append(future.result())
                if on_prompt is not None:
                    on_prompt(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        usage = client.usage
    graphs = [r for r in results if isinstance(r, Prompt)]
    failures = [r for r in results if isinstance(r, Failure)]
    save_graphs(graphs, out / "graphs.csv")
    save_graphs(graphs, out / "graphs.jsonl")
    summary = GraphBuildSummary(graphs, failures, usage, time.monotonic() - started, upstream_notes(graphs))
    manifest.update(
        finished=True,
        counts={
            "prompts": len(sources.items),
            "graphs": len(graphs),
            "questions": summary.n_questions,
            "failed": len(failures),
        },
        usage=usage.as_dict(),
        failures=[asdict(f) for f in failures],
        upstream_notes=summary.notes,
        seconds=round(summary.seconds, 3),
    )
    write_json(manifest_path, manifest)
    return summary
