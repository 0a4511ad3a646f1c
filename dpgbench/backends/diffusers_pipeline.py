"""The `diffusers` backend: any diffusers text-to-image pipeline, by hub id or local folder.

It owns loading (revision, dtype, device, offload, scheduler swap, clear errors when a model cannot be
found), fixed-shape batched generation with one CPU generator per image, and the provenance in `info()`.
The model-family backends (sd15, sd21, sdxl, playground-v2, pixart-alpha) are this class with defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgbench.errors import DpgBenchError

if TYPE_CHECKING:
    from PIL import Image

HELP = {
    "model": "hub id or local folder of a diffusers pipeline",
    "revision": "hub branch, tag or commit (ignored for local folders)",
    "variant": "weight file variant to load, e.g. fp16 (none = the full-precision files)",
    "steps": "denoising steps (none = the pipeline's default)",
    "guidance": "classifier-free guidance scale (none = the pipeline's default)",
    "width": "image width in pixels (none = the model's native size)",
    "height": "image height in pixels (none = the model's native size)",
    "scheduler": "diffusers scheduler class to use instead of the checkpoint's, e.g. DPMSolverMultistepScheduler",
    "scheduler_args": 'JSON object of scheduler config overrides, e.g. {"use_karras_sigmas": true}',
    "dtype": "auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16",
    "negative_prompt": "negative prompt for every image (empty = none)",
    "device": "auto (cuda:$LOCAL_RANK if a GPU is present, else cpu), cpu, cuda, cuda:1, mps",
    "cpu_offload": "none, model (whole models move to the GPU in turn) or sequential (slowest, least memory)",
    "attention_slicing": "compute attention in slices: less memory, a little slower",
    "compile": "torch.compile the UNet/transformer (slow first batch, faster afterwards)",
    "batch_size": "images per pipeline call; smaller batches are padded to this size so every image is "
    "computed with the same tensor shapes (bit-identical whatever the batch)",
    "call_args": 'JSON object of extra pipeline call arguments, e.g. {"max_sequence_length": 512}',
}


def option(default: Any, key: str, note: str = "") -> Any:
    """A Config field whose help text is the shared one for `key` (family configs only change defaults)."""
    return field(default=default, metadata={"help": HELP[key] + (f" ({note})" if note else "")})


@dataclass
class DiffusersConfig:
    model: str = option("", "model")
    revision: str = option("main", "revision")
    variant: str | None = option(None, "variant")
    steps: int | None = option(None, "steps")
    guidance: float | None = option(None, "guidance")
    width: int | None = option(None, "width")
    height: int | None = option(None, "height")
    scheduler: str = option("", "scheduler")
    scheduler_args: str = option("", "scheduler_args")
    dtype: str = option("auto", "dtype")
    negative_prompt: str = option("", "negative_prompt")
    device: str = option("auto", "device")
    cpu_offload: str = option("none", "cpu_offload")
    attention_slicing: bool = option(False, "attention_slicing")
    compile: bool = option(False, "compile")
    batch_size: int = option(4, "batch_size")
    call_args: str = option("", "call_args")


DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}
DTYPES |= {"bf16": "bfloat16", "bfloat16": "bfloat16"}
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors")
SNAPSHOT_COMMIT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


class DiffusersBackend:
    """Loads a pipeline once, then turns (prompt, seeds) into images with one generator per image."""

    Config = DiffusersConfig
    name = "diffusers"
    # Family backends name the pipeline class they expect, to catch e.g. an SDXL folder given to `sd15`.
    pipeline_classes: tuple[str, ...] = ()

    def __init__(self, config: DiffusersConfig) -> None:
        import torch

        self.config = config
        self._check_config()
        self.device = resolve_device(config.device)
        self.dtype = getattr(torch, resolve_dtype(config.dtype, self.device))
        self.extra_call_args = parse_json_object(config.call_args, "call_args")
        # After an out-of-memory error generate.py retries image by image; padding would defeat that.
        self.pad_batches = True
        # Prompts longer than the text encoder takes (the pipeline cuts them): counted, not warned per call.
        self.long_prompts: set[str] = set()
        # 1. Find the files: a local folder as is, or the hub snapshot for (model, revision).
        self.folder, self.commit = locate_pipeline(config.model, config.revision, config.variant, self.name)
        # 2. Load with the real from_pretrained path, then place it on the device.
        self.pipe = self._load()
        # 3. Optional scheduler swap, memory savers and compilation.
        self._configure()

    # ---------------------------------------------------------------------------------------- loading

    def _check_config(self) -> None:
        c = self.config
        if not c.model:
            raise DpgBenchError(
                f"backend '{self.name}' needs a model: --backend-arg model=HUB_ID or model=/path/to/folder"
            )
        if c.cpu_offload not in ("none", "model", "sequential"):
            raise DpgBenchError(
                f"backend option cpu_offload={c.cpu_offload!r}: use none, model or sequential"
            )
        if c.batch_size < 1:
            raise DpgBenchError(f"backend option batch_size={c.batch_size}: use 1 or more")
        for key in ("steps", "width", "height"):
            value = getattr(c, key)
            if value is not None and value < 1:
                raise DpgBenchError(f"backend option {key}={value}: use a positive number")

    def load_kwargs(self) -> dict[str, Any]:
        """Extra from_pretrained arguments of a model family (e.g. no safety checker, no watermark)."""
        return {}

    def call_kwargs(self) -> dict[str, Any]:
        """Extra pipeline call arguments of a model family (e.g. PixArt's resolution binning)."""
        return {}

    def _load(self) -> Any:
        from diffusers import DiffusionPipeline

        try:
            with quiet_libraries(warnings=True):  # e.g. unused weights in a local folder stay visible
                pipe = DiffusionPipeline.from_pretrained(
                    self.folder, torch_dtype=self.dtype, variant=self.config.variant, **self.load_kwargs()
                )
        except (OSError, ValueError) as exc:
            raise DpgBenchError(
                f"backend '{self.name}': could not load a diffusers pipeline from {self.folder} "
                f"({one_line(exc)}); check the folder holds model_index.json and its weights"
            ) from exc
        found = type(pipe).__name__
        if self.pipeline_classes and found not in self.pipeline_classes:
            raise DpgBenchError(
                f"backend '{self.name}' expects a {' or '.join(self.pipeline_classes)}, but "
                f"{self.config.model} is a {found}; use the matching backend or --backend diffusers"
            )
        pipe.set_progress_bar_config(disable=True)  # the CLI draws its own progress bar
        return pipe

    def _configure(self) -> None:
        c, pipe = self.config, self.pipe
        if c.scheduler or c.scheduler_args:
            import diffusers

            scheduler_cls: Any = type(pipe.scheduler)
            if c.scheduler:
                scheduler_cls = getattr(diffusers, c.scheduler, None)
                if scheduler_cls is None or not c.scheduler.endswith("Scheduler"):
                    raise DpgBenchError(
                        f"backend option scheduler={c.scheduler!r} is not a diffusers scheduler class; "
                        "use a name like DPMSolverMultistepScheduler or EulerDiscreteScheduler"
                    )
            overrides = parse_json_object(c.scheduler_args, "scheduler_args")
            pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **overrides)
        if c.cpu_offload != "none":
            if self.device.split(":")[0] != "cuda":
                raise DpgBenchError(
                    f"backend option cpu_offload={c.cpu_offload} needs a CUDA device, not {self.device}; "
                    "use cpu_offload=none"
                )
            offload = (
                pipe.enable_model_cpu_offload
                if c.cpu_offload == "model"
                else pipe.enable_sequential_cpu_offload
            )
            offload(device=self.device)
        else:
            pipe.to(self.device)
        if c.attention_slicing:
            pipe.enable_attention_slicing()
        if c.compile:
            import torch

            denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
            setattr(pipe, denoiser, torch.compile(getattr(pipe, denoiser)))

    # -------------------------------------------------------------------------------------- generation

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        """One image per seed; image i depends only on (prompt, seeds[i]) and the config."""
        import torch

        images: list[Image.Image] = []
        size = self.config.batch_size
        for start in range(0, len(seeds), size):
            chunk = list(seeds[start : start + size])
            # 1. Pad a short chunk with copies of its last seed: same shapes, so the same kernels and
            #    the same bits as in a full batch (measured: a batch of 1 differs from a batch of 4 in
            #    the last bit of some pixels on CPU; batches of 2, 4 and 8 agree).
            padded = chunk + [chunk[-1]] * (size - len(chunk)) if self.pad_batches else chunk
            # 2. One CPU generator per image: a seed means the same starting noise on any device.
            generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in padded]
            try:
                with quiet_libraries():
                    self._note_length(prompt)
                    out = self.pipe(
                        prompt=prompt,
                        num_images_per_prompt=len(padded),
                        generator=generators,
                        output_type="pil",
                        **self.pipeline_arguments(),
                    )
            except Exception as exc:
                if is_out_of_memory(exc):
                    self.pad_batches = False
                    if self.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                raise
            # 3. Keep the real images, drop the padding.
            images.extend(out.images[: len(chunk)])
        return images

    def token_limit(self) -> int | None:
        """Tokens the pipeline's (first) text encoder takes; longer prompts are cut by the pipeline."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        limit = self.pipeline_arguments().get("max_sequence_length") or getattr(
            tokenizer, "model_max_length", None
        )
        # Tokenizers without a limit report a huge sentinel (int(1e30)).
        return limit if isinstance(limit, int) and 0 < limit < 100_000 else None

    def _note_length(self, prompt: str) -> None:
        limit = self.token_limit()
        if limit is None or prompt in self.long_prompts:
            return
        if len(self.pipe.tokenizer(prompt).input_ids) > limit:
            self.long_prompts.add(prompt)

    def pipeline_arguments(self) -> dict[str, Any]:
        """Steps, guidance and size (only those set: none means the pipeline's default), family extras."""
        c = self.config
        named = {
            "num_inference_steps": c.steps,
            "guidance_scale": c.guidance,
            "width": c.width,
            "height": c.height,
        }
        args: dict[str, Any] = {key: value for key, value in named.items() if value is not None}
        if c.negative_prompt:
            # Only when set: pipelines differ in what "no negative prompt" means (SDXL uses zeros for
            # None, PixArt encodes ""), and their own default is the faithful choice.
            args["negative_prompt"] = c.negative_prompt
        return args | self.call_kwargs() | self.extra_call_args

    # ------------------------------------------------------------------------------------- provenance

    def info(self) -> dict[str, Any]:
        import torch

        pipe = self.pipe
        effective = pipeline_defaults(pipe) | self.pipeline_arguments()
        native = native_size(pipe)
        return {
            "name": self.name,
            "model": self.config.model,
            "revision": None if self.commit == "local" else self.config.revision,
            "resolved_commit": self.commit,
            "local_fingerprint": folder_fingerprint(self.folder) if self.commit == "local" else None,
            "pipeline": type(pipe).__name__,
            "components": {
                # _orig_mod: the class under a torch.compile wrapper
                name: type(getattr(module, "_orig_mod", module)).__name__
                for name, module in pipe.components.items()
                if module is not None
            },
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "device_name": device_name(self.device),
            "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config": jsonable(dict(pipe.scheduler.config)),
            "steps": effective.get("num_inference_steps"),
            "guidance": effective.get("guidance_scale"),
            "width": effective.get("width") or native,
            "height": effective.get("height") or native,
            "negative_prompt": self.config.negative_prompt,
            "call_args": jsonable({k: v for k, v in effective.items() if k not in CORE_ARGS}),
            "noise": "one torch CPU generator per image, seeded with the image seed",
            "batch_size": self.config.batch_size,
            "padded_batches": self.pad_batches,
            "config": asdict(self.config),
            "packages": package_versions(),
            "cuda": torch.version.cuda,
            "torch_threads": torch.get_num_threads(),
            "text_token_limit": self.token_limit(),
            "prompts_over_token_limit": len(self.long_prompts),
        }


CORE_ARGS = ("num_inference_steps", "guidance_scale", "width", "height", "negative_prompt")


# ------------------------------------------------------------------------------------------- helpers


def resolve_device(text: str) -> str:
    import torch

    if text != "auto":
        return text
    if torch.cuda.is_available():
        # Under torchrun / accelerate launch each rank takes its own GPU.
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(text: str, device: str) -> str:
    if text == "auto":
        # Half precision is what the model cards use on GPUs; on CPU it is slow or unsupported.
        return "float32" if device == "cpu" else "float16"
    if text.lower() not in DTYPES:
        raise DpgBenchError(f"backend option dtype={text!r}: use auto, fp32, fp16 or bf16")
    return DTYPES[text.lower()]


def parse_json_object(text: str, key: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DpgBenchError(
            f"backend option {key}: not valid JSON ({exc.msg} at character {exc.pos}); "
            f"""write it like {key}='{{"name": 1}}'"""
        ) from None
    if not isinstance(value, dict):
        raise DpgBenchError(f'backend option {key}: expected a JSON object like {{"name": 1}}')
    return value


@contextmanager
def quiet_libraries(warnings: bool = False) -> Iterator[None]:
    """diffusers/transformers loading bars off for a call (the CLI draws its own bar), and unless
    `warnings`, their warnings too (prompt truncation is counted in info() instead of warned once per
    prompt; hub lookups end in our own error). Errors still raise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    bars = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for logger in loggers:
        if not warnings:
            logger.setLevel(logging.ERROR)
    for module, _ in bars:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for module, enabled in bars:
            if enabled:
                module.enable_progress_bar()


def offline_mode() -> bool:
    import huggingface_hub.constants

    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE"))
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or any(
        flag.upper() in ("1", "ON", "YES", "TRUE") for flag in flags
    )


def locate_pipeline(model: str, revision: str, variant: str | None, backend: str) -> tuple[str, str]:
    """(folder, commit): a local folder as given ("local"), or the hub snapshot downloaded/cached."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise DpgBenchError(
                f"{path}: not a diffusers pipeline folder (no model_index.json); "
                "save one with pipe.save_pretrained(folder) or give a hub id"
            )
        return str(path), "local"
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1 or "\\" in model
    if looks_like_path:
        raise DpgBenchError(
            f"model {model!r}: no such folder; give an existing pipeline folder or a hub id like org/name"
        )
    from diffusers import DiffusionPipeline

    try:
        with quiet_libraries():
            folder = str(DiffusionPipeline.download(model, revision=revision, variant=variant))
    except Exception as exc:  # hub errors come as OSError, HTTPError, ValueError... all mean the same
        raise DpgBenchError(
            f"backend '{backend}': cannot get model {model!r} at revision {revision!r} "
            f"({root_cause(exc)}); {why_not_found(exc)}. Download it where the hub is reachable "
            f"(`hf download {model} --local-dir DIR`) and pass the folder: --backend-arg model=DIR"
        ) from exc
    match = SNAPSHOT_COMMIT.search(folder)
    return folder, match.group(1) if match else "unknown"


def why_not_found(exc: BaseException) -> str:
    """Offline mode, no network, or a hub answer (no such repo/revision, gated): what to do differs."""
    import huggingface_hub.constants

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    cache = huggingface_hub.constants.HF_HUB_CACHE
    if offline_mode():
        return f"offline mode is on (HF_HUB_OFFLINE=1), so only the local cache ({cache}) was searched"
    if names & {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"}:
        return (
            "the hub has no such repo or revision, or it is private/gated "
            "(accept its license on the model page and log in with `hf auth login`)"
        )
    if any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain) or names & {
        "ConnectError",
        "ConnectTimeout",
        "gaierror",
        "MaxRetryError",
        "NameResolutionError",
    }:
        return (
            "the hub could not be reached (no network?) and the model is not in the local cache "
            f"({cache}); offline mode is off (HF_HUB_OFFLINE unset)"
        )
    return "offline mode is off (HF_HUB_OFFLINE unset), so the network was tried"


def root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain, in one line: the hub wraps the useful one several times."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return one_line(seen)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def is_out_of_memory(exc: BaseException) -> bool:
    """The same test generate.py applies before retrying a prompt image by image."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def pipeline_defaults(pipe: Any) -> dict[str, Any]:
    """Defaults of the pipeline's __call__ for the core arguments, so info() shows what was used."""
    import inspect

    params = inspect.signature(type(pipe).__call__).parameters
    return {
        name: params[name].default
        for name in CORE_ARGS
        if name in params and params[name].default is not inspect.Parameter.empty
    }


def native_size(pipe: Any) -> int | None:
    """Image side the pipeline uses when width/height are None: sample_size x VAE scale factor."""
    # `is None`, not `or`: a torch.compile'd module refuses truth tests.
    denoiser = getattr(pipe, "unet", None)
    if denoiser is None:
        denoiser = getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    if isinstance(sample, int) and isinstance(scale, int):
        return sample * scale
    return None


def folder_fingerprint(folder: str) -> str:
    """sha256 over every file's relative path and size plus the content of its JSON/TXT configs.

    Cheap (weights are not read) yet changes when a component is swapped or re-saved differently.
    """
    digest = hashlib.sha256()
    root = Path(folder)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        digest.update(f"{rel}\0{file.stat().st_size}\0".encode())
        if file.suffix in (".json", ".txt"):
            digest.update(file.read_bytes())
    return digest.hexdigest()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    return device


def package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def jsonable(value: Any) -> Any:
    """Round-trip through JSON (tuples -> lists, odd scalars -> str) so manifests always serialise."""
    return json.loads(json.dumps(value, default=str))
