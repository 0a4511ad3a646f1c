"""Scale of the report commands: a leaderboard over 50 runs x 1,065 prompts (budget 5 s) and an HTML report
for 1,065 prompts x 4 images (budget 60 s, 100 MB).

Builds synthetic run folders first: a DPG-Bench-sized question file (the 1,065 official prompt texts from
../shared/dpg_bench when present; 16 questions over the 13 level-2 categories per prompt), one real run
made by the dummy backend and judged by the dummy judge, and 50 scored runs whose answers are drawn at
random (their score tables are what a leaderboard reads). Each figure is printed with a ratio against a
baseline measured in the same process: the raw CSV read of the same tables, and reading + hashing every
image file once.

    python benchmarks/report_scale.py [--runs 50] [--prompts 1065] [--size 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dpgbench import registry
from dpgbench.answers import write_score_tables
from dpgbench.backends import BACKENDS
from dpgbench.data import Prompt, Question, load_csv, save_graphs
from dpgbench.evaluate import EvaluateConfig, evaluate, write_eval_manifest
from dpgbench.generate import GenerateConfig, generate, write_manifest
from dpgbench.html_report import ReportConfig, build_report
from dpgbench.judges import JUDGES
from dpgbench.leaderboard import leaderboard, to_csv
from dpgbench.runs import RunPaths, write_json
from dpgbench.scored import load_detail, load_many, load_scored
from dpgbench.scoring import score

SHARED_PROMPTS = Path(__file__).resolve().parents[1].parent / "shared" / "dpg_bench" / "prompts"

# (tuple, question, parent offsets) for one prompt: entities first, then what depends on them.
TEMPLATE = [
    ("entity - whole (e1)", "Is there a {0}?", ()),
    ("entity - whole (e2)", "Is there a {1}?", ()),
    ("entity - whole (e3)", "Is there a {2}?", ()),
    ("attribute - color (e1, red)", "Is the {0} red?", (1,)),
    ("attribute - shape (e2, round)", "Is the {1} round?", (2,)),
    ("attribute - texture (e3, wooden)", "Is the {2} wooden?", (3,)),
    ("attribute - size (e1, large)", "Is the {0} large?", (1,)),
    ("attribute - type (e2, antique)", "Is the {1} antique?", (2,)),
    ("entity - part (e1, handle)", "Does the {0} have a handle?", (1,)),
    ("entity - state (e3, open)", "Is the {2} open?", (3,)),
    ("relation - spatial (e1, e2, on)", "Is the {0} on the {1}?", (1, 2)),
    ("relation - non-spatial (e3, e2, reflects)", "Does the {2} reflect the {1}?", (3, 2)),
    ("other - count (e1, ==2)", "Are there two {0}s?", (1,)),
    ("other - text (e3, 'OPEN')", "Does the {2} say 'OPEN'?", (3,)),
    ("global - (oil painting)", "Is this an oil painting?", ()),
    ("attribute - color (e2, blue)", "Is the {1} blue?", (2,)),
]
NOUNS = ["lamp", "table", "door", "vase", "clock", "chair", "book", "cup", "window", "bench", "kettle", "box"]


def question_file(path: Path, n_prompts: int) -> Path:
    texts = (
        [p.read_text(encoding="utf-8").strip() for p in sorted(SHARED_PROMPTS.glob("*.txt"))]
        if SHARED_PROMPTS.is_dir()
        else []
    )
    prompts = []
    for k in range(n_prompts):
        nouns = [NOUNS[(k + j * 5) % len(NOUNS)] for j in range(3)]
        text = (
            texts[k % len(texts)]
            if texts
            else f"A {nouns[0]}, a {nouns[1]} and a {nouns[2]} in a room, no. {k}."
        )
        questions = [
            Question(i + 1, q.format(*nouns), t, tuple(parents) or (0,))
            for i, (t, q, parents) in enumerate(TEMPLATE)
        ]
        prompts.append(Prompt(f"bench_{k:04d}", text, questions))
    save_graphs(prompts, path)
    return path


def real_run(root: Path, questions: Path, size: int) -> tuple[Path, float]:
    """Images by the dummy backend, answers by the dummy judge: a complete run folder."""
    graphs = load_csv(questions)
    config = GenerateConfig("dummy", {"width": str(size), "height": str(size)}, str(questions))
    paths = RunPaths(root)
    backend = registry.create(BACKENDS, "dummy", "backend", config.backend_args)
    write_manifest(paths, config, graphs.sha256, [p.item_id for p in graphs.prompts], backend.info())
    start = time.perf_counter()
    generate(paths, config, graphs.prompts, backend)
    eval_config = EvaluateConfig("dummy", {}, str(questions))
    judge = registry.create(JUDGES, "dummy", "judge", {})
    write_eval_manifest(paths.eval_dir("dummy"), eval_config, graphs, judge.info())
    summary = evaluate(paths, eval_config, graphs, judge)
    assert summary.complete
    return root, time.perf_counter() - start


def score_only_runs(template: Path, root: Path, questions: Path, n_runs: int) -> list[Path]:
    """Runs with the template's manifests and random answers (yes-rate varies by run), scored for real."""
    graphs = load_csv(questions)
    rng = random.Random(0)
    runs = []
    for r in range(n_runs):
        run = root / f"run_{r:02d}"
        (run / "eval" / "dummy").mkdir(parents=True)
        manifest = json.loads((template / "manifest.json").read_text())
        manifest["backend"]["model"] = f"synthetic checkpoint {r}"
        write_json(run / "manifest.json", manifest)
        shutil.copy(template / "eval" / "dummy" / "manifest.json", run / "eval" / "dummy" / "manifest.json")
        yes = 0.55 + 0.4 * r / max(1, n_runs - 1)
        answers = {
            p.item_id: [
                {q.question: "yes" if rng.random() < yes else "no" for q in p.questions} for _ in range(4)
            ]
            for p in graphs.prompts
        }
        results = score(graphs.prompts, answers)
        write_score_tables(run / "eval" / "dummy", results)
        write_json(run / "eval" / "dummy" / "summary.json", {"problems": [], "not_in_questions": []})
        runs.append(run)
    return runs


def raw_read(runs: list[Path]) -> float:
    """The floor: parse the very files a leaderboard reads (two manifests, the summary, scores.csv)."""
    start = time.perf_counter()
    for run in runs:
        for name in ("manifest.json", "eval/dummy/manifest.json", "eval/dummy/summary.json"):
            json.loads((run / name).read_text(encoding="utf-8"))
        with open(run / "eval" / "dummy" / "scores.csv", newline="") as f:
            for _ in csv.DictReader(f):
                pass
    return time.perf_counter() - start


def hash_images(run: Path) -> float:
    start = time.perf_counter()
    for path in sorted((run / "images").glob("*.png")):
        hashlib.sha256(path.read_bytes()).hexdigest()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=1065)
    # 512 px is SD 1.5's size; thumbnails cost about the decoding of each PNG, so 1024 px takes ~4x as long.
    parser.add_argument(
        "--size", type=int, default=512, help="image side in pixels (the dummy backend draws)"
    )
    parser.add_argument("--keep", type=Path, help="build the folders here and keep them")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="dpgbench-report-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        questions = question_file(root / "questions.csv", args.prompts)
        run, seconds = real_run(root / "real", questions, args.size)
        print(
            f"setup: {args.prompts} prompts x 4 images of {args.size}px generated and judged in {seconds:.1f} s"
        )
        runs = score_only_runs(run, root / "board", questions, args.runs)

        # 1. Leaderboard over N runs (load every table, build rows, write CSV), against the raw CSV read.
        baseline = raw_read(runs)
        start = time.perf_counter()
        columns, rows = leaderboard(load_many([str(r) for r in runs]))
        (root / "leaderboard.csv").write_text(to_csv(columns, rows))
        board = time.perf_counter() - start
        verdict = "OK" if board < 5 else "OVER BUDGET"
        print(
            f"leaderboard: {len(rows)} runs x {args.prompts} prompts in {board:.3f} s (budget 5 s: {verdict}); "
            f"{board / baseline:.2f}x the raw read of the same CSV tables ({baseline:.3f} s)"
        )

        # 2. HTML report of one run: per-question detail, thumbnails, plots, page. First with an empty
        # thumbnail cache (every image decoded), then again as the next report of the same run would be.
        baseline = hash_images(run)
        verdict = "OK"
        for attempt in ("first", "again"):
            start = time.perf_counter()
            detail = load_detail(load_scored(str(run))[0])
            loaded = time.perf_counter() - start
            summary = build_report([detail], root / "report.html", ReportConfig())
            total = time.perf_counter() - start
            mb = summary.bytes / 1e6
            ok = "OK" if total < 60 and mb < 100 else "OVER BUDGET"
            verdict = ok if attempt == "first" else verdict
            print(
                f"report ({attempt}, {summary.thumbnails_reused} thumbnails from the cache): {summary.prompts} "
                f"prompts x 4 images of {args.size}px ({summary.images} thumbnails) in {total:.1f} s "
                f"(detail {loaded:.1f} s), {mb:.1f} MB (budget 60 s, 100 MB: {ok}); {total / baseline:.1f}x "
                f"reading + hashing every image once ({baseline:.2f} s)"
            )
        return 0 if verdict == "OK" and board < 5 else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
