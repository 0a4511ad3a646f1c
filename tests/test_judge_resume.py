"""`dpgbench score` killed with SIGKILL mid-run resumes: the rerun asks only what was not logged, and the
tables equal those of a run that was never interrupted.

The judge is the dummy one slowed down (answers identical), so the kill lands mid-run without a model;
the CLI runs in a real subprocess, as a user's job would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpgbench.judges.dummy import DummyJudge

TESTS = Path(__file__).parent

# Registers the slow judge, then runs the real CLI (its exit code and output are the user's).
CLI = """
import sys
from dpgbench.judges import JUDGES
from dpgbench.registry import Entry
JUDGES["slow-dummy"] = Entry("test_judge_resume:SlowDummyJudge", "", "the dummy judge, 50 ms per image")
from dpgbench.cli import main
main(sys.argv[1:])
"""


class SlowDummyJudge(DummyJudge):
    def ask(self, image, questions):
        time.sleep(0.05)
        return super().ask(image, questions)

    def info(self):
        return {**super().info(), "name": "slow-dummy"}


def cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*args: str) -> str:
    process = cli(*args)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def test_score_resumes_after_sigkill(tmp_path: Path):
    run = tmp_path / "run"
    finish("generate", "--backend", "dummy", "--prompts", "demo", "--out", str(run))
    finish("score", str(run), "--judge", "dummy")  # the uninterrupted reference, in eval/dummy
    answers = run / "eval" / "slow-dummy" / "answers.jsonl"

    # 1. Kill -9 once a good part (but not all) of the 48 images' answers is on disk.
    process = cli("score", str(run), "--judge", "slow-dummy", "--images-per-call", "1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if answers.exists() and answers.read_bytes().count(b"\n") >= 150:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    logged = answers.read_bytes().count(b"\n")  # whole lines only; a torn last one is dropped on resume
    assert 150 <= logged < 588
    assert not (run / "eval" / "slow-dummy" / "scores.csv").exists()

    # 2. The same command again: asks only the rest, and scores as if nothing had happened.
    out = finish("score", str(run), "--judge", "slow-dummy", "--images-per-call", "1")
    asked, cached = map(int, re.search(r"(\d+) question\(s\) asked, (\d+) from cache", out).groups())
    assert (asked + cached, cached) == (588, logged)
    assert answers.read_bytes().count(b"\n") == 588
    for table in ("scores.csv", "prompt_scores.csv"):
        killed = (run / "eval" / "slow-dummy" / table).read_bytes()
        assert killed == (run / "eval" / "dummy" / table).read_bytes()


# -- shards running side by side (as torchrun's ranks do) --------------------------------------------


def sharded(run: Path, judge, index: int):
    from dpgbench.catalog import resolve
    from dpgbench.evaluate import EvaluateConfig, evaluate
    from dpgbench.runs import RunPaths

    config = EvaluateConfig("dummy", {}, "demo", images_per_call=1)
    return evaluate(RunPaths(run), config, resolve("demo"), judge, shard=(index, 2))


class RunsTheOtherShardMidway(DummyJudge):
    """Rank 0's judge: after its first image, rank 1 runs from start to end (it sees rank 0's log half full)."""

    def __init__(self, run: Path) -> None:
        from dpgbench.judges.dummy import DummyJudgeConfig

        super().__init__(DummyJudgeConfig())
        self.run, self.other = run, None

    def ask(self, image, questions):
        if self.other is None:
            self.other = sharded(self.run, DummyJudge(self.config), 1)
        return super().ask(image, questions)


def test_the_shard_that_ends_last_writes_the_tables(tmp_path: Path):
    run = tmp_path / "run"
    finish("generate", "--backend", "dummy", "--prompts", "demo", "--out", str(run))
    finish("score", str(run), "--judge", "dummy", "--label", "single")
    judge = RunsTheOtherShardMidway(run)
    first = sharded(run, judge, 0)
    assert not judge.other.complete  # began after rank 0, ended before it
    assert first.complete and first.asked + judge.other.asked == 588
    tables = run / "eval" / "dummy" / "scores.csv"
    assert tables.read_bytes() == (run / "eval" / "single" / "scores.csv").read_bytes()


def test_an_image_broken_in_another_shard_does_not_block_the_tables(tmp_path: Path):
    from dpgbench.judges.dummy import DummyJudgeConfig

    run = tmp_path / "run"
    finish("generate", "--backend", "dummy", "--prompts", "demo", "--out", str(run))
    broken = run / "images" / "demo_kitchen_2.png"  # prompt 1 of the demo: shard 1 of 2
    broken.write_bytes(broken.read_bytes()[:200])
    one = sharded(run, DummyJudge(DummyJudgeConfig()), 1)
    assert [p.file for p in one.problems] == ["images/demo_kitchen_2.png"] and not one.complete
    zero = sharded(run, DummyJudge(DummyJudgeConfig()), 0)
    assert zero.complete, zero.stats
    assert [(p.file, p.reason) for p in zero.problems] == [
        ("images/demo_kitchen_2.png", "unreadable image (image file is truncated)")
    ]
    assert zero.results["strict"].missing_images == [("demo_kitchen", 2)]


def test_truncated_image_fails_even_where_pillow_was_made_lenient(tmp_path: Path, monkeypatch):
    import numpy as np
    import pytest
    from PIL import Image, ImageFile

    from dpgbench.evaluate import load_image

    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as modelscope's OFA code leaves it
    assert Image.open(path).load() is not None  # Pillow itself now accepts the file
    with pytest.raises(ValueError, match="unreadable image"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
