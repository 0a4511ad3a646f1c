"""Folder import (one file per image, or official 2x2 grids) and grid export: round trip and bad input."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from dpgbench.data import GraphSet, Prompt
from dpgbench.errors import DpgBenchError
from dpgbench.folders import FileProblem, export_grids, import_folder
from dpgbench.runs import RunPaths, read_json, read_jsonl

PROMPTS = GraphSet(
    "tiny", "tiny.jsonl", "f" * 64, [Prompt("a1", "a red cat"), Prompt("b_2", "a dog"), Prompt("c", "a cup")]
)


def picture(seed: int, size: int = 16) -> Image.Image:
    """A small RGB image with distinct pixels per seed."""
    data = hashlib.shake_256(str(seed).encode()).digest(size * size * 3)
    return Image.frombytes("RGB", (size, size), data)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def pixels(path) -> str:
    return hashlib.sha256(Image.open(path).convert("RGB").tobytes()).hexdigest()


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "made_elsewhere"
    src.mkdir()
    for index in (0, 1, 3):
        (src / f"a1_{index}.png").write_bytes(encode(picture(index)))
    (src / "a1_2.jpg").write_bytes(encode(picture(2), "JPEG"))
    (src / "b_2_0.png").write_bytes(encode(picture(10)))
    (src / "b_2_1.png").write_bytes(encode(picture(11)))
    (src / "b_2_3.png").write_bytes(encode(picture(13))[:60])  # truncated: corrupt
    (src / "notes.txt").write_text("how these were made")
    (src / "zz_0.png").write_bytes(encode(picture(99)))  # no such prompt
    (src / "a1_7.png").write_bytes(encode(picture(7)))  # index out of range
    (src / "a1_0.jpeg").write_bytes(encode(picture(0), "JPEG"))  # second file for a1 image 0
    (src / "c.png").write_bytes(encode(picture(5, 32)))  # a grid, but this is a per-image import
    return src


def test_import_reports_every_bad_file_and_keeps_the_good_ones(source, tmp_path):
    run = tmp_path / "run"
    report = import_folder(source, PROMPTS, run, prompts_spec="tiny.jsonl")
    assert (report.imported, report.unchanged) == (6, 0)
    assert report.problems == [
        FileProblem("a1_0.png", "duplicate of a1_0.jpeg"),
        FileProblem("a1_7.png", "index 7 out of range 0-3"),
        FileProblem("b_2_3.png", "corrupt image: image file is truncated"),
        FileProblem(
            "c.png",
            "looks like a 2x2 grid (<item_id>.png); import grids with grid_tile=<tile size, e.g. 512>",
        ),
        FileProblem("notes.txt", "extra file: not an image (.png, .jpg, .jpeg, .webp)"),
        FileProblem("zz_0.png", "extra file: name is not <item_id>_<index> for any prompt ('zz_0')"),
    ]
    assert report.missing == [("b_2", 2), ("b_2", 3), ("c", 0), ("c", 1), ("c", 2), ("c", 3)]
    records = {(r["item_id"], r["index"]): r for r in read_jsonl(RunPaths(run).images_log())}
    assert {k: r["status"] for k, r in records.items()} == {
        ("a1", 0): "ok", ("a1", 1): "ok", ("a1", 2): "ok", ("a1", 3): "ok",
        ("b_2", 0): "ok", ("b_2", 1): "ok", ("b_2", 2): "failed", ("b_2", 3): "failed",
        ("c", 0): "failed", ("c", 1): "failed", ("c", 2): "failed", ("c", 3): "failed",
    }  # fmt: skip
    assert records[("b_2", 3)]["error"] == (
        "unusable source file b_2_3.png: corrupt image: image file is truncated"
    )
    assert records[("c", 0)]["error"] == f"no image in {source}"
    # An RGB PNG is copied byte for byte; a JPEG becomes a PNG of its decoded pixels.
    assert (run / records[("a1", 1)]["file"]).read_bytes() == (source / "a1_1.png").read_bytes()
    assert records[("a1", 1)]["sha256"] == hashlib.sha256((source / "a1_1.png").read_bytes()).hexdigest()
    assert pixels(run / "images/a1_0.png") == pixels(source / "a1_0.jpeg")
    assert records[("a1", 0)]["source"] == "a1_0.jpeg" and records[("a1", 0)]["converted_from"] == "JPEG RGB"
    manifest = read_json(run / "manifest.json")
    assert manifest["item_ids"] == ["a1", "b_2", "c"]
    assert manifest["config"]["prompts"] == "tiny.jsonl" and manifest["config"]["backend"] == "folder"
    # Importing again rewrites nothing and logs nothing new.
    lines = len(read_jsonl(RunPaths(run).images_log()))
    again = import_folder(source, PROMPTS, run, prompts_spec="tiny.jsonl")
    assert (again.imported, again.unchanged, len(again.missing)) == (0, 6, 6)
    assert len(read_jsonl(RunPaths(run).images_log())) == lines


def test_grid_export_and_import_round_trip(source, tmp_path):
    run = tmp_path / "run"
    import_folder(source, PROMPTS, run)
    grids = tmp_path / "grids"
    exported = export_grids(run, grids)
    assert exported.written == 1
    assert exported.skipped == [
        FileProblem("b_2", f"image 2 failed: no image in {source}"),
        FileProblem("c", f"image 0 failed: no image in {source}"),
    ]
    grid = Image.open(grids / "a1.png")
    assert grid.size == (32, 32)
    # Upstream tile order: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
    assert grid.crop((16, 0, 32, 16)).tobytes() == picture(1).tobytes()
    assert grid.crop((16, 16, 32, 32)).tobytes() == picture(3).tobytes()
    # Back in as grids, next to a wrong-size grid and a corrupt one.
    (grids / "b_2.png").write_bytes(encode(picture(1, 30)))
    (grids / "c.png").write_bytes(b"not a png at all")
    (grids / "extra.png").write_bytes(encode(picture(1, 32)))
    back = tmp_path / "back"
    report = import_folder(grids, PROMPTS, back, grid_tile=16)
    assert report.imported == 4
    assert report.problems == [
        FileProblem("b_2.png", "grid is 30x30, expected 32x32 for tile 16; tiles of 15 px would fit"),
        FileProblem("c.png", "corrupt image: not an image format Pillow can read"),
        FileProblem("extra.png", "extra file: no prompt has item_id 'extra' (grids are named <item_id>.png)"),
    ]
    errors = {(r["item_id"], r["index"]): r.get("error") for r in read_jsonl(RunPaths(back).images_log())}
    assert errors[("b_2", 0)] == (
        "unusable source file b_2.png: grid is 30x30, expected 32x32 for tile 16; tiles of 15 px would fit"
    )
    for index in range(4):
        assert pixels(back / f"images/a1_{index}.png") == pixels(run / f"images/a1_{index}.png")
    tiles = {
        r["index"]: r.get("tile") for r in read_jsonl(RunPaths(back).images_log()) if r["item_id"] == "a1"
    }
    assert tiles == {0: [0, 0, 16, 16], 1: [16, 0, 32, 16], 2: [0, 16, 16, 32], 3: [16, 16, 32, 32]}
    # Resized export for an upstream --resolution of 8.
    small = export_grids(back, tmp_path / "small", tile=8)
    assert small.written == 1 and Image.open(tmp_path / "small/a1.png").size == (16, 16)


def test_bad_arguments(tmp_path):
    with pytest.raises(DpgBenchError, match="no such folder"):
        import_folder(tmp_path / "nope", PROMPTS, tmp_path / "run")
    with pytest.raises(DpgBenchError, match="no manifest.json here"):
        export_grids(tmp_path, tmp_path / "grids")
    # Per-image files imported as grids: each says what it looks like.
    src = tmp_path / "per_image"
    src.mkdir()
    (src / "a1_0.png").write_bytes(encode(picture(0)))
    report = import_folder(src, PROMPTS, tmp_path / "run2", grid_tile=16)
    assert report.problems == [
        FileProblem(
            "a1_0.png", "looks like one file per image (<item_id>_<index>); import those without grid_tile"
        )
    ]
    with pytest.raises(DpgBenchError, match="grid-tile needs a positive tile size"):
        import_folder(tmp_path, PROMPTS, tmp_path / "run", grid_tile=0)
