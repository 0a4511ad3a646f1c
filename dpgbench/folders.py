"""Images made elsewhere: import a folder into a run folder, and export a run as official 2x2 grids.

Import takes one file per image (`<item_id>_<index>.png/.jpg/.jpeg/.webp`) or the official DPG-Bench
grids (`<item_id>.png`, four tiles of `grid_tile` pixels), checks every file and reports each problem
(extra or misnamed files, corrupt images, wrong grid size, missing images) instead of stopping at the
first. Export writes `<item_id>.png` grids so the upstream compute_dpg_bench.py can score our runs too.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dpgbench.data import GraphSet, write_atomic
from dpgbench.errors import DpgBenchError
from dpgbench.generate import GenerateConfig, write_manifest
from dpgbench.runs import JsonlLog, RunPaths, finished_images, read_json, sha256_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Tile k of a grid, as upstream compute_dpg_bench.py crops it: 0 top-left, 1 top-right, 2 bottom-left,
# 3 bottom-right (its crop_tuples_list).
TILE_ORIGINS = ((0, 0), (1, 0), (0, 1), (1, 1))
PER_IMAGE_NAME = re.compile(r"^(?P<item>.+)_(?P<index>\d+)$")


@dataclass
class FileProblem:
    file: str  # relative to the source (import) or the run folder (export)
    problem: str


@dataclass
class ImportReport:
    imported: int = 0  # images written in this call
    unchanged: int = 0  # already in the run with the same bytes
    problems: list[FileProblem] = field(default_factory=list)  # files that could not be used
    missing: list[tuple[str, int]] = field(default_factory=list)  # (item_id, index) with no image


@dataclass
class ExportReport:
    written: int = 0
    skipped: list[FileProblem] = field(default_factory=list)  # prompts without a full set of images


# ------------------------------------------------------------------------------------------------ import


def import_folder(
    src: str | Path,
    prompts: GraphSet,
    out: str | Path,
    grid_tile: int | None = None,
    *,
    images_per_prompt: int = 4,
    prompts_spec: str | None = None,
) -> ImportReport:
    """Copy the images in `src` into run folder `out` for the prompt set `prompts`; report every problem.

    `prompts_spec` is what the user typed for the prompt set (e.g. "dpg-bench"); `dpgbench score` reloads
    it from the manifest. Re-running the same import is cheap: unchanged images are not rewritten.
    """
    src = Path(src)
    if not src.is_dir():
        raise DpgBenchError(f"{src}: no such folder; give the folder that holds the images to import")
    if grid_tile is not None and (grid_tile < 1 or images_per_prompt != 4):
        raise DpgBenchError("--grid-tile needs a positive tile size and 4 images per prompt (2x2 grids)")
    paths = RunPaths(Path(out))
    report = ImportReport()
    by_name = {_safe(p.item_id): p.item_id for p in prompts.prompts}
    # 1. Match every file to (item_id, index) or report why it cannot be used.
    found: dict[tuple[str, int], Path] = {}
    grids: dict[str, Path] = {}
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = file.relative_to(src).as_posix()
        problem = _match(file, by_name, grid_tile, images_per_prompt, found, grids)
        if problem:
            report.problems.append(FileProblem(rel, problem))
    # 2. A manifest like generate's, so score, report and --from treat the import as any run.
    config = GenerateConfig(
        "folder",
        {"src": str(src.resolve()), "grid_tile": str(grid_tile or "")},
        prompts_spec or prompts.path or prompts.name,
        images_per_prompt=images_per_prompt,
    )
    info = {
        "name": "folder",
        "source": str(src.resolve()),
        "grid_tile": grid_tile,
        "seeds": "unknown (imported)",
    }
    write_manifest(paths, config, prompts.sha256, [p.item_id for p in prompts.prompts], info)
    # 3. Write the images and their log lines (failed lines for what is missing or unreadable).
    done = finished_images(paths)
    paths.images_dir.mkdir(parents=True, exist_ok=True)
    with JsonlLog(paths.images_log()) as log:
        for prompt in prompts.prompts:
            item = prompt.item_id
            tiles = _grid_tiles(grids[item], grid_tile, src, report) if item in grids and grid_tile else {}
            for index in range(images_per_prompt):
                source: Path | None
                if (item, index) in found:
                    loaded = _load_single(found[(item, index)], src, report)
                    source = found[(item, index)]
                else:
                    loaded, source = tiles.get(index), grids.get(item)
                if loaded is None:
                    reason = _source_problem(source, src, report) if source else f"no image in {src}"
                    report.missing.append((item, index))
                    previous = done.get((item, index), {})
                    if (previous.get("status"), previous.get("error")) != ("failed", reason):
                        log.append([{"item_id": item, "index": index, "status": "failed", "error": reason}])
                    continue
                data, image, extra = loaded
                _write_image(paths, log, done, report, item, index, data, image, source, src, extra)
    report.problems.sort(key=lambda p: p.file)
    return report


def _source_problem(source: Path, src: Path, report: ImportReport) -> str:
    """Why an image's source file was unusable, as the import reported it (the last report of that file:
    it was made just before), so `score` and `report` show the importer's reason, not a generic one."""
    rel = source.relative_to(src).as_posix()
    why = next((p.problem for p in reversed(report.problems) if p.file == rel), "unreadable")
    return f"unusable source file {rel}: {why}"


def _safe(item_id: str) -> str:
    """The file-name form of an item_id (RunPaths.image_file replaces path separators the same way)."""
    return item_id.replace("/", "_").replace("\\", "_")


def _match(
    file: Path,
    by_name: dict[str, str],
    grid_tile: int | None,
    images_per_prompt: int,
    found: dict[tuple[str, int], Path],
    grids: dict[str, Path],
) -> str | None:
    """Record `file` in `found` or `grids`; return the problem if it cannot be used."""
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        return f"extra file: not an image ({', '.join(IMAGE_SUFFIXES)})"
    stem = file.stem
    if grid_tile:
        if stem not in by_name:
            per_image = PER_IMAGE_NAME.match(stem)
            if per_image is not None and per_image["item"] in by_name:
                return "looks like one file per image (<item_id>_<index>); import those without grid_tile"
            return f"extra file: no prompt has item_id '{stem}' (grids are named <item_id>.png)"
        if by_name[stem] in grids:
            return f"duplicate grid for '{stem}' (also {grids[by_name[stem]].name})"
        grids[by_name[stem]] = file
        return None
    match = PER_IMAGE_NAME.match(stem)
    if match is None or match["item"] not in by_name:
        if stem in by_name:
            return "looks like a 2x2 grid (<item_id>.png); import grids with grid_tile=<tile size, e.g. 512>"
        return f"extra file: name is not <item_id>_<index> for any prompt ('{stem}')"
    item, index = by_name[match["item"]], int(match["index"])
    if index >= images_per_prompt:
        return f"index {index} out of range 0-{images_per_prompt - 1}"
    if (item, index) in found:
        return f"duplicate of {found[(item, index)].name}"
    found[(item, index)] = file
    return None


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # decode now: truncated files fail here, not later in the judge
    return image


def _load_single(file: Path, src: Path, report: ImportReport) -> tuple[bytes, Image.Image, dict] | None:
    data = file.read_bytes()
    try:
        image = _open(data)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        report.problems.append(FileProblem(file.relative_to(src).as_posix(), f"corrupt image: {_short(exc)}"))
        return None
    if image.format == "PNG" and image.mode == "RGB":
        return data, image, {}  # keep the file's own bytes: its hash stays the same
    return (
        _png(image.convert("RGB")),
        image.convert("RGB"),
        {"converted_from": f"{image.format} {image.mode}"},
    )


def _grid_tiles(
    file: Path, tile: int | None, src: Path, report: ImportReport
) -> dict[int, tuple[bytes, Image.Image, dict]]:
    assert tile is not None
    rel = file.relative_to(src).as_posix()
    try:
        grid = _open(file.read_bytes()).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        report.problems.append(FileProblem(rel, f"corrupt image: {_short(exc)}"))
        return {}
    if grid.size != (2 * tile, 2 * tile):
        hint = f"; tiles of {grid.width // 2} px would fit" if grid.width == grid.height else ""
        report.problems.append(
            FileProblem(
                rel,
                f"grid is {grid.width}x{grid.height}, expected {2 * tile}x{2 * tile} for tile {tile}{hint}",
            )
        )
        return {}
    tiles = {}
    for index, (col, row) in enumerate(TILE_ORIGINS):
        box = (col * tile, row * tile, (col + 1) * tile, (row + 1) * tile)
        image = grid.crop(box)
        tiles[index] = (_png(image), image, {"tile": list(box)})
    return tiles


def _write_image(
    paths: RunPaths,
    log: JsonlLog,
    done: dict[tuple[str, int], dict[str, Any]],
    report: ImportReport,
    item: str,
    index: int,
    data: bytes,
    image: Image.Image,
    source: Path | None,
    src: Path,
    extra: dict[str, Any],
) -> None:
    file = paths.image_file(item, index)
    sha = sha256_bytes(data)
    previous = done.get((item, index))
    if previous and previous.get("status") == "ok" and previous.get("sha256") == sha and file.exists():
        report.unchanged += 1
        return
    write_atomic(file, data)
    record = {
        "item_id": item,
        "index": index,
        "seed": None,
        "file": str(file.relative_to(paths.root)),
        "sha256": sha,
        "width": image.width,
        "height": image.height,
        "status": "ok",
        "source": source.relative_to(src).as_posix() if source else None,
    }
    log.append([record | extra])
    report.imported += 1


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _short(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow can read"  # its own text names a memory address
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ------------------------------------------------------------------------------------------------ export


def export_grids(run_dir: str | Path, out_dir: str | Path, tile: int | None = None) -> ExportReport:
    """Write `<item_id>.png` 2x2 grids of each prompt's four images, in the upstream tile order.

    Tiles keep their size unless `tile` is given (each image is then resized to tile x tile, bicubic).
    Upstream crops with `--resolution`: pass it the tile size. Prompts without four good images are
    skipped and reported.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.manifest.exists():
        raise DpgBenchError(f"{run_dir}: no manifest.json here; give a run folder made by dpgbench")
    manifest = read_json(paths.manifest)
    per_prompt = int(manifest.get("config", {}).get("images_per_prompt", 4))
    if per_prompt != 4:
        raise DpgBenchError(f"{run_dir}: has {per_prompt} images per prompt; 2x2 grids need exactly 4")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = finished_images(paths)
    report = ExportReport()
    for item in manifest.get("item_ids", []):
        images = _four_images(paths, records, item, report)
        if images is None:
            continue
        if tile is not None:
            images = [im.resize((tile, tile), Image.Resampling.BICUBIC) for im in images]
        size = images[0].size
        if any(im.size != size for im in images):
            sizes = ", ".join(f"{im.width}x{im.height}" for im in images)
            report.skipped.append(FileProblem(item, f"images differ in size ({sizes}); pass tile=N"))
            continue
        grid = Image.new("RGB", (2 * size[0], 2 * size[1]))
        for im, (col, row) in zip(images, TILE_ORIGINS):
            grid.paste(im, (col * size[0], row * size[1]))
        write_atomic(out / f"{_safe(item)}.png", _png(grid))
        report.written += 1
    return report


def _four_images(
    paths: RunPaths, records: dict[tuple[str, int], dict[str, Any]], item: str, report: ExportReport
) -> Sequence[Image.Image] | None:
    images = []
    for index in range(4):
        record = records.get((item, index))
        if record is None or record.get("status") != "ok":
            why = "not generated" if record is None else f"failed: {record.get('error', '')}"
            report.skipped.append(FileProblem(item, f"image {index} {why}"))
            return None
        try:
            images.append(_open((paths.root / record["file"]).read_bytes()).convert("RGB"))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            report.skipped.append(FileProblem(record["file"], f"unreadable: {_short(exc)}"))
            return None
    return images
