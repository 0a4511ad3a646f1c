"""The generation loop: per-image seeds, skipping finished images, PNGs and the images log of a run folder.

A backend is handed in (never imported here). Image i of a prompt gets the seed derived from
(base seed, item_id, i), so batch size, order, sharding and resumption never change a pixel.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgbench.data import Prompt, write_atomic
from dpgbench.errors import DpgBenchError
from dpgbench.runs import (
    JsonlLog,
    RunPaths,
    check_manifest,
    environment,
    finished_images,
    read_json,
    sha256_bytes,
    write_json,
)

if TYPE_CHECKING:
    from dpgbench.backends import Backend

IMAGE_INFO_KEYS = ("revised_prompt", "cost_usd")
SEED_RULE = "int.from_bytes(sha256(f'{seed}:{item_id}:{index}').digest()[:4], 'big')"


def image_seed(base_seed: int, item_id: str, index: int) -> int:
    """Seed of one image, in [0, 2**32): independent of batch, order and shard."""
    digest = hashlib.sha256(f"{base_seed}:{item_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass
class GenerateConfig:
    backend: str
    backend_args: dict[str, str] = field(default_factory=dict)
    prompts: str = "dpg-bench"  # benchmark name or path, as the user gave it
    images_per_prompt: int = 4
    seed: int = 0
    limit: int | None = None  # first N prompts only, for quick tries
    retry_failed: bool = True

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise DpgBenchError(
                f"--images-per-prompt {self.images_per_prompt}: use 1 or more (DPG-Bench uses 4)"
            )
        if self.limit is not None and self.limit < 1:
            raise DpgBenchError(f"--limit {self.limit}: use 1 or more, or leave it out for every prompt")

    def identity(self, prompts_sha256: str) -> dict[str, Any]:
        """What decides the pixels: a run folder made with a different identity is refused."""
        return {
            "backend": self.backend,
            "backend_args": dict(sorted(self.backend_args.items())),
            "prompts_sha256": prompts_sha256,
            "images_per_prompt": self.images_per_prompt,
            "seed": self.seed,
            "seed_rule": SEED_RULE,
        }


@dataclass
class Failure:
    item_id: str
    index: int
    reason: str


@dataclass
class GenerateSummary:
    done: int = 0  # made in this call
    skipped: int = 0  # already finished before this call
    failed: list[Failure] = field(default_factory=list)
    retried_one_by_one: int = 0  # prompts re-run image by image after running out of memory
    seconds: float = 0.0


def select_prompts(prompts: Sequence[Prompt], limit: int | None, shard: tuple[int, int]) -> list[Prompt]:
    """The first `limit` prompts, then every n-th from index i for shard (i, n)."""
    chosen = list(prompts[:limit] if limit else prompts)
    index, count = shard
    return chosen[index::count]


def _intact(file: Path, record: dict[str, Any]) -> bool:
    """The logged image is on disk with the logged bytes (PNGs are not fsynced one by one, so check)."""
    try:
        return sha256_bytes(file.read_bytes()) == record.get("sha256")
    except OSError:
        return False


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


# Backend facts that decide the pixels but are not in the identity (they come from the machine or the hub):
# a run resumed with another model snapshot or dtype would mix images of two models.
MODEL_KEYS = ("resolved_commit", "local_fingerprint", "dtype")


def model_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'dtype float16 -> float32', ... for each MODEL_KEYS fact both backend infos record and that differ."""

    def short(value: Any) -> str:
        text = str(value)
        return text[:12] + "..." if re.fullmatch(r"[0-9a-f]{40,64}", text) else text

    return [
        f"{key} {short(recorded[key])} -> {short(current[key])}"
        for key in MODEL_KEYS
        if recorded.get(key) is not None and current.get(key) is not None and recorded[key] != current[key]
    ]


def package_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'diffusers 0.30.0 -> 0.39.0', ...: versions that may move pixels by a few levels."""
    old, new = recorded.get("packages") or {}, current.get("packages") or {}
    return [
        f"{name} {old[name]} -> {new[name]}" for name in sorted(old) if name in new and old[name] != new[name]
    ]


def replay_config(manifest: dict[str, Any], overrides: dict[str, str], *, pin: bool) -> GenerateConfig:
    """The GenerateConfig of a manifest, with --backend-arg overrides; `pin` fixes a hub model's revision
    to the commit the run resolved (a replay into a new folder gets the same snapshot even if the branch
    moved on)."""
    config = GenerateConfig(**manifest["config"])
    if config.backend == "folder":
        raise DpgBenchError(
            "this run was imported with `dpgbench import-folder`, not generated; import the folder again instead"
        )
    recorded = manifest.get("backend") or {}
    commit = str(recorded.get("resolved_commit") or "")
    args = dict(config.backend_args)
    pinned = re.fullmatch(r"[0-9a-f]{40}", args.get("revision", ""))
    if (
        pin
        and not pinned
        and re.fullmatch(r"[0-9a-f]{40}", commit)
        and "revision" in (recorded.get("config") or {})
    ):
        args["revision"] = commit
    config.backend_args = args | overrides
    return config


def write_manifest(
    paths: RunPaths,
    config: GenerateConfig,
    prompts_sha256: str,
    item_ids: Sequence[str],
    backend_info: dict[str, Any],
) -> None:
    """Refuse a folder made differently; otherwise (re)write the manifest with what this call used."""
    identity = config.identity(prompts_sha256)
    if check_manifest(paths.manifest, identity, "run"):
        changed = model_differences(read_json(paths.manifest).get("backend") or {}, backend_info)
        if changed:
            raise DpgBenchError(
                f"{paths.manifest}: this run was made with another model ({'; '.join(changed)}); resuming would "
                "mix images of two models. Use another output folder, or resume where the recorded model and "
                "precision are available (HF_HUB_OFFLINE=1 keeps the cached snapshot of a hub model)"
            )
    write_json(
        paths.manifest,
        {
            "kind": "dpgbench-run",
            "identity": identity,
            "config": asdict(config),
            "item_ids": list(item_ids),
            "backend": backend_info,
            "environment": environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def generate(
    paths: RunPaths,
    config: GenerateConfig,
    prompts: Sequence[Prompt],
    backend: Backend,
    *,
    shard: tuple[int, int] = (0, 1),
    on_image: Callable[[int], None] | None = None,
    on_skip: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Make the missing images of `prompts` (already chosen for this shard) and log each one.

    on_image(1) follows each image made or failed, on_skip(1) each image already done (default: on_image).
    """
    on_skip = on_skip or on_image
    start = time.perf_counter()
    summary = GenerateSummary()
    finished = finished_images(paths)
    paths.images_dir.mkdir(parents=True, exist_ok=True)
    with JsonlLog(paths.images_log(*shard)) as log:
        for prompt in prompts:
            todo = []
            for index in range(config.images_per_prompt):
                record = finished.get((prompt.item_id, index))
                ok = (
                    record is not None
                    and record["status"] == "ok"
                    and _intact(paths.root / record["file"], record)
                )
                if ok or (record is not None and record["status"] != "ok" and not config.retry_failed):
                    summary.skipped += 1
                    if on_skip:
                        on_skip(1)
                else:
                    todo.append(index)
            if todo:
                _make_prompt(paths, config, prompt, todo, backend, log, summary, on_image)
    summary.seconds = time.perf_counter() - start
    return summary


def _make_prompt(
    paths: RunPaths,
    config: GenerateConfig,
    prompt: Prompt,
    indices: list[int],
    backend: Backend,
    log: JsonlLog,
    summary: GenerateSummary,
    on_image: Callable[[int], None] | None,
) -> None:
    # 1. One batch for the prompt's missing images, one seed each.
    seeds = [image_seed(config.seed, prompt.item_id, i) for i in indices]
    started = time.perf_counter()
    try:
        batches = [(indices, backend.generate(prompt.text, seeds))]
    except DpgBenchError:
        raise  # a problem with the whole run (bad key, no quota, bad option): stop, do not fail every image
    except Exception as exc:
        if not _is_out_of_memory(exc) or len(indices) == 1:
            _log_failures(log, summary, prompt, indices, seeds, _one_line(exc), on_image)
            return
        # 2. Out of memory: the same images one at a time (same seeds; pixels may move by one level, as a
        #    batch of one is not bit-identical on every backend, so the log records the batch size).
        summary.retried_one_by_one += 1
        batches = []
        for index, seed in zip(indices, seeds):
            try:
                batches.append(([index], backend.generate(prompt.text, [seed])))
            except DpgBenchError:
                raise
            except Exception as one_exc:
                _log_failures(log, summary, prompt, [index], [seed], _one_line(one_exc), on_image)
    seconds = (time.perf_counter() - started) / max(1, len(indices))
    # 3. Write each PNG atomically, then its log line: a logged image always exists on disk.
    for batch_indices, images in batches:
        if len(images) != len(batch_indices):
            raise DpgBenchError(
                f"backend '{config.backend}' returned {len(images)} images for {len(batch_indices)} seeds"
            )
        for index, image in zip(batch_indices, images):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
            file = paths.image_file(prompt.item_id, index)
            write_atomic(file, data, durable=False)
            record = {
                "item_id": prompt.item_id,
                "index": index,
                "seed": image_seed(config.seed, prompt.item_id, index),
                "file": str(file.relative_to(paths.root)),
                "sha256": sha256_bytes(data),
                "width": image.width,
                "height": image.height,
                "status": "ok",
                "batch": len(batch_indices),
                "seconds": round(seconds, 4),
            }
            # API backends say what they did with the prompt and what it cost, per image.
            record.update({k: image.info[k] for k in IMAGE_INFO_KEYS if k in image.info})
            log.append([record])
            summary.done += 1
            if on_image:
                on_image(1)


def _log_failures(
    log: JsonlLog,
    summary: GenerateSummary,
    prompt: Prompt,
    indices: list[int],
    seeds: list[int],
    reason: str,
    on_image: Callable[[int], None] | None,
) -> None:
    log.append(
        {"item_id": prompt.item_id, "index": i, "seed": s, "status": "failed", "error": reason}
        for i, s in zip(indices, seeds)
    )
    for i in indices:
        summary.failed.append(Failure(prompt.item_id, i, reason))
        if on_image:
            on_image(1)
