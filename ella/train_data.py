"""Training data for ella.train: image-caption pairs, their per-step batches, and precomputed T5 features.

Owns reading a folder (NAME.png + NAME.txt) or a JSONL manifest, image preprocessing, the sampler that
makes data order a function of (seed, micro-step, process), and the caption -> feature-file cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ella.text_encoder import T5TextEmbedder, TextFeatures

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class TrainDataError(ValueError):
    """Unusable training data or options: the message names the file or option and the fix."""


@dataclass(frozen=True)
class Pair:
    image: Path
    caption: str


def read_pairs(data: str | Path) -> list[Pair]:
    """Image-caption pairs from a folder (NAME.png + NAME.txt) or a JSONL file ({"image", "caption"})."""
    path = Path(data)
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        pairs = []
        for image in images:
            caption_file = image.with_suffix(".txt")
            if not caption_file.exists():
                raise TrainDataError(
                    f"{image} has no caption: write it to {caption_file.name} beside the image"
                )
            pairs.append(Pair(image, caption_file.read_text(encoding="utf-8").strip()))
    elif path.is_file():
        pairs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image, caption = record["image"], record.get("caption", record.get("text"))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise TrainDataError(
                    f'{path}:{number}: expected a JSON object like {{"image": "a.png", "caption": "..."}}'
                ) from None
            if not isinstance(caption, str):
                raise TrainDataError(f"{path}:{number}: no 'caption' (or 'text') string")
            image_path = Path(image) if Path(image).is_absolute() else path.parent / image
            if not image_path.exists():
                raise TrainDataError(f"{path}:{number}: image {image_path} does not exist")
            pairs.append(Pair(image_path, caption))
    else:
        raise TrainDataError(
            f"--data {data} does not exist: give a folder of images + .txt or a JSONL manifest"
        )
    if not pairs:
        raise TrainDataError(f"--data {data} holds no image-caption pairs ({', '.join(IMAGE_SUFFIXES)})")
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """Resized, center-cropped images in [-1, 1], plus what SDXL's micro-conditioning needs."""

    def __init__(self, pairs: Sequence[Pair], resolution: int):
        self.pairs = list(pairs)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        with Image.open(pair.image) as opened:
            image = opened.convert("RGB")
        original = (image.height, image.width)
        scale = self.resolution / min(image.size)
        size = (
            max(self.resolution, round(image.width * scale)),
            max(self.resolution, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.resolution, self.resolution, 3).permute(2, 0, 1).float() / 127.5 - 1
        return {"pixels": pixels, "index": index, "caption": pair.caption, "time_ids": [*original, top, left]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixels": torch.stack([item["pixels"] for item in items]),
        "index": [item["index"] for item in items],
        "caption": [item["caption"] for item in items],
        "time_ids": torch.tensor([item["time_ids"] for item in items], dtype=torch.float32),
    }


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """Indices of this process's share of every micro-step from `start` on.

    Each epoch is a permutation seeded by (seed, epoch); a global micro-batch is the next
    batch_size x processes indices of it (incomplete tails are dropped), process p takes slice p.
    """

    def __init__(
        self, size: int, batch_size: int, processes: int, rank: int, seed: int, start: int, stop: int
    ):
        self.size, self.batch_size, self.processes, self.rank = size, batch_size, processes, rank
        self.seed, self.start, self.stop = seed, start, stop
        self.per_epoch = size // (batch_size * processes)
        if self.per_epoch == 0:
            raise TrainDataError(
                f"{size} pairs cannot fill one batch of {batch_size} x {processes} processes: lower --batch-size"
            )

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.processes
        for micro_step in range(self.start, self.stop):
            epoch, position = divmod(micro_step, self.per_epoch)
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            )
            batch = order[position * global_batch : (position + 1) * global_batch]
            yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()


# --------------------------------------------------------------------------------------------------
# T5 features, on the fly or precomputed once


def feature_key(caption: str, text_encoder: str, max_length: int | None) -> str:
    return hashlib.sha256(f"{text_encoder}\n{max_length}\n{caption}".encode()).hexdigest()[:32]


def missing_features(
    captions: Sequence[str], folder: Path, text_encoder: str, max_length: int | None
) -> list[str]:
    """Distinct captions without a feature file yet, in a fixed order (processes split this list)."""
    return [
        c
        for c in sorted(set(captions))
        if not (folder / f"{feature_key(c, text_encoder, max_length)}.safetensors").exists()
    ]


def precompute_features(
    embedder: T5TextEmbedder, captions: Sequence[str], folder: Path, text_encoder: str
) -> None:
    """One safetensors file per caption (unpadded at flexible length), 32 captions per T5 call."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    todo = list(captions)
    for start in range(0, len(todo), 32):
        chunk = todo[start : start + 32]
        features = embedder.encode(chunk)
        for row, caption in enumerate(chunk):
            hidden = features.hidden[row]
            if features.mask is not None:
                hidden = hidden[: int(features.mask[row].sum())]
            name = f"{feature_key(caption, text_encoder, embedder.max_length)}.safetensors"
            save_file({"hidden": hidden.float().contiguous().cpu()}, str(folder / f"{name}.tmp"))
            (folder / f"{name}.tmp").replace(folder / name)  # atomic: a killed run leaves no torn file


def load_features(
    captions: Sequence[str], folder: Path, text_encoder: str, max_length: int | None, device: torch.device
) -> TextFeatures:
    from safetensors.torch import load_file

    rows = []
    for caption in captions:
        path = folder / f"{feature_key(caption, text_encoder, max_length)}.safetensors"
        if not path.exists():
            raise TrainDataError(
                f"no precomputed features for {caption[:40]!r} in {folder}: rerun with --precompute-features"
            )
        rows.append(load_file(str(path))["hidden"])
    return stack_features(rows, flexible=max_length is None, device=device)


def stack_features(rows: Sequence[torch.Tensor], flexible: bool, device: torch.device) -> TextFeatures:
    longest = max(len(r) for r in rows)
    hidden = torch.stack([F.pad(r, (0, 0, 0, longest - len(r))) for r in rows]).to(device)
    if not flexible:
        return TextFeatures(hidden)
    mask = torch.stack([torch.arange(longest) < len(r) for r in rows]).to(device)
    return TextFeatures(hidden, mask)
