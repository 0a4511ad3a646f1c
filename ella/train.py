"""Training the TSC with the ELLA paper's recipe: frozen UNet, VAE and LLM; only the TSC learns.

Owns `TrainConfig`, the frozen models, the noise-prediction loss, checkpoints and exact resume, the loop
(data and feature caching live in `train_data.py`), and the command line
(`python -m ella.train`, or `accelerate launch -m ella.train` for several GPUs / mixed precision).
Every random draw (data order, noise, timesteps, flips, caption dropout) is derived from (seed, micro-step,
process), so a resumed run continues bit for bit where the interrupted one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ella.checkpoint import check_base, check_text_width, load_tsc, sdxl_pooled_dim
from ella.model import ELLA
from ella.text_encoder import FLAN_T5_XL, T5TextEmbedder, TextFeatures
from ella.train_data import (
    PairDataset,
    StepBatches,
    TrainDataError,
    collate,
    load_features,
    missing_features,
    precompute_features,
    read_pairs,
)

CHECKPOINT_PREFIX = "step-"
FINAL_FOLDER = "tsc"


@dataclass
class TrainConfig:
    """Options of `ella.train.train`; every field is a `--flag` of `python -m ella.train`."""

    base: str = field(
        metadata={"help": "diffusers SD 1.x / SDXL folder or hub id (UNet, VAE, scheduler; frozen)"}
    )
    data: str = field(
        metadata={"help": "folder of images with same-named .txt captions, or a JSONL manifest"}
    )
    output_dir: str = field(metadata={"help": "where checkpoints, train_log.jsonl and the final tsc/ go"})
    text_encoder: str = field(default=FLAN_T5_XL, metadata={"help": "T5 encoder folder or hub id (frozen)"})
    init_tsc: str | None = field(
        default=None,
        metadata={"help": "start from this TSC checkpoint (file or folder) instead of fresh weights"},
    )
    width: int = field(default=768, metadata={"help": "TSC width (fresh TSC only)"})
    layers: int = field(default=6, metadata={"help": "TSC perceiver blocks (fresh TSC only)"})
    heads: int = field(default=8, metadata={"help": "TSC attention heads"})
    num_latents: int = field(default=64, metadata={"help": "TSC learned queries = tokens handed to the UNet"})
    time_channel: int = field(default=320, metadata={"help": "sinusoidal timestep channels (fresh TSC only)"})
    time_embed_dim: int = field(default=768, metadata={"help": "timestep embedding width (fresh TSC only)"})
    max_length: int | None = field(
        default=128, metadata={"help": "T5 tokens per caption; none = flexible length (padding masked)"}
    )
    resolution: int = field(
        default=512, metadata={"help": "square training size (resize shorter side, center crop)"}
    )
    random_flip: bool = field(default=False, metadata={"help": "flip half of the images horizontally"})
    caption_dropout: float = field(
        default=0.0,
        metadata={"help": "probability of training on the empty caption (for guidance); 0 = never"},
    )
    batch_size: int = field(default=16, metadata={"help": "images per device per micro-step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_steps: int = field(
        default=1000, metadata={"help": "optimizer steps in total (a resumed run continues)"}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warmup, then constant"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 = off"})
    mixed_precision: str = field(
        default="no", metadata={"help": "no, fp16 or bf16 (frozen models run in it)"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute UNet activations to save memory"}
    )
    precompute_features: bool = field(
        default=False, metadata={"help": "encode every caption once before training and drop T5 from memory"}
    )
    features_dir: str | None = field(
        default=None, metadata={"help": "where precomputed features live (default OUTPUT_DIR/t5_features)"}
    )
    checkpoint_every: int = field(default=500, metadata={"help": "save a resumable checkpoint every N steps"})
    keep_checkpoints: int | None = field(
        default=None, metadata={"help": "keep only the newest N checkpoints"}
    )
    resume: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from"}
    )
    seed: int = field(default=0, metadata={"help": "seed of every random draw"})
    num_workers: int = field(default=0, metadata={"help": "image-loading worker processes"})


# --------------------------------------------------------------------------------------------------
# The models and the loss


@dataclass
class Frozen:
    """The parts that do not learn, and what the loss needs from them."""

    unet: Any
    vae: Any
    scheduler: Any
    weight_dtype: torch.dtype
    pooled_dim: int | None


def load_frozen(
    base: str, weight_dtype: torch.dtype, device: torch.device, gradient_checkpointing: bool
) -> Frozen:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=weight_dtype)
    # The VAE stays float32: SDXL's VAE overflows in fp16, and it only encodes (no gradients).
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=torch.float32)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    for model in (unet, vae):
        model.requires_grad_(False).eval().to(device)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # still back-propagates to the TSC through the frozen UNet
    return Frozen(unet, vae, scheduler, weight_dtype, sdxl_pooled_dim(unet.config))


def fresh_tsc(config: TrainConfig, text_width: int, unet_config: Any) -> ELLA:
    cross = int(unet_config["cross_attention_dim"])
    torch.manual_seed(config.seed)  # the TSC's initial weights are part of the run's seed too
    return ELLA(
        time_channel=config.time_channel,
        time_embed_dim=config.time_embed_dim,
        width=config.width,
        layers=config.layers,
        heads=config.heads,
        num_latents=config.num_latents,
        input_dim=text_width,
        output_dim=None if cross == config.width else cross,
        pooled_dim=sdxl_pooled_dim(unet_config),
    )


def step_generator(seed: int, micro_step: int, rank: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed((seed * 1_000_003 + micro_step) * 1_009 + rank)


def denoising_loss(
    tsc: torch.nn.Module,
    frozen: Frozen,
    pixels: torch.Tensor,
    text: TextFeatures,
    generator: torch.Generator,
    time_ids: torch.Tensor | None = None,
    resolution: int | None = None,
) -> torch.Tensor:
    """MSE between the frozen UNet's prediction (conditioned by the TSC) and the noise (or v) target."""
    device = pixels.device
    with torch.no_grad():
        latents = frozen.vae.encode(pixels.float()).latent_dist.sample(generator)
        latents = latents * frozen.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=device)
    steps = frozen.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (len(latents),), generator=generator, device=device)
    noisy = frozen.scheduler.add_noise(latents, noise, timesteps)
    if frozen.scheduler.config.prediction_type == "v_prediction":
        target = frozen.scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    # Through forward(), so accelerate's wrappers (DDP gradient sync, autocast) apply.
    tokens, pooled = tsc(text.hidden, timesteps, text.mask, return_pooled=True)
    added = None
    if frozen.pooled_dim is not None:
        assert time_ids is not None and resolution is not None and pooled is not None
        # SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w).
        target_size = torch.tensor([resolution, resolution], dtype=time_ids.dtype).expand(len(time_ids), 2)
        full_ids = torch.cat([time_ids, target_size], dim=1).to(device, frozen.weight_dtype)
        added = {"text_embeds": pooled.to(frozen.weight_dtype), "time_ids": full_ids}
    prediction = frozen.unet(
        noisy.to(frozen.weight_dtype), timesteps, tokens.to(frozen.weight_dtype), added_cond_kwargs=added
    ).sample
    return F.mse_loss(prediction.float(), target.float())


# --------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_folders(output_dir: Path) -> list[Path]:
    folder = output_dir / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def resolve_resume(config: TrainConfig) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        found = checkpoint_folders(Path(config.output_dir))
        return found[-1] if found else None  # nothing saved yet: start from scratch
    path = Path(config.resume)
    if not (path / "trainer_state.json").exists():
        raise TrainDataError(
            f"--resume {path} is not a checkpoint folder (no trainer_state.json): use 'latest'"
        )
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def check_config(config: TrainConfig) -> None:
    """Options that would fail later (or silently do nothing): one line naming the flag and the fix."""
    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise TrainDataError(f"--mixed-precision {config.mixed_precision}: use no, fp16 or bf16")
    if not 0 <= config.caption_dropout < 1:
        raise TrainDataError(f"--caption-dropout {config.caption_dropout}: use a probability in [0, 1)")
    at_least_one = {
        "max_steps": config.max_steps,
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "checkpoint_every": config.checkpoint_every,
        "keep_checkpoints": 1 if config.keep_checkpoints is None else config.keep_checkpoints,
        "max_length": 1 if config.max_length is None else config.max_length,
        "width": config.width,
        "layers": config.layers,
        "heads": config.heads,
        "num_latents": config.num_latents,
        "time_channel": config.time_channel,
        "time_embed_dim": config.time_embed_dim,
    }
    for name, value in at_least_one.items():
        if value < 1:
            raise TrainDataError(f"--{name.replace('_', '-')} {value}: use a whole number of at least 1")
    if config.resolution < 8 or config.resolution % 8:
        raise TrainDataError(
            f"--resolution {config.resolution}: use a multiple of 8 (the VAE downsamples 8x), e.g. 512"
        )
    if not config.learning_rate > 0:
        raise TrainDataError(f"--learning-rate {config.learning_rate}: use a positive rate (paper: 1e-4)")
    if config.weight_decay < 0 or config.warmup_steps < 0 or config.max_grad_norm < 0:
        raise TrainDataError(
            "--weight-decay, --warmup-steps and --max-grad-norm cannot be negative (0 turns them off)"
        )
    if config.num_workers < 0:
        raise TrainDataError(f"--num-workers {config.num_workers}: use 0 (load in the main process) or more")


# --------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train (or continue training) a TSC; returns the folder of the final `save_pretrained` weights.

    `on_step(step, loss)` is called on the main process after every optimizer step.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    check_config(config)
    output_dir = Path(config.output_dir)

    # 1. Accelerator (devices, processes, autocast) and the frozen models in the training precision.
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps
    )
    device = accelerator.device
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        config.mixed_precision
    ]
    try:
        frozen = load_frozen(config.base, weight_dtype, device, config.gradient_checkpointing)
    except (OSError, ValueError) as exc:  # no such folder or hub id, or not a diffusers SD layout
        raise TrainDataError(
            f"--base {config.base}: cannot load its unet/, vae/ and scheduler/ ({_first_line(exc)}); "
            "give a diffusers SD 1.x / SDXL folder or hub id"
        ) from exc
    pairs = read_pairs(config.data)

    # 2. Text features: precomputed once (T5 is then dropped from memory) or encoded per batch.
    from transformers import T5Config

    try:
        text_width = int(T5Config.from_pretrained(config.text_encoder).d_model)
    except (OSError, ValueError) as exc:
        raise TrainDataError(
            f"--text-encoder {config.text_encoder}: cannot read its T5 config ({_first_line(exc)}); "
            "give a T5 encoder folder or hub id (google/flan-t5-xl for ELLA)"
        ) from exc
    features_dir = Path(config.features_dir) if config.features_dir else output_dir / "t5_features"

    def load_embedder() -> T5TextEmbedder:
        try:
            return T5TextEmbedder.from_pretrained(
                config.text_encoder, max_length=config.max_length, device=device, dtype=weight_dtype
            )
        except OSError as exc:  # CheckpointError (weights missing) is a ValueError and passes as is
            raise TrainDataError(
                f"--text-encoder {config.text_encoder}: cannot load it ({_first_line(exc)})"
            ) from exc

    embedder: T5TextEmbedder | None = None
    if config.precompute_features:
        captions = [p.caption for p in pairs] + [""]  # "" for caption dropout
        todo = missing_features(captions, features_dir, config.text_encoder, config.max_length)
        mine = todo[accelerator.process_index :: accelerator.num_processes]
        if mine:
            precompute_features(load_embedder(), mine, features_dir, config.text_encoder)
        accelerator.wait_for_everyone()
    else:
        embedder = load_embedder()

    def text_of(batch_captions: list[str]) -> TextFeatures:
        if embedder is None:
            return load_features(batch_captions, features_dir, config.text_encoder, config.max_length, device)
        return embedder.encode(batch_captions)

    # 3. The TSC (fresh or from a checkpoint), checked against the base, with AdamW and a warmup schedule.
    if config.init_tsc:
        tsc = load_tsc(config.init_tsc, None, heads=config.heads)
    else:
        tsc = fresh_tsc(config, text_width, frozen.unet.config)
    check_base(tsc, frozen.unet.config)
    check_text_width(tsc, text_width, config.text_encoder)
    tsc.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(
        tsc.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
        eps=config.adam_epsilon,
    )
    schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps)
    tsc, optimizer = accelerator.prepare(tsc, optimizer)
    # Stepped by hand once per optimizer step (accelerate would step it once per process).
    accelerator.register_for_checkpointing(schedule)

    # 4. Resume: weights, optimizer and schedule from the checkpoint; data and noise follow from the step.
    step = 0
    resume_from = resolve_resume(config)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = json.loads((resume_from / "trainer_state.json").read_text())["step"]
    accumulation = config.gradient_accumulation_steps
    sampler = StepBatches(
        len(pairs),
        config.batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        config.seed,
        start=step * accumulation,
        stop=config.max_steps * accumulation,
    )
    loader = torch.utils.data.DataLoader(
        PairDataset(pairs, config.resolution),
        batch_sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
    )

    # 5. The loop: one micro-batch per iteration, an optimizer step every `accumulation` of them.
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    micro_step = step * accumulation
    losses: list[float] = []
    for batch in loader:
        generator = step_generator(config.seed, micro_step, accelerator.process_index, device)
        pixels = batch["pixels"].to(device)
        if config.random_flip:
            flip = torch.rand(len(pixels), generator=generator, device=device) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        batch_captions = batch["caption"]
        if config.caption_dropout > 0:
            drop = torch.rand(len(pixels), generator=generator, device=device) < config.caption_dropout
            batch_captions = ["" if d else c for c, d in zip(batch_captions, drop.tolist(), strict=True)]
        text = text_of(batch_captions)
        with accelerator.accumulate(tsc), accelerator.autocast():
            loss = denoising_loss(tsc, frozen, pixels, text, generator, batch["time_ids"], config.resolution)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(tsc.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        losses.append(float(accelerator.gather(loss.detach()).mean()))
        micro_step += 1
        if micro_step % accumulation:
            continue
        step += 1
        schedule.step()
        mean_loss = sum(losses) / len(losses)
        losses = []
        if accelerator.is_main_process:
            with log_path.open("a", encoding="utf-8") as log:
                log.write(
                    json.dumps({"step": step, "loss": mean_loss, "lr": schedule.get_last_lr()[0]}) + "\n"
                )
            if on_step is not None:
                on_step(step, mean_loss)
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save_checkpoint(accelerator, tsc, output_dir, step, config.keep_checkpoints)

    # 6. The final weights, loadable with ELLA.from_pretrained / ella.load_tsc.
    accelerator.wait_for_everyone()
    final = output_dir / FINAL_FOLDER
    if accelerator.is_main_process:
        accelerator.unwrap_model(tsc).save_pretrained(final)
    accelerator.end_training()
    # accelerate keeps the mixed-precision setting in a process-wide singleton that refuses another value;
    # forget it (not the process group) so a later train() in this process may use another precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return final


def save_checkpoint(accelerator: Any, tsc: Any, output_dir: Path, step: int, keep: int | None) -> Path:
    folder = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        accelerator.unwrap_model(tsc).save_pretrained(folder / FINAL_FOLDER)
        # Written last: a folder without it is an interrupted save and is never resumed from.
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
        if keep:
            for old in checkpoint_folders(output_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return folder


# --------------------------------------------------------------------------------------------------
# Command line


def _parse_value(text: str, hint: Any) -> Any:
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            return None
        hint = options[0]
    if hint is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise argparse.ArgumentTypeError(f"'{text}' is not a boolean; use true or false")
        return text.lower() in ("1", "true", "yes")
    return hint(text)


def _converter(hint: Any) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return _parse_value(text, hint)
        except ValueError:
            kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            kind = {int: "whole number", float: "number"}.get(kinds[0], str(kinds[0]))
            optional = " or none" if type(None) in typing.get_args(hint) else ""
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind}{optional}") from None

    return convert


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag and where the help is, exit code 1 (not 30 lines of usage)."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    described = _OneLineParser(
        prog="python -m ella.train",
        description="Train an ELLA TSC (frozen UNet, VAE and T5). Several GPUs: accelerate launch -m ella.train ...",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        required = f.default is dataclasses.MISSING
        described.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            required=required,
            default=None if required else f.default,
            type=_converter(hints[f.name]),
            help=f"{f.metadata.get('help', '')}" + ("" if required else f" (default: {f.default})"),
        )
    return described


def main(argv: Sequence[str] | None = None) -> int:
    config = TrainConfig(**vars(parser().parse_args(argv)))
    try:
        final = train(config, on_step=lambda step, loss: print(f"step {step}: loss {loss:.5f}", flush=True))
    except ValueError as error:  # TrainDataError, CheckpointError: one line with the fix
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"saved {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
