"""`build graphs` end to end: the real openai client against a local fake server serving recorded and broken
replies (malformed JSON, a cycle, a dangling parent, an invented entity, 429, a timeout, a dead server, a model
that never learns). Every prompt ends as a valid graph or a reported failure; reruns replay the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from build_llm_server import FakeChatServer, conversation_round, original_ask

from dpgbench.build.graphs import GraphConfig, build_graphs, validate_dependencies, validate_tuples
from dpgbench.build.llm import InvalidReply, LLMConfig
from dpgbench.build.sources import read_sources
from dpgbench.build.templates import load_template
from dpgbench.data import load_csv
from dpgbench.errors import DpgBenchError
from dpgbench.graphcheck import check_graphs


def simple_graph(a: str, b: str, color: str, relation: str) -> dict[str, list[Any]]:
    return {
        "tuples": [
            f"entity - whole ({a})",
            f"entity - whole ({b})",
            f"attribute - color ({a}, {color})",
            f"relation - spatial ({a}, {b}, {relation})",
        ],
        "questions": [
            f"Is there a {a}?",
            f"Is there a {b}?",
            f"Is the {a} {color}?",
            f"Is the {a} {relation} the {b}?",
        ],
        "parents": [[0], [0], [1], [1, 2]],
    }


PROMPTS = {
    "good": ("A black cat sleeps on a red mat.", simple_graph("cat", "mat", "black", "on")),
    "malformed": ("A yellow kite flies above a green hill.", simple_graph("kite", "hill", "yellow", "above")),
    "cycle": ("A white cup stands on a wooden table.", simple_graph("cup", "table", "white", "on")),
    "dangling": ("A blue bird sits on a thin branch.", simple_graph("bird", "branch", "blue", "on")),
    "invented": ("A green lamp stands on a desk.", simple_graph("lamp", "desk", "green", "on")),
    "rate": ("A silver car is parked beside a tall tree.", simple_graph("car", "tree", "silver", "beside")),
    "slow": ("A round clock hangs above an old door.", simple_graph("clock", "door", "round", "above")),
    "hopeless": ("A small boat floats on a calm lake.", simple_graph("boat", "lake", "small", "on")),
    "down": (
        "A striped umbrella shades a beach chair.",
        simple_graph("umbrella", "chair", "striped", "over"),
    ),
}
BROKEN_TUPLES = '{"tuples": [{"id": 1, "tuple": "entity - whole (kite)"'
# (item, stage, round) -> content replacing the recorded good reply
BROKEN = {
    ("malformed", "dsg_tuples", 0): BROKEN_TUPLES,
    ("cycle", "dsg_dependencies", 0): json.dumps(
        {
            "dependencies": [
                {"id": 1, "parents": [0]},
                {"id": 2, "parents": [0]},
                {"id": 3, "parents": [4]},
                {"id": 4, "parents": [3]},
            ]
        }
    ),
    ("dangling", "dsg_dependencies", 0): json.dumps(
        {
            "dependencies": [
                {"id": 1, "parents": [0]},
                {"id": 2, "parents": [0]},
                {"id": 3, "parents": [9]},
                {"id": 4, "parents": [1, 2]},
            ]
        }
    ),
    ("invented", "dsg_tuples", 0): json.dumps(
        {
            "tuples": [
                {"id": 1, "tuple": "entity - whole (lamp)"},
                {"id": 2, "tuple": "entity - whole (chair)"},
            ]
        }
    ),
}
STAGE_SYSTEMS = {
    name: load_template(name).turns()[0][1] for name in ("dsg_tuples", "dsg_questions", "dsg_dependencies")
}


def recorded_reply(body: dict[str, Any]) -> str:
    messages = body["messages"]
    stage = next(name for name, system in STAGE_SYSTEMS.items() if messages[0]["content"] == system)
    text = re.match(r"Prompt: (.*)", original_ask(messages))[1]  # type: ignore[index]
    item = next(name for name, (prompt, _) in PROMPTS.items() if prompt == text)
    graph = PROMPTS[item][1]
    if (item, stage, conversation_round(messages)) in BROKEN:
        return BROKEN[(item, stage, conversation_round(messages))]
    if stage == "dsg_tuples":
        return json.dumps({"tuples": [{"id": i, "tuple": t} for i, t in enumerate(graph["tuples"], 1)]})
    if stage == "dsg_questions":
        questions = list(graph["questions"])
        if item == "hopeless":  # a model that never learns: always one open question
            questions[2] = "What size is the boat?"
        return json.dumps({"questions": [{"id": i, "question": q} for i, q in enumerate(questions, 1)]})
    return json.dumps({"dependencies": [{"id": i, "parents": p} for i, p in enumerate(graph["parents"], 1)]})


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"item_id": k, "text": v[0]}) + "\n" for k, v in PROMPTS.items()))
    return path


def config(server: FakeChatServer) -> GraphConfig:
    llm = LLMConfig(
        model="gpt-4", base_url=server.base_url, concurrency=4, max_attempts=3, timeout=0.5, backoff=0.01
    )
    return GraphConfig(llm=llm, max_tries=3)


def test_three_stages_with_broken_replies_then_cache_replay(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "graphs"
    server = FakeChatServer(recorded_reply, timeout_sleep=1.0)
    server.faults = {
        PROMPTS["rate"][0]: ["429"],
        PROMPTS["slow"][0]: ["timeout"],
        PROMPTS["down"][0]: ["500"] * 3,
    }
    with server:
        first = build_graphs(config(server), read_sources(sources), out)
        received_first = list(server.received)

        # 1. Every prompt is a graph or a reported failure; nothing is lost.
        assert sorted(p.item_id for p in first.graphs) == [
            "cycle",
            "dangling",
            "good",
            "invented",
            "malformed",
            "rate",
            "slow",
        ]
        assert [(f.item_id, f.stage, f.tries, f.reason) for f in first.failures] == [
            (
                "hopeless",
                "dsg_questions",
                3,
                "question 3 'What size is the boat?' is not a yes/no question ending with '?'",
            ),
            ("down", "dsg_tuples", 1, "gave up after 3 attempt(s): HTTP 500"),
        ]
        # 2. Requests: 3 per prompt, +1 per rejected answer (4 prompts once, hopeless twice), +1 for the 429
        # and the timeout; the dead server saw 3 attempts at stage 1 only. 5 of them were not answered.
        assert len(received_first) == 3 * 8 + 4 + 2 + 1 + 1 + 3 == 35
        assert first.usage.requests == 30
        assert (first.usage.retries, first.usage.failures, first.usage.cache_hits) == (4, 1, 0)
        answered = [b for b in received_first if b["_fault"] is None]
        prompt_tokens = sum(len(m["content"].split()) for b in answered for m in b["messages"])
        completion_tokens = sum(len(recorded_reply(b).split()) for b in answered)
        assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (
            prompt_tokens,
            completion_tokens,
        )
        assert first.usage.cost_usd == pytest.approx(
            (prompt_tokens * 30 + completion_tokens * 60) / 1e6, rel=1e-12
        )

        # 3. The validator's message went back to the model, word for word.
        retry_asks = [
            b["messages"][-1]["content"] for b in received_first if conversation_round(b["messages"]) == 1
        ]
        assert any("question 3: parent 9 does not exist [dangling-parent]" in a for a in retry_asks), (
            retry_asks
        )
        assert any("dependency cycle 3 -> 4 -> 3 [cycle]" in a for a in retry_asks)
        assert any(
            "entity 'chair' is not named in the prompt text [entity-not-in-prompt]" in a for a in retry_asks
        )
        try:
            json.loads(BROKEN_TUPLES)
        except json.JSONDecodeError as exc:
            expected = f"the reply is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        assert any(a.startswith(f"That answer was rejected: {expected}.") for a in retry_asks)

        # 4. The output is the nine-column DSG CSV, clean under `dpgbench lint`.
        csv_text = (out / "graphs.csv").read_text()
        assert csv_text.splitlines()[:6] == [
            "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language",
            "good,A black cat sleeps on a red mat.,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?",
            "good,A black cat sleeps on a red mat.,mat,2,0,entity,whole,entity - whole (mat),Is there a mat?",
            'good,A black cat sleeps on a red mat.,"cat, black",3,1,attribute,color,"attribute - color (cat, black)",Is the cat black?',
            'good,A black cat sleeps on a red mat.,"cat, mat, on",4,"1,2",relation,spatial,"relation - spatial (cat, mat, on)",Is the cat on the mat?',
            "malformed,A yellow kite flies above a green hill.,kite,1,0,entity,whole,entity - whole (kite),Is there a kite?",
        ]
        loaded = load_csv(out / "graphs.csv")
        assert (len(loaded.prompts), loaded.n_questions) == (7, 28)
        assert [f for f in check_graphs(loaded) if f.level == "error"] == []
        assert [len(p.questions) for p in load_csv(out / "graphs.csv").prompts] == [4] * 7
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"] == {"prompts": 9, "graphs": 7, "questions": 28, "failed": 2}
        assert manifest["templates"]["dsg_tuples"]["sha256"] == load_template("dsg_tuples").sha256
        assert manifest["usage"]["requests"] == first.usage.requests

        # 5. Second run, cache only: not one request, the same bytes, the same failures (down: not cached).
        csv_bytes = (out / "graphs.csv").read_bytes()
        second = build_graphs(config(server), read_sources(sources), out, offline=True)
        assert len(server.received) == len(received_first)
        assert (out / "graphs.csv").read_bytes() == csv_bytes
        assert (second.usage.requests, second.usage.cache_hits) == (0, first.usage.requests)
        assert [(f.item_id, f.stage) for f in second.failures] == [
            ("hopeless", "dsg_questions"),
            ("down", "dsg_tuples"),
        ]
        assert second.failures[1].reason.endswith("(--offline)")
        # The rerun cost nothing, and its manifest still says what the files cost (from the cache).
        assert (second.usage.cost_usd, second.usage.total_requests) == (0.0, first.usage.requests)
        assert second.usage.total_cost_usd == pytest.approx(first.usage.cost_usd, rel=1e-12)
        assert first.usage.total_cost_usd == pytest.approx(first.usage.cost_usd, rel=1e-12)
        usage = json.loads((out / "manifest.json").read_text())["usage"]
        assert (usage["cost_usd"], usage["total_cost_usd"]) == (0.0, round(first.usage.cost_usd, 6))
        assert usage["total_prompt_tokens"] == first.usage.prompt_tokens

        # 6. Online again: the server is back, so only the dead prompt's three requests are sent.
        third = build_graphs(config(server), read_sources(sources), out)
        assert len(server.received) == len(received_first) + 3
        assert [f.item_id for f in third.failures] == ["hopeless"]
        assert len(third.graphs) == 8 and third.graphs[-1].item_id == "down"

        # 7. Another model in the same folder is refused before anything is asked.
        other = config(server)
        other.llm.model = "gpt-4o"
        with pytest.raises(DpgBenchError, match="model"):
            build_graphs(other, read_sources(sources), out)


def test_validators_reject_what_dsg_forbids() -> None:
    text = "A red fox jumps over a log."
    good = (
        '{"tuples": [{"id": 1, "tuple": "entity - whole (fox)"}, {"id": 2, "tuple": "entity - whole (log)"}]}'
    )
    assert validate_tuples(good, text) == ["entity - whole (fox)", "entity - whole (log)"]
    cases = {
        '{"tuples": [{"id": 2, "tuple": "entity - whole (fox)"}]}': '"tuples" must have ids 1..1 in order, one each; got [2]',
        '{"tuples": [{"id": 1, "tuple": "fox"}]}': "tuple 1 'fox' is not 'category - detail (arguments)'",
        '{"tuples": [{"id": 1, "tuple": "attribute - color (fox)"}]}': "tuple 1 'attribute - color (fox)' has 1 argument(s), attribute takes 2",
        '{"tuples": [{"id": 1, "tuple": "entity - whole (fox)"}, {"id": 2, "tuple": "entity - whole (Fox)"}]}': (
            "tuple 2: tuple 'entity - whole (Fox)' repeats tuple 1; delete one [duplicate-tuple]"
        ),
        "[1, 2]": "the reply must be one JSON object",
    }
    for reply, message in cases.items():
        with pytest.raises(InvalidReply) as info:
            validate_tuples(reply, text)
        assert str(info.value) == message
    tuples = ["entity - whole (fox)", "entity - whole (log)", "relation - spatial (fox, log, over)"]
    deps = '{"dependencies": [{"id": 1, "parents": [0]}, {"id": 2, "parents": [1]}, {"id": 3, "parents": [1, 2]}]}'
    with pytest.raises(InvalidReply) as info:
        validate_dependencies(deps, tuples, text)
    assert (
        str(info.value)
        == "question 2: whole entity 'entity - whole (log)' has parents [1]; make it a root (0) [entity-not-root]"
    )
    ok = '{"dependencies": [{"id": 1, "parents": []}, {"id": 2, "parents": [0]}, {"id": 3, "parents": [2, 1, 1]}]}'
    assert validate_dependencies(ok, tuples, text) == [(0,), (0,), (1, 2)]


def test_resume_after_a_kill_mid_write(sources: Path, tmp_path: Path) -> None:
    """A kill can tear the cache's last line; the rerun drops it, asks that one request again, loses nothing."""
    few = tmp_path / "few.jsonl"
    few.write_text(
        "".join(json.dumps({"item_id": k, "text": PROMPTS[k][0]}) + "\n" for k in ("good", "malformed"))
    )
    out = tmp_path / "graphs"
    with FakeChatServer(recorded_reply) as server:
        build_graphs(config(server), read_sources(few), out)
        assert len(server.received) == 3 + 4
        csv_bytes = (out / "graphs.csv").read_bytes()
        cache = out / "llm_cache.jsonl"
        data = cache.read_bytes()
        last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
        cache.write_bytes(data[: last_line_start + 40])  # the last record half written
        (out / "graphs.csv").unlink()
        again = build_graphs(config(server), read_sources(few), out)
        assert len(server.received) == 3 + 4 + 1
        assert (again.usage.requests, again.usage.cache_hits) == (1, 6)
        assert (out / "graphs.csv").read_bytes() == csv_bytes
        assert len(cache.read_text().splitlines()) == 7


def test_a_refused_key_stops_the_build_with_one_line(tmp_path: Path) -> None:
    from dpgbench.build.llm import LLMClient, parse_json_object

    with FakeChatServer(lambda body: "{}") as server:
        server.faults = {"Prompt": ["401"]}
        with (
            LLMClient(config(server).llm, tmp_path / "cache.jsonl") as client,
            pytest.raises(DpgBenchError) as info,
        ):
            client.complete([{"role": "user", "content": "Prompt: x"}])
    assert str(info.value) == f"{server.base_url} refused the key (HTTP 401); check $OPENAI_API_KEY"
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}


def upstream_read(path: Path) -> dict[str, dict[int, tuple[str, list[int], str]]]:
    """graphs.csv as upstream's prepare_dpg_data sees it, re-stated here: pandas' default types, the first
    data row skipped, int() of the id and of every comma-separated parent, grouped by item_id."""
    import pandas as pd

    table = pd.read_csv(path)
    graphs: dict[str, dict[int, tuple[str, list[int], str]]] = {}
    for index, row in table.iterrows():
        if index == 0:
            continue
        parents = [int(part.strip()) for part in row.dependency.split(",")]
        graphs.setdefault(row.item_id, {})[int(row.proposition_id)] = (
            row.tuple,
            parents,
            row.question_natural_language,
        )
    return graphs


SIMPLE = ("good", "rate", "slow", "down")  # no broken replies: three requests each


def simple_sources(tmp_path: Path) -> Path:
    path = tmp_path / "simple.jsonl"
    path.write_text("".join(json.dumps({"item_id": k, "text": PROMPTS[k][0]}) + "\n" for k in SIMPLE))
    return path


def test_graphs_csv_reads_with_upstreams_logic(tmp_path: Path) -> None:
    out = tmp_path / "graphs"
    with FakeChatServer(recorded_reply) as server:
        summary = build_graphs(config(server), read_sources(simple_sources(tmp_path)), out)
    ours = load_csv(out / "graphs.csv")
    theirs = upstream_read(out / "graphs.csv")
    expected = {
        p.item_id: {q.proposition_id: (q.tuple, list(q.parents), q.question) for q in p.questions}
        for p in ours.prompts
    }
    del expected["good"][1]  # upstream skips the first row
    assert theirs == expected and list(theirs) == list(SIMPLE)
    assert summary.notes == [
        "upstream's compute_dpg_bench.py skips the CSV's first row, so it cannot score 'good' (its other "
        "questions depend on question 1); the `official` protocol of `dpgbench score` does the same"
    ]
    assert json.loads((out / "manifest.json").read_text())["upstream_notes"] == summary.notes


def test_upstream_notes_name_files_upstream_cannot_read() -> None:
    from dpgbench.build.graphs import assemble, upstream_notes

    roots_only = assemble("12", "A cat.", ["entity - whole (cat)"], ["Is there a cat?"], [(0,)])
    child = assemble(
        "a.b", "A red cat.", ["entity - whole (cat)", "attribute - color (cat, red)"], ["Is there a cat?",
        "Is the cat red?"], [(0,), (1,)],
    )  # fmt: skip
    notes = upstream_notes([roots_only])
    assert len(notes) == 2 and "pandas reads the dependency column as numbers" in notes[0]
    assert "every item_id is a number" in notes[1]
    notes = upstream_notes([child])
    assert [n.split(",")[0] for n in notes] == [
        "upstream's compute_dpg_bench.py skips the CSV's first row",
        "no question has two parents",
        "1 item_id(s) contain '.'",
    ]
    assert upstream_notes([]) == []


def test_the_concurrency_limit_holds(tmp_path: Path) -> None:
    """Prompts run in parallel and each asks questions and dependencies at once: still at most 2 in flight."""
    with FakeChatServer(recorded_reply, delay=0.1) as server:
        cfg = config(server)
        cfg.llm.concurrency = 2
        summary = build_graphs(cfg, read_sources(simple_sources(tmp_path)), tmp_path / "graphs")
    assert len(summary.graphs) == 4 and len(server.received) == 12
    assert server.max_in_flight == 2


def test_resume_after_sigkill_asks_only_what_was_not_answered(tmp_path: Path) -> None:
    """`dpgbench build graphs` in its own process, killed mid-run; the rerun sends exactly the requests that
    had no complete cache record, and ends with the same files as an uninterrupted build."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from dpgbench.runs import read_jsonl

    sources = simple_sources(tmp_path)
    out = tmp_path / "killed"
    with FakeChatServer(recorded_reply, delay=0.15) as server:
        args = [sys.executable, "-m", "dpgbench.cli", "build", "graphs", str(sources), "--out", str(out)]
        args += ["--base-url", server.base_url, "--concurrency", "2", "--max-attempts", "3", "--timeout", "5"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(server.received) < 5 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        assert not (out / "graphs.csv").exists()  # killed before the end: no half-written table
        cached = len(read_jsonl(out / "llm_cache.jsonl"))
        assert 3 <= cached < 12
        sent = len(server.received)
        resumed = build_graphs(config(server), read_sources(sources), out)
        assert (resumed.usage.requests, resumed.usage.cache_hits) == (12 - cached, cached)
        assert len(server.received) == sent + 12 - cached
        build_graphs(config(server), read_sources(sources), tmp_path / "fresh")
    assert (out / "graphs.csv").read_bytes() == (tmp_path / "fresh" / "graphs.csv").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["finished"] is True
