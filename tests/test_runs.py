"""Run-folder plumbing: JSONL logs that survive a kill, atomic writes, refused mixed configs, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpgbench.errors import DpgBenchError
from dpgbench.generate import image_seed, select_prompts
from dpgbench.runs import JsonlLog, check_manifest, parse_shard, read_jsonl, write_csv, write_json


def test_torn_last_line_is_ignored_then_cut(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    with JsonlLog(path) as log:
        log.append([{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "b"')  # killed mid-write
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    with JsonlLog(path) as log:
        log.append([{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    assert path.read_text().count("\n") == 3


def test_corrupt_middle_line_is_an_error_with_its_line(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(DpgBenchError, match=r"log.jsonl:2: corrupt log line"):
        read_jsonl(path)


def test_manifest_refuses_other_settings(tmp_path: Path):
    path = tmp_path / "manifest.json"
    assert check_manifest(path, {"steps": 50}, "run") is False
    write_json(path, {"identity": {"steps": 50, "seed": 0}})
    assert check_manifest(path, {"steps": 50, "seed": 0}, "run") is True
    with pytest.raises(DpgBenchError, match=r"made with steps=50, now steps=30"):
        check_manifest(path, {"steps": 30, "seed": 0}, "run")


def test_atomic_writes_leave_no_temp_files(tmp_path: Path):
    write_json(tmp_path / "m.json", {"x": [1, 2]})
    write_csv(tmp_path / "t.csv", [{"a": 0.1 + 0.2, "b": float("nan")}], ["a", "b"])
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "t.csv").read_text() == "a,b\n0.30000000000000004,\n"  # repr keeps every bit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.csv"]


def test_seeds_and_shards():
    assert image_seed(0, "partiprompts97", 0) == image_seed(0, "partiprompts97", 0)
    seeds = {image_seed(0, item, i) for item in ("a", "b") for i in range(4)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)
    items = list(range(10))
    shards = [select_prompts(items, None, (i, 3)) for i in range(3)]  # type: ignore[arg-type]
    assert sorted(sum(shards, [])) == items and shards[0] == [0, 3, 6, 9]
    assert select_prompts(items, 4, (1, 2)) == [1, 3]  # type: ignore[arg-type]
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "x", "1/0"):
        with pytest.raises(DpgBenchError, match="--shard"):
            parse_shard(bad)
