"""The leaderboard: exact numbers from the score tables, coverage and provenance columns, reference rows with
sources, refusal (or flags) for mixed judges and question sets, clear messages for runs not scored yet."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpgbench import plots
from dpgbench.cli import app
from dpgbench.errors import DpgBenchError
from dpgbench.leaderboard import REFERENCE_CSV, leaderboard, load_reference, to_markdown
from dpgbench.scored import load_many, load_scored, read_scores_csv

L2 = [
    "global -",
    "entity - part",
    "entity - state",
    "entity - whole",
    "attribute - color",
    "attribute - shape",
    "attribute - size",
    "attribute - texture",
    "attribute - type",
    "relation - non-spatial",
    "relation - spatial",
    "other - count",
    "other - text",
]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_csv_holds_the_exact_scores(report_runs, tmp_path):
    out = tmp_path / "board.csv"
    runs = [str(report_runs[n]) for n in ("a", "b", "c")]
    result = invoke(["leaderboard", *runs, "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    header = list(rows[0])
    assert header[:6] == ["run", "judge", "strict", "official", "dsg", "category_protocol"]
    assert [c for c in header if c.startswith("l1:")] == [
        "l1:global",
        "l1:entity",
        "l1:attribute",
        "l1:relation",
        "l1:other",
    ]
    assert [c[3:] for c in header if c.startswith("l2:")] == L2
    assert len(header) == 6 + 5 + 13 + 23
    # sorted by the strict overall score, highest first; every number read back bit for bit
    assert [r["run"] for r in rows] == ["a", "b", "c"]
    for row in rows:
        table = read_scores_csv(report_runs[row["run"]] / "eval" / "dummy" / "scores.csv")
        for protocol in ("strict", "official", "dsg"):
            assert float(row[protocol]) == table[protocol].overall
        for category, score in table["strict"].l2.items():
            assert float(row[f"l2:{category}"]) == score.score
        assert (row["prompts"], row["prompts_scored"], row["prompts_missing"], row["images_missing"]) == (
            "12",
            "12",
            "0",
            "0",
        )
        assert (row["backend"], row["model"], row["seed"], row["images_per_prompt"]) == (
            "dummy",
            "none (hash-driven drawings)",
            "0",
            "4",
        )
        assert (row["judge"], row["judge_model"], row["questions"]) == (
            "dummy",
            "none (hash of pixels and question)",
            "demo",
        )
        assert row["questions_sha256"] == "d0b22c77c1d6" and row["dpgbench"] == "0.1.0" and row["flags"] == ""
    assert [float(r["strict"]) for r in rows] == sorted((float(r["strict"]) for r in rows), reverse=True)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_categories_follow_the_chosen_protocol_and_official_counts_missing_prompts(report_runs):
    runs = load_many([str(report_runs["a"])])
    columns, rows = leaderboard(runs, protocol="official")
    table = read_scores_csv(report_runs["a"] / "eval" / "dummy" / "scores.csv")["official"]
    assert rows[0]["category_protocol"] == "official"
    assert rows[0]["l1:attribute"] == table.l1["attribute"].score
    # upstream drops demo_lighthouse, so one prompt is not scored under official
    assert (rows[0]["prompts_scored"], rows[0]["prompts_missing"]) == (11, 1)
    assert rows[0]["flags"] == "1 prompt(s) not scored under official"


def test_markdown_table(report_runs):
    result = invoke(["leaderboard", str(report_runs["a"]), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("| run | judge | strict | official | dsg | category_protocol | l1:global |")
    assert lines[1].startswith("|---|---|")
    assert lines[2].startswith(
        "| a | dummy | 65.88 | 66.38 | 66.07 | strict | 62.50 | 74.03 | 58.33 | 43.42 | 72.50 |"
    )
    assert to_markdown(["x", "y"], [{"x": math.nan, "y": "a|b"}]) == "| x | y |\n|---|---|\n| - | a\\|b |\n"


def test_reference_rows_come_with_sources_and_are_flagged(report_runs, tmp_path):
    refs = load_reference()
    assert [r["model"] for r in refs] == [
        "SD v1.5",
        "SD v2",
        "PixArt-α",
        "Playground v2",
        "SDXL",
        "ELLA-SD1.5",
        "ELLA-SDXL",
        "DALL·E 3",
    ]
    assert [r["overall"] for r in refs] == [63.18, 68.09, 71.11, 74.54, 74.65, 74.91, 80.23, 83.50]
    ella_sdxl = refs[6]
    assert [ella_sdxl[c] for c in ("global", "entity", "attribute", "relation", "other")] == [
        85.90,
        85.34,
        86.67,
        86.16,
        87.41,
    ]
    assert all(
        r["source_url"] == "https://arxiv.org/abs/2403.05135v1" and r["self_reported"] == "yes" for r in refs
    )
    out = tmp_path / "board.md"
    result = invoke(["leaderboard", str(report_runs["a"]), "--reference", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert (
        "| DALL·E 3 | mPLUG-large | - | 83.50 | - | official | 90.97 | 89.61 | 88.39 | 90.58 | 89.83 |"
        in text
    )
    assert text.count("self-reported, not recomputed") == 8
    # only the reference rows, without runs
    result = invoke(["leaderboard", "--reference", "--format", "csv"])
    assert result.exit_code == 0 and len(list(csv.DictReader(io.StringIO(result.output)))) == 8


# ELLA paper (arXiv 2403.05135v1), Table 4 "Evaluation results on DPG-Bench" (mPLUG-large answers), typed in
# by hand from the paper, in the paper's row order: Average, Global, Entity, Attribute, Relation, Other.
TABLE_4 = {
    "SD v2": (68.09, 77.67, 78.13, 74.91, 80.72, 80.66),
    "PixArt-α": (71.11, 74.97, 79.32, 78.60, 82.57, 76.96),
    "Playground v2": (74.54, 83.61, 79.91, 82.67, 80.62, 81.22),
    "DALL·E 3": (83.50, 90.97, 89.61, 88.39, 90.58, 89.83),
    "SD v1.5": (63.18, 74.63, 74.23, 75.39, 73.49, 67.81),
    "ELLA-SD1.5": (74.91, 84.03, 84.61, 83.48, 84.03, 80.79),
    "SDXL": (74.65, 83.27, 82.43, 80.91, 86.76, 80.41),
    "ELLA-SDXL": (80.23, 85.90, 85.34, 86.67, 86.16, 87.41),
}


def test_every_reference_number_is_the_papers_table_4():
    """All 48 numbers of dpgbench/results/reference.csv, each with the same source, flagged as self-reported."""
    refs = {r["model"]: r for r in load_reference()}
    assert set(refs) == set(TABLE_4)
    for model, numbers in TABLE_4.items():
        row = refs[model]
        assert tuple(row[c] for c in ("overall", "global", "entity", "attribute", "relation", "other")) == (
            numbers
        ), model
        assert (row["protocol"], row["judge"], row["self_reported"]) == ("official", "mPLUG-large", "yes")
        assert row["source"] == "ELLA paper (Hu et al. 2024), Table 4"
        assert row["source_url"] == "https://arxiv.org/abs/2403.05135v1"
    # The text cells keep two decimals as printed (83.50, not 83.5).
    with open(REFERENCE_CSV, newline="", encoding="utf-8") as f:
        assert {r["model"]: r["overall"] for r in csv.DictReader(f)}["DALL·E 3"] == "83.50"


def test_a_reference_number_without_a_source_is_refused(tmp_path):
    bad = tmp_path / "ref.csv"
    lines = REFERENCE_CSV.read_text(encoding="utf-8").splitlines()
    cells = next(csv.reader([lines[2]]))
    cells[10] = ""  # the source of SD v2
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    bad.write_text("\n".join([lines[0], lines[1], buffer.getvalue().strip()]) + "\n", encoding="utf-8")
    with pytest.raises(DpgBenchError, match=r"ref.csv:3: 'SD v2' has no source; every number needs one"):
        load_reference(bad)


def test_mixed_judges_are_refused_or_flagged(report_runs):
    args = ["leaderboard", str(report_runs["a"]), str(report_runs["b"]), str(report_runs["salted"])]
    result = invoke(args)
    assert result.exit_code == 1
    message = str(result.exception)
    assert "\n" not in message
    assert message.startswith(
        "salted differs from a in its judge ('dummy salt=other' on demo vs 'dummy' on demo)"
    )
    assert "--mixed" in message
    columns, rows = leaderboard(load_many(args[1:]), mixed=True)
    flags = {r["run"]: r["flags"] for r in rows}
    assert flags == {"a": "", "b": "", "salted": "MIXED: other judge"}


def test_other_question_graphs_are_refused(report_runs, tmp_path):
    # the demo questions minus one prompt: another file, another sha256
    from dpgbench import catalog

    source = (catalog.PACKAGE_PROMPTS / "demo.csv").read_text(encoding="utf-8").splitlines()
    questions = tmp_path / "fewer.csv"
    questions.write_text("\n".join(line for line in source if not line.startswith("demo_poster")) + "\n")
    run = tmp_path / "fewer"
    args = ["generate", "--backend", "dummy", "--prompts", str(questions), "--out", str(run)]
    assert invoke(args).exit_code == 0
    assert invoke(["score", str(run), "--judge", "dummy"]).exit_code == 0
    result = invoke(["leaderboard", str(report_runs["a"]), str(run)])
    assert result.exit_code == 1
    assert "fewer differs from a in its question graphs" in str(result.exception)
    _, rows = leaderboard(load_many([str(report_runs["a"]), str(run)]), mixed=True)
    assert {r["run"]: r["flags"] for r in rows}["fewer"].startswith(
        "other prompt subset (11 prompts); MIXED: other"
    )


def test_a_subset_run_is_flagged(report_runs):
    _, rows = leaderboard(load_many([str(report_runs["a"]), str(report_runs["b"]), str(report_runs["half"])]))
    half = next(r for r in rows if r["run"] == "half")
    assert (half["prompts"], half["prompts_scored"], half["flags"]) == (
        6,
        6,
        "other prompt subset (6 prompts)",
    )


def test_runs_without_scores_get_a_clear_message(report_runs, tmp_path):
    result = invoke(["leaderboard", str(report_runs["unscored"])])
    assert result.exit_code == 1
    assert str(result.exception) == (
        f"{report_runs['unscored']}: no judge has scored this run yet; "
        f"run `dpgbench score {report_runs['unscored']} --judge mplug-large`"
    )
    # judging started but not finished: the eval folder has a manifest, no tables yet
    run = shutil.copytree(report_runs["a"], tmp_path / "partial")
    (run / "eval" / "dummy" / "scores.csv").unlink()
    with pytest.raises(
        DpgBenchError, match=r"not scored yet .* run `dpgbench score .*partial --judge dummy` to finish"
    ):
        load_scored(str(run))
    result = invoke(["leaderboard", str(report_runs["a"]), "--judge", "mplug-large"])
    assert (
        result.exit_code == 1
        and "judge 'mplug-large' has not scored this run (judges here: dummy)" in str(result.exception)
    )
    result = invoke(["leaderboard", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no such folder" in str(result.exception)


def test_score_tables_made_from_an_answer_table_are_accepted(report_runs, tmp_path):
    # `dpgbench score --answers` writes tables without a run folder; the leaderboard still lists them
    folder = tmp_path / "external"
    shutil.copytree(report_runs["a"] / "eval" / "dummy", folder)
    (folder / "manifest.json").unlink()
    runs = load_scored(f"external={folder}")
    _, rows = leaderboard(runs)
    assert rows[0]["run"] == "external" and rows[0]["strict"] == runs[0].scores["strict"].overall


def test_category_bars_draw_the_scores():
    figure = plots.category_bars(
        {"a": {"global": 62.5, "entity": 74.0}, "b": {"global": 10.0}}, ["global", "entity"], "t"
    )
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [62.5, 74.0, 10.0, 0.0]
    assert plots.png_bytes(figure) == plots.png_bytes(figure)  # reproducible bytes


def test_report_commands_stay_light(report_runs, tmp_path):
    """No model library is imported by the report commands; scipy and matplotlib only when they are used."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dpgbench.cli import main\n"
        "for args in (['leaderboard', sys.argv[1], '--no-plots', '-o', sys.argv[2]],\n"
        "             ['compare', sys.argv[1], sys.argv[1], '--resamples', '100']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (args, exc.code)\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'modelscope', 'scipy', 'matplotlib')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    args = [sys.executable, "-c", code, str(report_runs["a"]), str(tmp_path / "b.csv")]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_every_model_of_a_backend_and_its_negative_prompt_are_listed(report_runs, tmp_path):
    import json

    run = shutil.copytree(report_runs["a"], tmp_path / "ella", ignore=shutil.ignore_patterns("thumbnails"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["backend"].update(
        model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        resolved_commit="451f4fe",
        negative_prompt="blurry, low quality",
        tsc={
            "checkpoint": "QQGYLab/ELLA",
            "file": "ella-sd1.5-tsc-t5xl.safetensors",
            "resolved_commit": "c07675c",
        },
        text_encoder={"model": "google/flan-t5-xl", "revision": None, "length": 128},
        scheduler_config={"beta_start": 0.00085},  # a dict without a model: not listed
    )
    (run / "manifest.json").write_text(json.dumps(manifest))
    _, rows = leaderboard(load_many([str(run)]))
    assert (rows[0]["model"], rows[0]["revision"]) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "451f4fe",
    )
    assert rows[0]["other_models"] == "tsc=QQGYLab/ELLA@c07675c; text_encoder=google/flan-t5-xl"
    assert rows[0]["negative_prompt"] == "blurry, low quality"
