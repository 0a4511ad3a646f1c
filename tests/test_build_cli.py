"""The build commands end to end through `dpgbench.cli.app`: `build prompts` (captions and sampled object lists)
against the local fake server, `build review export/import` on the shipped demo graphs, and `stats`."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from build_llm_server import FakeChatServer, conversation_round, original_ask
from typer.testing import CliRunner

from dpgbench.build.sources import sample_objects
from dpgbench.build.templates import load_template
from dpgbench.cli import app
from dpgbench.data import load_csv
from dpgbench.errors import DpgBenchError

runner = CliRunner()
DENSE_SYSTEM = load_template("dense_prompt").turns()[0][1]
FILLER = (
    "The scene sits in a quiet room with pale walls and soft morning light from a tall window on the left, "
    "long gentle shadows fall across the wooden floor, and the whole picture is rendered as a detailed "
    "realistic photograph with warm muted colours."
)
CATEGORIES = ["apple", "bicycle", "candle", "drum", "kettle", "lantern"]


def dense_reply(body: dict[str, Any]) -> str:
    messages = body["messages"]
    assert messages[0]["content"] == DENSE_SYSTEM
    source = re.match(r"Input: (.*)", original_ask(messages))[1]  # type: ignore[index]
    names = source.removeprefix("objects: ").split(", ") if source.startswith("objects: ") else [source]
    rounds = conversation_round(messages)
    if "kettle" in names and rounds == 0:  # forgets one object the first time
        names = [n for n in names if n != "kettle"]
    if source == "a lonely lighthouse" and rounds == 0:  # too short the first time
        return json.dumps({"prompt": "A lonely lighthouse."})
    return json.dumps({"prompt": "A picture of " + " and ".join(f"a {n}" for n in names) + ". " + FILLER})


def test_object_sampling_is_seeded(tmp_path: Path) -> None:
    path = tmp_path / "categories.txt"
    path.write_text("\n".join(CATEGORIES) + "\n")
    first = sample_objects(path, 3, seed=0)
    assert [s.objects for s in first.items] == [s.objects for s in sample_objects(path, 3, seed=0).items]
    assert [len(s.objects) for s in first.items] == [len(set(s.objects)) for s in first.items]
    assert all(1 <= len(s.objects) <= 4 and set(s.objects) <= set(CATEGORIES) for s in first.items)
    assert [s.item_id for s in first.items] == ["objects_0_0", "objects_0_1", "objects_0_2"]
    assert first.sha256 != sample_objects(path, 3, seed=1).sha256


def test_build_prompts_from_captions_and_objects(tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("a red apple on a plate\n\na lonely lighthouse\n")
    categories = tmp_path / "categories.txt"
    categories.write_text("\n".join(CATEGORIES) + "\n")
    server = FakeChatServer(dense_reply)
    common = ["--base-url", server.base_url, "--concurrency", "2", "--max-attempts", "2", "--timeout", "5"]
    with server:
        result = runner.invoke(
            app, ["build", "prompts", str(captions), "--out", str(tmp_path / "p1"), *common]
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(x) for x in (tmp_path / "p1" / "prompts.jsonl").read_text().splitlines()]
        assert [(x["item_id"], x["source"]) for x in lines] == [
            ("captions_1", "a red apple on a plate"),
            ("captions_3", "a lonely lighthouse"),
        ]
        assert lines[1]["text"] == "A picture of a a lonely lighthouse. " + FILLER
        assert len(server.received) == 3  # the lighthouse was too short once
        rejection = server.received[2]["messages"][-1]["content"]
        assert rejection.startswith(
            "That answer was rejected: the prompt has 3 words; write 40-110 (aim for 60-80)."
        )
        assert "2 prompt(s) written, 0 failed" in result.output

        sampled = sample_objects(categories, 4, seed=7)
        result = runner.invoke(
            app,
            [
                "build",
                "prompts",
                str(categories),
                "--objects",
                "4",
                "--seed",
                "7",
                "--out",
                str(tmp_path / "p2"),
                *common,
            ],
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(x) for x in (tmp_path / "p2" / "prompts.jsonl").read_text().splitlines()]
        assert [tuple(x["objects"]) for x in lines] == [s.objects for s in sampled.items]
        # Seed 7 draws "kettle" alone twice: the second identical conversation (2 requests) is answered by the cache.
        assert [s.text for s in sampled.items].count("objects: kettle") == 2
        unique = {s.text for s in sampled.items}
        with_kettle = sum("kettle" in text for text in unique)
        assert len(server.received) == 3 + len(unique) + with_kettle == 3 + 3 + 1
        manifest = json.loads((tmp_path / "p2" / "manifest.json").read_text())
        assert manifest["counts"]["prompts"] == 4
        assert (manifest["usage"]["requests"], manifest["usage"]["cache_hits"]) == (4, 2)

        # Rerun: everything from the cache.
        before = len(server.received)
        result = runner.invoke(
            app,
            [
                "build",
                "prompts",
                str(categories),
                "--objects",
                "4",
                "--seed",
                "7",
                "--out",
                str(tmp_path / "p2"),
                *common,
            ],
        )
        assert result.exit_code == 0 and len(server.received) == before
        assert "requests 0 (+6 from cache)" in result.output

    # A changed setting in the same folder is refused with the setting's name.
    result = runner.invoke(
        app, ["build", "prompts", str(captions), "--out", str(tmp_path / "p1"), "--model", "gpt-4o", *common]
    )
    assert result.exit_code == 1 and isinstance(result.exception, DpgBenchError)
    assert "this prompt build was made with llm=" in str(result.exception)


def _sheet_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(), newline="")))


def _write_sheet(path: Path, rows: list[dict[str, str]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())


def test_review_export_edit_import(tmp_path: Path) -> None:
    sheet = tmp_path / "review.csv"
    result = runner.invoke(app, ["build", "review", "export", "demo", str(sheet)])
    assert result.exit_code == 0, result.output
    rows = _sheet_rows(sheet)
    assert len(rows) == 147 and list(rows[0])[-3:] == ["action", "comment", "lint"]
    assert {r["action"] for r in rows} == {"keep"}
    # The shipped demo's "global - (oil painting)" has no detail field: lint flags nothing structural there.
    lighthouse = [r for r in rows if r["item_id"] == "demo_lighthouse"]
    assert [r["proposition_id"] for r in lighthouse] == [str(i) for i in range(1, 13)]

    # A reviewer deletes the rowboat's texture (11), rewords question 8 and adds a question 13.
    lighthouse[10]["action"] = "delete"
    lighthouse[7]["question_natural_language"] = "Is the sea dark grey?"
    lighthouse[7]["tuple"] = "attribute - color (sea, dark grey)"
    added = dict(lighthouse[5], proposition_id="13", question_natural_language="Is the lighthouse tall?",
                 tuple="attribute - size (lighthouse, tall)", keywords="lighthouse, tall", category_detailed="size")  # fmt: skip
    position = rows.index(lighthouse[11]) + 1
    rows.insert(position, added)
    _write_sheet(sheet, rows)
    out = tmp_path / "reviewed.csv"
    result = runner.invoke(
        app, ["build", "review", "import", str(sheet), "--out", str(out), "--original", "demo"]
    )
    assert result.exit_code == 0, result.output
    assert "(1 edited, 1 deleted, 1 added" in result.output
    reviewed = load_csv(out)
    assert reviewed.n_questions == 147
    light = reviewed.by_id()["demo_lighthouse"]
    assert [q.proposition_id for q in light.questions] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    assert light.questions[7].question == "Is the sea dark grey?"
    record = json.loads((tmp_path / "reviewed.csv.review.json").read_text())
    assert (record["edited"], record["deleted"], record["added"], record["questions"]) == (1, 1, 1, 147)

    # Deleting a parent leaves its children dangling: refused, with the line of the first child.
    rows = _sheet_rows(sheet)
    rows[0]["action"] = "delete"  # lighthouse (1): parent of 6, 7, 10 and the added 13
    _write_sheet(sheet, rows)
    result = runner.invoke(app, ["build", "review", "import", str(sheet), "--out", str(out)])
    assert result.exit_code == 1
    assert str(result.exception) == (
        f"{sheet}:7: error: demo_lighthouse: question 6: parent 1 does not exist [dangling-parent] "
        "(3 more error(s)); fix the sheet and import it again"
    )
    rows[0]["action"] = "remove"
    _write_sheet(sheet, rows)
    result = runner.invoke(app, ["build", "review", "import", str(sheet), "--out", str(out)])
    assert str(result.exception) == f"{sheet}:2: action 'remove' is not one of keep, delete (or empty)"
    rows[0]["action"] = "keep"
    rows[1]["text"] = "A different prompt."
    _write_sheet(sheet, rows)
    result = runner.invoke(app, ["build", "review", "import", str(sheet), "--out", str(out)])
    assert str(result.exception) == (
        f"{sheet}:3: the text of 'demo_lighthouse' differs from its first row; edit it on every row or none"
    )


def test_stats_command_table_csv_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    try:
        from dpgbench.build.clip_tokens import find_vocab

        find_vocab()
    except DpgBenchError as exc:
        pytest.skip(f"no CLIP vocabulary offline ({exc})")
    table, plot = tmp_path / "stats.csv", tmp_path / "lengths.png"
    result = runner.invoke(app, ["stats", "demo", "--no-pos", "--csv", str(table), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    row = _sheet_rows(table)[0]
    assert (row["name"], row["prompts"], row["questions_per_prompt"]) == ("demo", "12", repr(147 / 12))
    assert row["nouns"] == "" and row["l1:entity"] != ""
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["stats", "demo", "--clip-vocab", str(tmp_path / "nope.gz"), "--no-pos"])
    assert result.exit_code == 1 and "nope.gz: no such file" in str(result.exception)


def test_sources_in_the_formats_the_paper_started_from(tmp_path: Path) -> None:
    from dpgbench.build.sources import read_sources

    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text(
        "Prompt\tCategory\tChallenge\tNote\n"
        "bond\tAbstract\tBasic\t\n"
        "a red apple, on a table\tFood & Beverage\tColors\tcomma inside\n"
    )
    assert [(s.item_id, s.text) for s in read_sources(parti).items] == [
        ("PartiPrompts_2", "bond"),
        ("PartiPrompts_3", "a red apple, on a table"),
    ]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 9}],
                "annotations": [
                    {"image_id": 9, "id": 41, "caption": "A man riding  a wave\non top of a surfboard."},
                    {"image_id": 9, "id": 42, "caption": "   "},
                    {"image_id": 7, "id": 43, "caption": "Two dogs play in the grass."},
                ],
            }
        )
    )
    assert [(s.item_id, s.text) for s in read_sources(coco).items] == [
        ("coco_9_41", "A man riding a wave on top of a surfboard."),
        ("coco_7_43", "Two dogs play in the grass."),
    ]
    coco.write_text('{"images": []}')
    result = runner.invoke(app, ["build", "prompts", str(coco), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and str(result.exception).startswith(f"{coco}: expected COCO captions")
    coco.write_text('{"annotations": [')
    result = runner.invoke(app, ["build", "prompts", str(coco), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and str(result.exception).startswith(f"{coco}:1: not valid JSON")


def test_bad_input_is_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # no NLTK data: the path error still comes first
    result = runner.invoke(app, ["stats", str(tmp_path / "nope.csv")])
    assert (
        result.exit_code == 1 and "nope.csv" in str(result.exception) and "NLTK" not in str(result.exception)
    )
    captions = tmp_path / "one.txt"
    captions.write_text("a cat\n")
    args = ["build", "prompts", str(captions), "--out", str(tmp_path / "p"), "--templates", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "no template dense_prompt.vN.txt" in str(result.exception)
    assert "dense prompts" not in result.output and not (tmp_path / "p").exists()
    args = ["build", "graphs", str(captions), "--out", str(tmp_path / "g"), "--templates", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "no template dsg_tuples.vN.txt" in str(result.exception)
