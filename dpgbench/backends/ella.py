"""The `ella-sd15` and `ella-sdxl` backends: a base pipeline whose text side is FLAN-T5 + an ELLA TSC.

The `diffusers` backend with the CLIP encoders left out and the UNet wrapped by `ella`'s proxy: T5 runs
once per prompt (prompt and negative together), the TSC once per denoising step. Defaults follow
TencentQQGYLab/ELLA `inference.py`: DPMSolverMultistepScheduler, 50 steps, guidance 12, 512 px, fp16.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgbench.backends.diffusers_pipeline import (
    SNAPSHOT_COMMIT,
    DiffusersBackend,
    DiffusersConfig,
    is_out_of_memory,
    one_line,
    option,
)
from dpgbench.errors import DpgBenchError

if TYPE_CHECKING:
    from PIL import Image

HELP = {
    "checkpoint": "TSC weights: hub repo id (with checkpoint_file), a .safetensors/.pth file, or a saved folder",
    "checkpoint_file": "file name inside the hub repo (ignored for local files)",
    "checkpoint_revision": "hub branch, tag or commit of the TSC repo",
    "text_encoder": "T5 encoder: hub id or local folder (encoder weights + sentencepiece tokenizer)",
    "text_encoder_revision": "hub branch, tag or commit of the T5 repo",
    "text_length": "T5 tokens per prompt: 128 as released (padding attended), or none = flexible (padding masked)",
    "heads": "TSC attention heads (single-file checkpoints do not record it)",
}


def ella_option(default: Any, key: str) -> Any:
    return field(default=default, metadata={"help": HELP[key]})


@dataclass
class EllaSD15Config(DiffusersConfig):
    model: str = option("stable-diffusion-v1-5/stable-diffusion-v1-5", "model")
    scheduler: str = option("DPMSolverMultistepScheduler", "scheduler")
    steps: int | None = option(50, "steps")
    guidance: float | None = option(12.0, "guidance")
    width: int | None = option(512, "width")
    height: int | None = option(512, "height")
    checkpoint: str = ella_option("QQGYLab/ELLA", "checkpoint")
    checkpoint_file: str = ella_option("ella-sd1.5-tsc-t5xl.safetensors", "checkpoint_file")
    checkpoint_revision: str = ella_option("main", "checkpoint_revision")
    text_encoder: str = ella_option("google/flan-t5-xl", "text_encoder")
    text_encoder_revision: str = ella_option("main", "text_encoder_revision")
    text_length: int | None = ella_option(128, "text_length")
    heads: int = ella_option(8, "heads")


class EllaSD15Backend(DiffusersBackend):
    """SD 1.x + released TSC; the pipeline receives T5 features as prompt embeddings."""

    Config = EllaSD15Config
    name = "ella-sd15"
    pipeline_classes = ("StableDiffusionPipeline",)
    config: EllaSD15Config

    def _check_config(self) -> None:
        super()._check_config()
        if not self.config.checkpoint:
            raise DpgBenchError(
                f"backend '{self.name}' needs a TSC: --backend-arg checkpoint=FILE_OR_FOLDER (no ELLA-SDXL "
                "weights were released; train one with `dpgbench ella train`)"
            )
        if self.config.text_length is not None and self.config.text_length < 1:
            raise DpgBenchError(f"backend option text_length={self.config.text_length}: use 128 or none")

    def load_kwargs(self) -> dict[str, Any]:
        # T5 + TSC replace CLIP, so the CLIP encoder is not loaded at all.
        return {
            "text_encoder": None,
            "tokenizer": None,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }

    def _load(self) -> Any:
        from ella import CheckpointError, load_tsc
        from ella.checkpoint import check_text_width
        from ella.pipeline import attach
        from ella.text_encoder import T5TextEmbedder

        pipe = super()._load()
        c = self.config
        # 1. The TSC, strictly (missing/unexpected keys are listed), in the pipeline's dtype.
        try:
            tsc = load_tsc(
                c.checkpoint,
                c.checkpoint_file,
                heads=c.heads,
                revision=c.checkpoint_revision,
                dtype=self.dtype,
            )
            # 2. Wrapped around the UNet, refusing a base it cannot drive (e.g. SDXL with the SD 1.5 TSC).
            attach(pipe, tsc)
        except CheckpointError as exc:
            raise DpgBenchError(f"backend '{self.name}': {exc}") from exc
        self.tsc_source = tsc_provenance(c.checkpoint, c.checkpoint_file)
        # 3. The T5 encoder beside the pipeline (not a pipeline component, so placed here).
        try:
            self.embedder = T5TextEmbedder.from_pretrained(
                c.text_encoder,
                max_length=c.text_length,
                device=self.device,
                dtype=self.dtype,
                revision=c.text_encoder_revision,
            )
        except (OSError, ValueError) as exc:
            raise DpgBenchError(
                f"backend '{self.name}': cannot load the T5 encoder {c.text_encoder!r} ({one_line(exc)}); "
                "download it and pass the folder: --backend-arg text_encoder=DIR"
            ) from exc
        # 4. Its features must fit the TSC's proj_in: refused now, not as a failure of every image.
        try:
            check_text_width(tsc, self.embedder.hidden_size, c.text_encoder)
        except CheckpointError as exc:
            raise DpgBenchError(f"backend '{self.name}': {exc}; --backend-arg text_encoder=DIR") from exc
        return pipe

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        """One image per seed, in padded fixed-shape batches like the `diffusers` backend."""
        import torch

        from ella.pipeline import pipeline_inputs
        from ella.text_encoder import TextFeatures

        # 1. T5 once for this prompt: the prompt and the negative prompt in one call.
        both = self.embedder.encode([prompt, self.config.negative_prompt])
        features = [
            TextFeatures(both.hidden[i : i + 1], None if both.mask is None else both.mask[i : i + 1])
            for i in (0, 1)
        ]
        images: list[Image.Image] = []
        size = self.config.batch_size
        for start in range(0, len(seeds), size):
            chunk = list(seeds[start : start + size])
            # 2. Same padding and per-image CPU generators as the diffusers backend (bit-identical batches).
            padded = chunk + [chunk[-1]] * (size - len(chunk)) if self.pad_batches else chunk
            generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in padded]
            inputs = pipeline_inputs(self.pipe, features[0], features[1], len(padded))
            try:
                out = self.pipe(
                    **inputs, generator=generators, output_type="pil", **self.pipeline_arguments()
                )
            except Exception as exc:
                if is_out_of_memory(exc):
                    self.pad_batches = False
                raise
            images.extend(out.images[: len(chunk)])
        return images

    def pipeline_arguments(self) -> dict[str, Any]:
        args = super().pipeline_arguments()
        args.pop("negative_prompt", None)  # it reaches the pipeline as T5 features instead
        return args

    def info(self) -> dict[str, Any]:
        c = self.config
        tsc = self.pipe.unet.tsc
        return super().info() | {
            "tsc": {"checkpoint": c.checkpoint, "file": c.checkpoint_file, "revision": c.checkpoint_revision}
            | self.tsc_source
            | {"config": {k: v for k, v in tsc.config.items() if not k.startswith("_")}},
            "text_encoder": {
                "model": c.text_encoder,
                "revision": c.text_encoder_revision,
                "class": type(self.embedder.model).__name__,
                "dtype": str(self.embedder.model.dtype).removeprefix("torch."),
                "length": c.text_length if c.text_length is not None else "flexible",
            },
            "text_encoder_calls_per_prompt": 1,
        }


def tsc_provenance(checkpoint: str, filename: str) -> dict[str, Any]:
    """Where the weights came from: the hub snapshot commit, or a sha256 of the local file."""
    from ella.checkpoint import resolve

    path = resolve(checkpoint, filename)
    match = SNAPSHOT_COMMIT.search(str(path))
    if match:
        return {"resolved_commit": match.group(1)}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"resolved_commit": "local", "sha256": digest.hexdigest(), "path": str(Path(path).resolve())}


@dataclass
class EllaSDXLConfig(EllaSD15Config):
    # SDXL base 1.0's card (1024 px, guidance 5.0, its Euler scheduler); an ELLA-SDXL TSC must be given.
    model: str = option("stabilityai/stable-diffusion-xl-base-1.0", "model")
    scheduler: str = option("", "scheduler")
    guidance: float | None = option(5.0, "guidance")
    width: int | None = option(1024, "width")
    height: int | None = option(1024, "height")
    checkpoint: str = ella_option("", "checkpoint")
    checkpoint_file: str = ella_option("", "checkpoint_file")


class EllaSDXLBackend(EllaSD15Backend):
    """SDXL + a user-trained ELLA-SDXL TSC (output width 2048 and the pooled embedding)."""

    Config = EllaSDXLConfig
    name = "ella-sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    config: EllaSDXLConfig

    def load_kwargs(self) -> dict[str, Any]:
        return {
            "text_encoder": None,
            "text_encoder_2": None,
            "tokenizer": None,
            "tokenizer_2": None,
            "add_watermarker": False,
        }
