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
from cli_runner import invoke

from dpgbench import catalog
from dpgbench.backends.dummy import DummyBackend, DummyConfig
from dpgbench.data import load_csv
from dpgbench.errors import DpgBenchError
from dpgbench.judges.dummy import DummyJudge, DummyJudgeConfig
from dpgbench.runs import read_jsonl
from dpgbench.scoring import answer_stats, score

run = invoke


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
    before = {p: p.read_bytes() for p in demo_run.rglob("*") if p.is_file()}
    code, _, err = run(["score", str(demo_run), "--judge", "dummy", "--judge-arg", "yes_rate=0.5"], capsys)
    assert code == 1 and "this evaluation was made with judge_args" in err and "add --label NAME" in err
    edited = demo_run.parent / "edited.csv"
    edited.write_text((catalog.PACKAGE_PROMPTS / "demo.csv").read_text().replace("Is there a fox?", "A fox?"))
    code, _, err = run(["score", str(demo_run), "--judge", "dummy", "--questions", str(edited)], capsys)
    assert code == 1 and "made with questions_sha256=" in err
    assert {p: p.read_bytes() for p in demo_run.rglob("*") if p.is_file()} == before  # nothing was touched


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
        (
            ["generate", "--backend", "dummy", "--prompts", "demo", "--images-per-prompt", "0"],
            "use 1 or more",
        ),
        (["generate", "--backend", "dummy", "--prompts", "demo", "--limit", "0"], "--limit 0: use 1 or more"),
        (["generate", "--backend", "dummy", "--prompts", "demo", "--shard", "2/2"], "need 0 <= i < n"),
        (["generate", "--from", "nowhere/manifest.json"], "nowhere/manifest.json: no such file"),
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


# Answers in the DSG release layout: two models answered one TIFA-160 prompt.
DSG_RELEASE_HEADER = "dsg_prompt_split,qg_model,t2i_model,item_id,question,question_id,dependency_id,answer"
DSG_RELEASE_ROWS = [
    "tifa160,dsg,sd1dot5,coco_62896,Is there a light?,1,0,yes",
    "tifa160,dsg,sd1dot5,coco_62896,Is there a signpost?,2,0,no",
    "tifa160,dsg,sd2dot1,coco_62896,Is there a light?,1,0,no",
]


def test_score_dsg_release_layout(shared_dir: Path, tmp_path: Path, capsys):
    path = answers_csv(tmp_path, DSG_RELEASE_ROWS, DSG_RELEASE_HEADER)
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
    """demo, lint, score (a run and --answers), data, ls and every --help, in a fresh interpreter."""
    answers = answers_csv(tmp_path, ["demo_fox,0,1,yes", "demo_fox,0,2,no"])
    code = (
        "import sys\n"
        "from dpgbench.cli import main\n"
        "d, answers, out = sys.argv[1:]\n"
        "commands = [['--help'], ['demo', '--out', d], ['score', d, '--judge', 'dummy'], ['lint', 'demo'],\n"
        "    ['score', '--questions', 'demo', '--answers', answers, '--out', out], ['data', 'list'],\n"
        "    ['ls', 'backends', '-v'], ['ls', 'judges', '-v'], ['ls', 'protocols']]\n"
        "commands += [[*c, '--help'] for c in (['generate'], ['score'], ['lint'], ['data', 'fetch'], ['demo'])]\n"
        "for args in commands:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (args, exc.code)\n"
        "heavy = ('torch', 'torchvision', 'diffusers', 'transformers', 'accelerate', 'modelscope', 'timm')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "d"), str(answers), str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert (tmp_path / "o" / "scores.csv").exists() and (
        tmp_path / "d" / "eval" / "dummy" / "scores.csv"
    ).exists()


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
    for text in (
        "scheduler (str) = ''  diffusers scheduler class to use instead of the checkpoint's, e.g. "
        "DPMSolverMultistepScheduler (empty = the checkpoint's PNDMScheduler)",
        "scheduler (str) = 'DPMSolverMultistepScheduler'",
        "guidance (float | None) = 3.0",
        "max_sequence_length (int) = 120",
        "dtype (str) = 'auto'  auto (fp16 on GPU, fp32 on CPU)",
    ):
        assert text in out, text


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


# ------------------------------------------------------------------------------------------------------
# Bad input through the real commands: one line naming file and line, exit 1, never a traceback.

HEADER = "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language"
GOOD_QUESTIONS = (
    HEADER + "\np,t,k,1,0,entity,whole,entity - whole (x),Is there x?\n"
    'p,t,k,2,1,attribute,color,"attribute - color (x, red)",Is x red?\n'
)
BAD_QUESTION_FILES = {
    "missing columns": (b"item_id,text\nx,y\n", "q.csv:1: missing column(s) keywords, proposition_id"),
    "non-integer id": (
        (HEADER + "\np,t,k,one,0,entity,whole,entity - whole (x),Is there x?\n").encode(),
        "q.csv:2: proposition_id 'one' is not an integer",
    ),
    "empty file": (b"", "q.csv:1: empty file; expected a header row"),
    "not UTF-8": (
        HEADER.encode() + b"\np,caf\xe9,k,1,0,e,w,t (x),Is x?\n",
        "q.csv:2: not UTF-8 (byte 0xe9); re-save the file as UTF-8",
    ),
    "short row": ((HEADER + "\np,t,k,1,0\n").encode(), "q.csv:2: 5 fields, the header has 9"),
}
BAD_ANSWER_FILES = {
    "missing columns": (
        b"item_id,image_index,answer\np,0,yes\n",
        "a.csv:1: columns item_id,image_index,answer",
    ),
    "non-integer id": (
        b"item_id,image_index,proposition_id,answer\np,0,one,yes\n",
        "a.csv:2: proposition_id 'one' is not an integer",
    ),
    "non-integer image": (
        b"item_id,image_index,proposition_id,answer\np,first,1,yes\n",
        "a.csv:2: image_index 'first' is not an integer",
    ),
    "image out of range": (
        b"item_id,image_index,proposition_id,answer\np,4,1,yes\n",
        "a.csv:2: image_index 4 is outside 0-3",
    ),
    "empty file": (b"", "a.csv:1: empty file"),
    "header only": (
        b"item_id,image_index,proposition_id,answer\n",
        "a.csv:2: no answer rows after the header",
    ),
    "not UTF-8": (
        b"item_id,image_index,proposition_id,answer\np,0,1,yes\np,0,2,s\xed\n",
        "a.csv:3: not UTF-8 (byte 0xed)",
    ),
    "two answers": (
        b"item_id,image_index,proposition_id,answer\np,0,1,yes\np,0,1,no\n",
        "a.csv:3: a second answer for p image 0 question 1 (first on line 2)",
    ),
}


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 1, err
    assert message in err, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("case", list(BAD_QUESTION_FILES))
def test_bad_question_file_in_lint_and_score(tmp_path: Path, capsys, case: str):
    content, message = BAD_QUESTION_FILES[case]
    questions = tmp_path / "q.csv"
    questions.write_bytes(content)
    answers = answers_csv(tmp_path, ["p,0,1,yes"])
    assert_one_line_error(*run(["lint", str(questions)], capsys)[::2], message)
    code, _, err = run(
        ["score", "--questions", str(questions), "--answers", str(answers), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", list(BAD_ANSWER_FILES))
def test_bad_answer_file_in_score(tmp_path: Path, capsys, case: str):
    content, message = BAD_ANSWER_FILES[case]
    questions = tmp_path / "q.csv"
    questions.write_text(GOOD_QUESTIONS)
    answers = tmp_path / "a.csv"
    answers.write_bytes(content)
    code, _, err = run(
        ["score", "--questions", str(questions), "--answers", str(answers), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert_one_line_error(code, err, message)


def test_recorded_answers_count_everything_ignored(tmp_path: Path, capsys):
    import json

    questions = tmp_path / "q.csv"
    questions.write_text(GOOD_QUESTIONS)
    rows = ["p,0,1,yes", "p,0,2,maybe", "ghost,0,1,yes", "p,1,9,yes", "p,1,1,No", "p,2,1,[bold]"]
    code, out, err = run(
        [
            "score",
            "--questions",
            str(questions),
            "--answers",
            str(answers_csv(tmp_path, rows)),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    assert (
        "answers.csv: 4 answer(s) used, 2 ignored, 2 question(s) of answered images without an answer" in out
    )
    assert "2 answer row(s) ignored; first: " in err and "answers.csv:4: unknown item_id 'ghost'" in err
    assert "answers.csv:5: p has no question 9" in err
    # rich markup in user text is printed as is, not swallowed
    assert "2 answer(s) are neither yes nor no" in err and "answers.csv:7: answer '[bold]'" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (summary["rows_used"], summary["rows_ignored"], summary["not_yes_no"], summary["unanswered"]) == (
        4,
        2,
        2,
        2,
    )
    # image 0: [1, 0] = 1/2; image 1 ("No"): 0; image 2 ("[bold]"): 0; image 3 missing: 0
    with open(tmp_path / "o" / "prompt_scores.csv") as f:
        scores = {(r["protocol"], r["item_id"]): float(r["score"]) for r in csv.DictReader(f)}
    assert scores == {("strict", "p"): 12.5, ("dsg", "p"): 12.5}  # official: no complete grid


def test_where_counts_the_rows_it_leaves_out(shared_dir: Path, tmp_path: Path, capsys):
    path = answers_csv(tmp_path, DSG_RELEASE_ROWS, DSG_RELEASE_HEADER)
    tifa = str(shared_dir / "dsg" / "tifa160-dev-anns.csv")
    args = ["score", "--questions", tifa, "--answers", str(path), "--out", str(tmp_path / "o")]
    code, out, err = run([*args, "--where", "t2i_model=sd2dot1"], capsys)
    assert code == 0, err
    assert "1 answer(s) used, 0 ignored, 2 not selected by --where" in out
    code, _, err = run([*args, "--where", "t2i_model=sd3"], capsys)
    assert_one_line_error(
        code,
        err,
        "--where t2i_model=sd3 matches none of its 3 rows; t2i_model here is one of: sd1dot5, sd2dot1",
    )


def test_answers_need_question_graphs(shared_dir: Path, tmp_path: Path, capsys):
    prompts = str(shared_dir / "dpg_bench" / "prompts")
    code, _, err = run(
        [
            "score",
            "--questions",
            prompts,
            "--answers",
            str(answers_csv(tmp_path, ["0,0,1,yes"])),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert_one_line_error(code, err, "has prompts but no questions")


def test_lint_goes_on_past_a_file_it_cannot_read(tmp_path: Path, capsys):
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"")
    good = tmp_path / "good.csv"
    good.write_text(GOOD_QUESTIONS + "p,t,k,3,7,entity,whole,entity - whole (y),Is there y?\n")
    code, out, err = run(["lint", str(broken), str(good)], capsys)
    assert code == 1
    assert "broken.csv:1: empty file" in err and "Traceback" not in err
    # the finding keeps its [code] (rich must not read it as markup)
    assert "good.csv:4: error: p: question 3: parent 7 does not exist [dangling-parent]" in out
    assert "good.csv: 1 prompts, 3 questions: 1 error(s)" in out


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DPGBENCH_DEBUG", "1")
    code, _, err = run(["lint", str(tmp_path / "missing.csv")], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "catalog.py" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


# ------------------------------------------------------------------------------------------------------
# Resume: torn log lines, a judge that is never asked twice, a package missing at construction.


class CountingJudge:
    """The dummy judge, counting constructions and questions across instances."""

    Config = DummyJudgeConfig
    made = 0
    questions = 0

    def __init__(self, config):
        CountingJudge.made += 1
        self.inner = DummyJudge(config)

    def ask(self, image, questions):
        CountingJudge.questions += len(questions)
        return self.inner.ask(image, questions)

    def info(self):
        return {**self.inner.info(), "name": "counting"}


def test_second_score_asks_the_judge_nothing(tmp_path: Path, monkeypatch, capsys):
    from dpgbench.judges import JUDGES
    from dpgbench.registry import Entry

    monkeypatch.setitem(JUDGES, "counting", Entry(f"{__name__}:CountingJudge", "", "test"))
    monkeypatch.setattr(CountingJudge, "made", 0)
    monkeypatch.setattr(CountingJudge, "questions", 0)
    out = tmp_path / "run"
    assert run(["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(out)], capsys)[0] == 0
    code, first, err = run(["score", str(out), "--judge", "counting"], capsys)
    assert code == 0, err
    assert (CountingJudge.made, CountingJudge.questions) == (1, 588)
    tables = (out / "eval" / "counting" / "scores.csv").read_bytes()
    code, second, err = run(["score", str(out), "--judge", "counting"], capsys)
    assert code == 0, err
    assert (CountingJudge.made, CountingJudge.questions) == (1, 588)  # not even loaded again
    assert "0 question(s) asked, 588 from cache" in second
    assert (out / "eval" / "counting" / "scores.csv").read_bytes() == tables


def test_torn_last_lines_of_both_logs(demo_run: Path, monkeypatch, capsys):
    from dpgbench.judges import JUDGES
    from dpgbench.registry import Entry

    tables = (demo_run / "eval" / "dummy" / "scores.csv").read_bytes()
    answers = demo_run / "eval" / "dummy" / "answers.jsonl"
    images = demo_run / "images.jsonl"
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text("".join(lines[:-1]) + lines[-1][:40])  # killed while writing the last answer
    image_lines = images.read_text().splitlines(keepends=True)
    images.write_text("".join(image_lines[:-1]) + image_lines[-1][:30])  # and the last image record
    code, out, err = run(
        ["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(demo_run)], capsys
    )
    assert code == 0 and "1 image(s) made, 47 already done" in out, err
    assert images.read_text().count("\n") == 48 and read_jsonl(images)[-1]["index"] == 3
    monkeypatch.setitem(JUDGES, "dummy", Entry(f"{__name__}:CountingJudge", "", "test"))
    monkeypatch.setattr(CountingJudge, "questions", 0)
    code, out, err = run(["score", str(demo_run), "--judge", "dummy"], capsys)
    assert code == 0 and "1 question(s) asked, 587 from cache" in out, err
    assert CountingJudge.questions == 1
    assert len(read_jsonl(answers)) == 588 and answers.read_text().count("\n") == 588  # the fragment is gone
    assert (demo_run / "eval" / "dummy" / "scores.csv").read_bytes() == tables


class NeedsMissingPackage:
    Config = DummyConfig

    def __init__(self, config):
        import dpgbench_not_installed_anywhere  # noqa: F401  (as backends import torch lazily)


def test_package_missing_at_construction_is_one_line_with_the_extra(tmp_path: Path, monkeypatch, capsys):
    from dpgbench.backends import BACKENDS
    from dpgbench.registry import Entry

    monkeypatch.setitem(BACKENDS, "needs", Entry(f"{__name__}:NeedsMissingPackage", "generate", "test"))
    code, _, err = run(
        ["generate", "--backend", "needs", "--prompts", "demo", "--out", str(tmp_path / "r")], capsys
    )
    assert_one_line_error(
        code,
        err,
        "backend 'needs' needs a package that is not installed (dpgbench_not_installed_anywhere): "
        "pip install 'dpgbench[generate]'",
    )


def test_fetch_refuses_a_wrong_local_copy_by_its_name(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DPGBENCH_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "my_copy.csv"
    copy.write_text(GOOD_QUESTIONS)
    code, _, err = run(["data", "fetch", "dpg-bench", "--csv", str(copy)], capsys)
    assert_one_line_error(code, err, f"{copy}: git blob id ")
    assert "is not the official 98457fc9901943f51ff9a30367250fc292533bed" in err
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written is left behind


def test_answers_by_id_when_two_questions_share_a_text(tmp_path: Path, capsys):
    """Answer tables answer per id: two questions with one text keep their own answers (DSG-1k has 54
    prompts like this), and a repeated id is told apart by the question text when the table has it."""
    from dpgbench.answers import read_answer_table

    questions = tmp_path / "q.csv"
    questions.write_text(
        HEADER + "\n"
        "v,two chairs,chair,1,0,entity,whole,entity - whole (chair),Is there a chair?\n"
        "v,two chairs,chair,2,0,entity,whole,entity - whole (chair),Is there a chair?\n"
        'v,two chairs,chair,3,"1,2",relation,spatial,"relation - spatial (chair, chair, beside)",'
        "Is the chair beside the chair?\n"
        "d,a cat,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?\n"
        "d,a cat,cat,1,0,entity,whole,entity - whole (mat),Is there a mat?\n"
    )
    graphs = load_csv(questions)
    rows = ["v,0,1,yes", "v,0,2,no", "v,0,3,yes"] + [f"v,{i},{q},yes" for i in (1, 2, 3) for q in (1, 2, 3)]
    table = read_answer_table(answers_csv(tmp_path, rows), graphs)
    r = score(graphs.prompts, table.answers)
    # image 0: chair 1 yes, chair 2 no -> the relation falls: 1/3; images 1-3: 1 -> (1/3 + 3) / 4
    assert r["strict"].prompts["v"] == pytest.approx((1 / 3 + 3) / 4 * 100)
    assert r["dsg"].prompts["v"] == pytest.approx((1 / 3 + 3) / 4 * 100)
    # DSG layout with its question column: the repeated id 1 of "d" is matched by text, in any order
    header = "item_id,question,question_id,answer"
    path = answers_csv(tmp_path, ["d,Is there a mat?,1,no", "d,Is there a cat?,1,yes"], header)
    table = read_answer_table(path, graphs)
    assert r["strict"].n == 2 and table.answers["d"][0] == {
        "Is there a mat?": "no",
        (1, "Is there a mat?"): "no",
        "Is there a cat?": "yes",
        (1, "Is there a cat?"): "yes",
    }
    # without a text column the rows of a repeated id answer its questions in graph order; a third is refused
    path = answers_csv(tmp_path, ["d,0,1,yes", "d,0,1,no", "d,0,1,no"])
    with pytest.raises(DpgBenchError, match=r"answers.csv:4: a second answer for d image 0 question 1"):
        read_answer_table(path, graphs)
    table = read_answer_table(answers_csv(tmp_path, ["d,0,1,yes", "d,0,1,no"]), graphs)
    assert score(graphs.prompts, table.answers)["strict"].prompts["d"] == pytest.approx(50 / 4)


def test_answer_table_for_every_question_of_dsg1k(shared_dir: Path, tmp_path: Path):
    """One answer per question id and image for the real DSG-1k graphs: nothing refused or unanswered."""
    from dpgbench.answers import read_answer_table

    graphs = load_csv(shared_dir / "dsg" / "dsg-1k-anns.csv")
    rows = [
        f"{p.item_id},{i},{pid},{'yes' if (i + pid) % 3 else 'no'}"
        for p in graphs.prompts
        for i in range(4)
        for pid in dict.fromkeys(q.proposition_id for q in p.questions)
    ]
    table = read_answer_table(answers_csv(tmp_path, rows), graphs)
    assert table.rows == 32728 and not table.ignored
    results = score(graphs.prompts, table.answers)
    assert answer_stats(graphs.prompts, table.answers).unanswered == 0
    assert results["strict"].n == results["dsg"].n == 1060
    assert results["official"].n == 1058  # the first prompt loses row 0; one more has a dangling parent


def test_job_array_shards_times_ranks_reach_the_single_run(
    demo_run: Path, tmp_path: Path, monkeypatch, capsys
):
    """--shard i/3 under 2 ranks: 6 disjoint logs whose union is the single-process run, image for image."""
    out = tmp_path / "sharded"
    for index in range(3):
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            args = [
                "generate",
                "--backend",
                "dummy",
                "--prompts",
                "demo",
                "--out",
                str(out),
                "--shard",
                f"{index}/3",
            ]
            code, _, err = run(args, capsys)
            assert code == 0, err
    logs = sorted(p.name for p in out.glob("images*.jsonl"))
    assert logs == [f"images.rank{k}.jsonl" for k in range(6)]
    merged = [r for log in logs for r in read_jsonl(out / log)]
    single = read_jsonl(demo_run / "images.jsonl")
    assert len(merged) == len(single) == 48
    assert {(r["item_id"], r["index"]): r["sha256"] for r in merged} == {
        (r["item_id"], r["index"]): r["sha256"] for r in single
    }


def test_torchrun_ranks_split_the_prompts(demo_run: Path, tmp_path: Path):
    """The real launcher: `torchrun --nproc-per-node 2 -m dpgbench.cli generate ...` (RANK/WORLD_SIZE set by it)."""
    pytest.importorskip("torch")
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [
        "-m",
        "dpgbench.cli",
        "generate",
        "--backend",
        "dummy",
        "--prompts",
        "demo",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("24 image(s) made") == 2
    per_rank = [read_jsonl(out / f"images.rank{k}.jsonl") for k in (0, 1)]
    demo_items = [r["item_id"] for r in read_jsonl(demo_run / "images.jsonl")][::4]
    assert [r["item_id"] for r in per_rank[0]][::4] == demo_items[0::2]  # every other prompt
    assert {r["sha256"] for r in per_rank[0] + per_rank[1]} == {
        r["sha256"] for r in read_jsonl(demo_run / "images.jsonl")
    }


def test_import_with_nothing_usable_is_an_error(demo_run: Path, tmp_path: Path, capsys):
    grids = tmp_path / "grids"
    code, _, _ = run(["export-grids", str(demo_run), "--out", str(grids)], capsys)
    assert code == 0
    demo = str(catalog.PACKAGE_PROMPTS / "demo.csv")
    # Grids imported as if they were one file per image: every file is reported, then one error line.
    code, out, err = run(
        ["import-folder", str(grids), "--out", str(tmp_path / "x"), "--prompts", demo], capsys
    )
    assert code == 1
    assert "12 file(s) could not be used" in err and "import grids with grid_tile" in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "no usable image for the 12 prompts" in err


def test_run_and_answers_together_are_refused(demo_run: Path, tmp_path: Path, capsys):
    answers = answers_csv(tmp_path, ["demo_fox,0,1,yes"])
    args = [
        "score",
        str(demo_run),
        "--questions",
        "demo",
        "--answers",
        str(answers),
        "--out",
        str(tmp_path / "o"),
    ]
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "not both")
    assert not (tmp_path / "o").exists()


def test_progress_bar_and_end_summary(tmp_path: Path, capsys):
    code, out, err = run(
        ["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(tmp_path / "r")], capsys
    )
    assert code == 0
    bar = next(line for line in err.splitlines() if line.startswith("generate dummy"))
    assert "48/48" in bar and "images/s" in bar and "ETA" in bar, bar
    assert "48 image(s) made, 0 already done, 0 failed in" in out


def test_rate_and_eta_average_over_the_run_and_leave_out_resumed_work():
    """Images arrive 4 at a time (one batch), 10 s apart; 40 were already done: 0.4 images/s, not the
    thousands per second of a sliding window over one burst, and the ETA follows from it."""
    from rich.progress import Progress

    from dpgbench.terminal import RateColumn, RemainingColumn, average_speed

    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task_id = progress.add_task("generate", total=100, unit="images", skipped=0)
    progress.update(task_id, skipped=40)
    progress.advance(task_id, 40)
    for _ in range(3):
        now[0] += 10.0
        for _ in range(4):
            progress.advance(task_id, 1)
            now[0] += 0.001
    task = progress.tasks[0]
    assert average_speed(task) == pytest.approx(12 / 30.012)
    assert RateColumn().render(task).plain == "0.40 images/s"
    assert RemainingColumn().render(task).plain == "0:02:00"  # 48 left at 0.40 images/s


def test_progress_line_fits_an_80_column_terminal(monkeypatch):
    """The bar shrinks so the count and the rate with its unit stay whole on one line."""
    import io

    from rich.console import Console
    from rich.text import Text

    from dpgbench import terminal

    screen = io.StringIO()
    monkeypatch.setattr(terminal, "err_console", Console(file=screen, width=80, force_terminal=True))
    with terminal.progress_bar("judge mplug-large", 42600, "questions") as advance:
        advance(20000)
    lines = [
        Text.from_ansi(line).plain.rstrip() for line in screen.getvalue().replace("\r", "\n").split("\n")
    ]
    plain = [line for line in lines if line.strip()][-1]
    assert "20000/42600" in plain and "questions/s" in plain and "ETA" in plain
    assert len(plain) <= 80


def test_no_bar_when_there_is_nothing_to_do(monkeypatch):
    import io

    from rich.console import Console

    from dpgbench import terminal

    screen = io.StringIO()
    monkeypatch.setattr(terminal, "err_console", Console(file=screen, width=80, force_terminal=True))
    with terminal.progress_bar("judge dummy", 0, "questions") as advance:
        advance(0)
    assert screen.getvalue() == ""
