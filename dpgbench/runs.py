"""Run folders: their layout, manifests (atomic JSON), append-only JSONL logs, hashes, environment info.

A JSONL log is both the record of finished work and the resume cache: a torn last line (a kill mid-write)
is ignored on read and cut off before the next append, so finished lines are never lost or corrupted.

    RUN/manifest.json  images.jsonl (or images.rank<k>.jsonl per rank)  images/<item_id>_<index>.png
    RUN/eval/<judge>/manifest.json  answers*.jsonl  scores.csv  prompt_scores.csv  summary.json
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dpgbench.data import write_atomic
from dpgbench.errors import DpgBenchError

TRACKED_PACKAGES = (
    "dpgbench",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "modelscope",
    "openai",
    "numpy",
    "pandas",
    "pillow",
)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_file(self, item_id: str, index: int) -> Path:
        safe = item_id.replace("/", "_").replace("\\", "_")
        return self.images_dir / f"{safe}_{index}.png"

    def images_log(self, rank: int = 0, world: int = 1) -> Path:
        return self.root / ("images.jsonl" if world == 1 else f"images.rank{rank}.jsonl")

    def image_logs(self) -> list[Path]:
        return sorted(self.root.glob("images*.jsonl"))

    def eval_dir(self, judge: str) -> Path:
        return self.root / "eval" / judge

    def judges(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "eval").glob("*/manifest.json"))


# ------------------------------------------------------------------------------------------------- JSONL


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line is skipped, a broken line elsewhere is an error."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # After the final newline comes "" (clean) or a torn fragment: either way not a record.
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DpgBenchError(
                f"{path}:{number}: corrupt log line; delete that line and rerun to redo its work"
            ) from None
    return records


def read_logs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Records of several logs (one per rank), in file order."""
    out: list[dict[str, Any]] = []
    for path in paths:
        out.extend(read_jsonl(path))
    return out


def finished_images(paths: RunPaths) -> dict[tuple[str, int], dict[str, Any]]:
    """Latest log record per (item_id, index) across all ranks' logs."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for record in read_logs(paths.image_logs()):
        latest[(record["item_id"], int(record["index"]))] = record
    return latest


class JsonlLog:
    """Append-only JSONL writer; each record is one write of one line, flushed before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def _cut_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        if text:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- JSON and CSV


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DpgBenchError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise DpgBenchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DpgBenchError(f"{path}:1: expected a JSON object")
    return data


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    write_atomic(path, out.getvalue())


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else repr(value)  # repr keeps every bit; NaN -> empty cell
    return value


# ------------------------------------------------------------------------------------- hashes, manifest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_manifest(
    path: Path,
    identity: Mapping[str, Any],
    what: str,
    fix: str = "use another output folder, or the same settings to resume",
) -> bool:
    """True if `path` exists and was made with the same identity; raise if it was made differently."""
    if not path.exists():
        return False
    old = read_json(path).get("identity", {})
    diffs = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
    if diffs:
        k = diffs[0]
        raise DpgBenchError(
            f"{path}: this {what} was made with {k}={old.get(k)!r}, now {k}={identity.get(k)!r} "
            f"({len(diffs)} setting(s) differ); {fix}"
        )
    return True


def git_revision() -> str | None:
    """Commit of the dpgbench source tree (with '+dirty' if modified), if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions and machine facts for manifests, read without importing any heavy package."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.node(),
        "packages": versions,
        "git_revision": git_revision(),
        "argv": sys.argv,
    }


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate environment variables; (0, 1) when not launched so."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DpgBenchError(
            "RANK/WORLD_SIZE must be integers (set by torchrun or accelerate launch)"
        ) from None
    return rank, world


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8), for job arrays (0-based shard index)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise DpgBenchError(f"--shard '{text}': write it as i/n, e.g. --shard 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise DpgBenchError(f"--shard '{text}': need 0 <= i < n, e.g. --shard 0/4")
    return index, count
