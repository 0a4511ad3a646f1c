"""The `dpgbench` command end to end on the dummy backend and judge: demo, resume, refusals, bad input."""

from __future__ import annotations

import csv
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dpgbench import catalog
from dpgbench.backends.dummy import DummyBackend, DummyConfig
from dpgbench.cli import main
from dpgbench.data import load_csv
from dpgbench.errors import DpgBenchError
from dpgbench.runs import read_jsonl
from dpgbench.scoring import score


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def read_scores(path: Path) -> dict[tuple[str, str, str], float]:
    with open(path) as f:
        return {
            (r["protocol"], r["level"], r["category"]): float(r["score"] or "nan") for r in csv.DictReader(f)
        }


@pytest.fixture()
def demo_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, err = run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    return tmp_path / "demo"


def test_demo_tables_match_recomputation(demo_run: Path):
    graphs = load_csv(catalog.PACKAGE_PROMPTS / "demo.csv")
    answers: dict[str, list] = {p.item_id: [None] * 4 for p in graphs.prompts}
    images = {(r["item_id"], r["index"]): r["sha256"] for r in read_jsonl(demo_run / "images.jsonl")}
    by_sha = {}
    for r in read_jsonl(demo_run / "eval" / "dummy" / "answers.jsonl"):
        by_sha.setdefault(r["image"], {})[r["question"]] = r["answer"]
    for (item_id, index), sha in images.items():
        answers[item_id][index] = by_sha[sha]
    expected = score(graphs.prompts, answers)
    table = read_scores(demo_run / "eval" / "dummy" / "scores.csv")
    assert len(images) == 48
    for name, result in expected.items():
        assert table[(name, "overall", "all")] == result.overall
        assert {c for (p, level, c) in table if p == name and level == "l2"} == set(result.l2)
    assert len([c for (p, level, c) in table if p == "strict" and level == "l2"]) == 13
    assert len([c for (p, level, c) in table if p == "strict" and level == "l1"]) == 5
    # the demo's first prompt loses its first row upstream and is dropped, as the official script does
    assert expected["official"].n == 11 and expected["strict"].n == 12


def test_second_pass_asks_nothing_and_generates_nothing(demo_run: Path, capsys):
    before = (demo_run / "eval" / "dummy" / "answers.jsonl").read_bytes()
    code, out, _ = run(["score", str(demo_run), "--judge", "dummy"], capsys)
    assert code == 0 and "0 question(s) asked, 588 from cache" in out
    assert (demo_run / "eval" / "dummy" / "answers.jsonl").read_bytes() == before
    code, out, _ = run(
        ["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(demo_run)], capsys
    )
    assert code == 0 and "0 image(s) made, 48 already done" in out


def test_other_settings_are_refused_not_mixed(demo_run: Path, capsys):
    code, _, err = run(
        ["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(demo_run), "--seed", "1"], capsys
    )
    assert code == 1 and "made with seed=0, now seed=1" in err
    code, _, err = run(["score", str(demo_run), "--judge", "dummy", "--judge-arg", "yes_rate=0.5"], capsys)
    assert code == 1 and "this evaluation was made with judge_args" in err


def test_regenerated_or_corrupt_image_is_reasked_or_reported(demo_run: Path, capsys):
    image = demo_run / "images" / "demo_fox_2.png"
    image.write_bytes(image.read_bytes()[:100])  # truncated
    code, out, err = run(["score", str(demo_run), "--judge", "dummy"], capsys)
    assert code == 0
    assert "images/demo_fox_2.png: unreadable image" in err
    assert "0 question(s) asked, 577 from cache" in out  # the 11 questions of the broken image: not asked
    summary = (demo_run / "eval" / "dummy" / "summary.json").read_text()
    assert '"demo_fox"' in summary and "unreadable" in summary
    table = read_scores(demo_run / "eval" / "dummy" / "scores.csv")
    assert table[("official", "overall", "all")] != table[("strict", "overall", "all")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["generate", "--backend", "dumy", "--prompts", "demo"],
            "unknown backend 'dumy'. Did you mean 'dummy'?",
        ),
        (
            ["generate", "--backend", "dummy", "--prompts", "demo", "--backend-arg", "steps"],
            "is not key=value",
        ),
        (
            ["generate", "--backend", "dummy", "--prompts", "demo", "--backend-arg", "widht=3"],
            "Did you mean 'width'?",
        ),
        (
            ["generate", "--backend", "dummy", "--prompts", "demo", "--backend-arg", "width=big"],
            "is not a number",
        ),
        (["generate", "--backend", "dummy", "--prompts", "dpg-bnech"], "Did you mean 'dpg-bench'?"),
        (["score", "nowhere"], "no manifest.json here"),
        (["lint", "missing.csv"], "neither a benchmark"),
    ],
)
def test_one_line_errors(tmp_path: Path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPGBENCH_CACHE", str(tmp_path / "cache"))
    code, _, err = run(args, capsys)
    assert code == 1 and message in err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


def test_dpg_bench_not_fetched_says_how(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DPGBENCH_CACHE", str(tmp_path))
    code, _, err = run(["generate", "--backend", "dummy"], capsys)
    assert code == 1 and "run `dpgbench data fetch dpg-bench`" in err


def answers_csv(
    tmp_path: Path, rows: list[str], header: str = "item_id,image_index,proposition_id,answer"
) -> Path:
    path = tmp_path / "answers.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_score_recorded_answers(tmp_path: Path, capsys):
    demo = str(catalog.PACKAGE_PROMPTS / "demo.csv")
    rows = [f"demo_fox,{i},{q},yes" for i in range(4) for q in range(1, 12)]
    rows[5] = "demo_fox,0,6,Yes."  # strict counts it, official does not
    rows.append("ghost,0,1,yes")
    rows.append("demo_fox,0,99,yes")
    rows.append("demo_kitchen,0,1,perhaps")
    out = tmp_path / "scored"
    code, stdout, err = run(
        ["score", "--questions", demo, "--answers", str(answers_csv(tmp_path, rows)), "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "2 answer row(s) ignored" in err and "answers.csv:46: unknown item_id 'ghost'" in err
    assert "1 answer(s) are neither yes nor no" in err and "'perhaps'" in err
    with open(out / "prompt_scores.csv") as f:
        prompt_scores = {(r["protocol"], r["item_id"]): float(r["score"]) for r in csv.DictReader(f)}
    assert prompt_scores[("strict", "demo_fox")] == 100.0
    # official: question 6 ("Yes.") fails on image 0, which also zeroes its child 7 and 9 ... as upstream would
    assert prompt_scores[("official", "demo_fox")] < 100.0
    assert prompt_scores[("strict", "demo_kitchen")] == 0.0


def test_score_dsg_release_layout(shared_dir: Path, tmp_path: Path, capsys):
    header = "dsg_prompt_split,qg_model,t2i_model,item_id,question,question_id,dependency_id,answer"
    rows = [
        "tifa160,dsg,sd1dot5,coco_62896,Is there a light?,1,0,yes",
        "tifa160,dsg,sd1dot5,coco_62896,Is there a signpost?,2,0,no",
        "tifa160,dsg,sd2dot1,coco_62896,Is there a light?,1,0,no",
    ]
    path = answers_csv(tmp_path, rows, header)
    tifa = str(shared_dir / "dsg" / "tifa160-dev-anns.csv")
    code, _, err = run(
        ["score", "--questions", tifa, "--answers", str(path), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "answers.csv:4: a second answer" in err and "--where t2i_model=NAME" in err
    args = [
        "score",
        "--questions",
        tifa,
        "--answers",
        str(path),
        "--out",
        str(tmp_path / "o"),
        "--where",
        "t2i_model=sd1dot5",
    ]
    code, _, err = run(args, capsys)
    assert code == 0, err


def test_core_never_imports_torch(tmp_path: Path):
    code = (
        "import sys\n"
        "from dpgbench.cli import main\n"
        "for args in (['--help'], ['demo', '--out', sys.argv[1]], ['ls', 'backends'], ['ls', 'judges']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (args, exc.code)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'modelscope') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.fixture()
def file_server(tmp_path: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_verifies_the_git_blob_id(tmp_path: Path, monkeypatch, capsys, file_server):
    monkeypatch.setenv("DPGBENCH_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "dpg_bench.csv"
    fake.write_bytes((catalog.PACKAGE_PROMPTS / "demo.csv").read_bytes())
    code, _, err = run(["data", "fetch", "dpg-bench", "--url", f"{file_server}/dpg_bench.csv"], capsys)
    assert code == 1 and "is not the official 98457fc9901943f51ff9a30367250fc292533bed" in err
    assert not (tmp_path / "cache" / "dpg_bench.csv").exists()
    # the same bytes are accepted when they are what is pinned (git hash-object of the file)
    blob = subprocess.run(["git", "hash-object", str(fake)], capture_output=True, text=True).stdout.strip()
    assert blob == catalog.git_blob_id(fake)
    pinned = catalog.Benchmark("dpg-bench", "dpg_bench.csv", "http://unused", git_blob=blob)
    monkeypatch.setitem(catalog.BENCHMARKS, "dpg-bench", pinned)
    code, out, err = run(["data", "fetch", "dpg-bench", "--url", f"{file_server}/dpg_bench.csv"], capsys)
    assert code == 0 and "12 prompts, 147 questions" in out, err
    code, out, err = run(["data", "fetch", "dpg-bench", "--csv", str(fake)], capsys)
    assert code == 0, err


def test_fetch_offline_message(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DPGBENCH_CACHE", str(tmp_path))
    code, _, err = run(["data", "fetch", "dsg-1k", "--url", "http://127.0.0.1:9/nothing.csv"], capsys)
    assert code == 1 and "could not download" in err and "--csv PATH" in err


def test_ls_verbose_shows_defaults(capsys):
    code, out, _ = run(["ls", "backends", "--verbose"], capsys)
    assert code == 0 and "width (int) = 64" in out


def test_regenerated_image_invalidates_only_its_answers(demo_run: Path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(demo_run / "images" / "demo_cafe_1.png")
    code, out, _ = run(["score", str(demo_run), "--judge", "dummy"], capsys)
    assert code == 0 and "12 question(s) asked, 576 from cache" in out


def test_damaged_image_is_remade_on_resume(demo_run: Path, capsys):
    image = demo_run / "images" / "demo_beach_3.png"
    original = image.read_bytes()
    image.write_bytes(original[:50])  # e.g. a power cut before the unsynced PNG reached the disk
    code, out, _ = run(
        ["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(demo_run)], capsys
    )
    assert code == 0 and "1 image(s) made, 47 already done" in out
    assert image.read_bytes() == original  # same seed, same pixels, same bytes


class RunBreakingBackend:
    """Fails the whole run on its second prompt (as a revoked API key would)."""

    Config = DummyConfig

    def __init__(self, config):
        self.inner, self.calls = DummyBackend(config), 0

    def generate(self, prompt, seeds):
        self.calls += 1
        if self.calls == 2:
            raise DpgBenchError("the API refused the key: set OPENAI_API_KEY")
        return self.inner.generate(prompt, seeds)

    def info(self):
        return {"name": "breaking"}


def test_run_level_error_stops_instead_of_failing_every_image(tmp_path: Path, monkeypatch, capsys):
    from dpgbench.backends import BACKENDS
    from dpgbench.registry import Entry

    monkeypatch.setitem(BACKENDS, "breaking", Entry(f"{__name__}:RunBreakingBackend", "", "test"))
    out = tmp_path / "run"
    code, _, err = run(["generate", "--backend", "breaking", "--prompts", "demo", "--out", str(out)], capsys)
    assert code == 1 and "refused the key" in err
    records = read_jsonl(out / "images.jsonl")
    assert len(records) == 4 and all(r["status"] == "ok" and r["batch"] == 4 for r in records)


def test_demo_on_tiny_diffusers(tmp_path: Path, capsys):
    pytest.importorskip("diffusers")
    code, out, err = run(["demo", "--tiny-diffusers", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    manifest = (tmp_path / "demo" / "manifest.json").read_text()
    assert '"backend": "sd15"' in manifest and "StableDiffusionPipeline" in manifest
    assert len(read_jsonl(tmp_path / "demo" / "images.jsonl")) == 48
    assert (tmp_path / "demo" / "eval" / "dummy" / "scores.csv").exists()


def test_import_folder_and_export_grids_commands(demo_run: Path, tmp_path: Path, capsys):
    grids = tmp_path / "grids"
    code, out, _ = run(["export-grids", str(demo_run), "--out", str(grids)], capsys)
    assert code == 0 and "12 grid(s) written" in out
    (grids / "notes.txt").write_text("not an image")
    demo = str(catalog.PACKAGE_PROMPTS / "demo.csv")
    args = [
        "import-folder",
        str(grids),
        "--out",
        str(tmp_path / "imported"),
        "--prompts",
        demo,
        "--grid-tile",
        "64",
    ]
    code, out, err = run(args, capsys)
    assert code == 0 and "48 image(s) imported" in out and "notes.txt" in err
    code, out, _ = run(["score", str(tmp_path / "imported"), "--judge", "dummy"], capsys)
    assert code == 0
    # same pixels as the original run, so the dummy judge gives the same scores
    assert read_scores(tmp_path / "imported" / "eval" / "dummy" / "scores.csv") == read_scores(
        demo_run / "eval" / "dummy" / "scores.csv"
    )


def test_ranks_split_the_work_and_readers_merge(demo_run: Path, tmp_path: Path, monkeypatch, capsys):
    """Two ranks (as torchrun sets RANK/WORLD_SIZE) make and judge the same images as one process."""
    out = tmp_path / "ranked"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, _, err = run(["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(out)], capsys)
        assert code == 0, err
    assert sorted(p.name for p in out.glob("images*.jsonl")) == ["images.rank0.jsonl", "images.rank1.jsonl"]
    assert len(read_jsonl(out / "images.rank0.jsonl")) == len(read_jsonl(out / "images.rank1.jsonl")) == 24
    outputs = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        code, stdout, err = run(["score", str(out), "--judge", "dummy"], capsys)
        assert code == 0, err
        outputs.append(stdout)
    assert "not all answers are in yet" in outputs[0] and "DPG-Bench score" in outputs[1]
    assert read_scores(out / "eval" / "dummy" / "scores.csv") == read_scores(
        demo_run / "eval" / "dummy" / "scores.csv"
    )


def test_soft_scores_are_recorded_and_averaged(demo_run: Path, capsys):
    import json

    code, out, err = run(
        ["score", str(demo_run), "--judge", "dummy", "--label", "soft", "--soft-scores"], capsys
    )
    assert code == 0, err
    assert "soft score (mean P(yes), no dependencies)" in out
    records = read_jsonl(demo_run / "eval" / "soft" / "answers.jsonl")
    assert len(records) == 588 and all(0 <= r["p_yes"] <= 1 for r in records)
    # the same answers as without soft scores, so the same tables
    assert read_scores(demo_run / "eval" / "soft" / "scores.csv") == read_scores(
        demo_run / "eval" / "dummy" / "scores.csv"
    )
    # hand recomputation: per image the mean P(yes) of its questions, per prompt the mean of its images
    per_image: dict[tuple[str, int], list[float]] = {}
    for r in records:
        per_image.setdefault((r["item_id"], r["index"]), []).append(r["p_yes"])
    per_prompt: dict[str, list[float]] = {}
    for (item_id, _), values in per_image.items():
        per_prompt.setdefault(item_id, []).append(sum(values) / len(values))
    expected = {k: sum(v) / len(v) * 100 for k, v in per_prompt.items()}
    soft = json.loads((demo_run / "eval" / "soft" / "summary.json").read_text())["soft_score"]
    assert soft["n"] == 12 and soft["prompts"] == pytest.approx(expected)
    assert soft["overall"] == pytest.approx(sum(expected.values()) / 12)
