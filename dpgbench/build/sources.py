"""Where build inputs come from: short captions (a text file, any CSV or TSV with a text column such as
PartiPrompts.tsv, COCO's captions_*.json, our JSONL, a folder of .txt, a DSG-format CSV) and object lists
sampled from a category list, as DPG-Bench did with Objects365.

Every source becomes a list of `Source(item_id, text)` in file order, with a hash for the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from dpgbench.data import load_graphs, read_text
from dpgbench.errors import DpgBenchError

TEXT_COLUMNS = ("text", "prompt", "caption", "Prompt")  # first one present wins (PartiPrompts uses Prompt)


@dataclass(frozen=True)
class Source:
    item_id: str
    text: str
    objects: tuple[str, ...] = field(default=())  # set when the source is a sampled object list


@dataclass(frozen=True)
class SourceSet:
    path: str
    sha256: str
    items: list[Source]


def _digest(items: list[Source]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(f"{s.item_id}\0{s.text}\0{'|'.join(s.objects)}\n".encode())
    return h.hexdigest()


def read_sources(path: str | Path) -> SourceSet:
    """Captions from a .txt (one per line, ids `<stem>_<line>`), a .csv or .tsv, COCO captions .json, a .jsonl
    or a folder of .txt."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".jsonl":
        graphs = load_graphs(path)
        items = [Source(p.item_id, p.text.strip()) for p in graphs.prompts]
    elif path.suffix.lower() in (".csv", ".tsv"):
        items = _read_csv(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    elif path.suffix.lower() == ".json":
        items = _read_coco(path)
    elif path.suffix.lower() == ".txt":
        items = [
            Source(f"{path.stem}_{number}", line.strip())
            for number, line in enumerate(read_text(path).splitlines(), 1)
            if line.strip()
        ]
    elif not path.exists():
        raise DpgBenchError(f"{path}: no such file or folder; give a .txt, .csv or .jsonl of prompts")
    else:
        raise DpgBenchError(
            f"{path}: unknown prompt source; use a .txt (one per line), .csv, .tsv, COCO .json, .jsonl or folder"
        )
    if not items:
        raise DpgBenchError(f"{path}: no prompts found")
    seen: set[str] = set()
    for s in items:
        if s.item_id in seen:
            raise DpgBenchError(f"{path}: item_id '{s.item_id}' appears twice; ids must be unique")
        seen.add(s.item_id)
    return SourceSet(str(path), _digest(items), items)


def _read_csv(path: Path, delimiter: str = ",") -> list[Source]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    if text_column is None:
        raise DpgBenchError(
            f"{path}:1: no text column; name the prompt column one of {', '.join(TEXT_COLUMNS)}"
        )
    items: list[Source] = []
    ids: set[str] = set()
    for record in reader:
        text = (record.get(text_column) or "").strip()
        if not text:
            continue
        item_id = (record.get("item_id") or "").strip() or f"{path.stem}_{reader.line_num}"
        if item_id in ids:  # a DSG-format CSV repeats the prompt on each of its question rows
            continue
        ids.add(item_id)
        items.append(Source(item_id, text))
    return items


def _read_coco(path: Path) -> list[Source]:
    """COCO's captions_*.json: one source per caption, `coco_<image_id>_<caption id>`, in file order."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DpgBenchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DpgBenchError(
            f'{path}: expected COCO captions ({{"annotations": [{{"image_id", "id", "caption"}}, ...]}})'
        )
    items = []
    for k, a in enumerate(annotations):
        if not isinstance(a, dict) or not isinstance(a.get("caption"), str) or "image_id" not in a:
            raise DpgBenchError(f"{path}: annotation {k} has no image_id and caption text")
        if a["caption"].strip():
            items.append(Source(f"coco_{a['image_id']}_{a.get('id', k)}", " ".join(a["caption"].split())))
    return items


def sample_objects(
    categories_path: str | Path, count: int, seed: int = 0, min_objects: int = 1, max_objects: int = 4
) -> SourceSet:
    """`count` object lists of 1-4 distinct categories (one category name per line), seeded and replayable."""
    path = Path(categories_path)
    categories = list(dict.fromkeys(line.strip() for line in read_text(path).splitlines() if line.strip()))
    if len(categories) < max_objects:
        raise DpgBenchError(
            f"{path}: {len(categories)} categories, fewer than --max-objects {max_objects}; add categories"
        )
    if not 1 <= min_objects <= max_objects:
        raise DpgBenchError(
            f"--min-objects {min_objects} / --max-objects {max_objects}: need 1 <= min <= max"
        )
    rng = random.Random(seed)
    items = []
    for index in range(count):
        objects = tuple(rng.sample(categories, rng.randint(min_objects, max_objects)))
        items.append(Source(f"objects_{seed}_{index}", "objects: " + ", ".join(objects), objects))
    return SourceSet(f"{path} (seed {seed})", _digest(items), items)
