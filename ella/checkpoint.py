"""Loading ELLA / LLM4GEN weights from files, folders or the hub, strictly, and checking the base UNet.

Owns strict loading (a `CheckpointError` with a one-line message listing the offending keys and the
fix), the checks that a base UNet and a text encoder fit a TSC, and the defaults naming the released
checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ella.errors import CheckpointError as CheckpointError  # re-exported: ella.checkpoint.CheckpointError
from ella.errors import listing
from ella.llm4gen import LLM4GEN_REPO, LLM4GENAdapter
from ella.model import ELLA

ELLA_REPO = "QQGYLab/ELLA"
ELLA_SD15_FILE = "ella-sd1.5-tsc-t5xl.safetensors"
LLM4GEN_FILE = "projector.pth"
# Folder layouts written by `save_pretrained` (ours) besides the single released files.
_FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def resolve(source: str | Path, filename: str | None = None, revision: str | None = None) -> Path:
    """A local file/folder as is; otherwise `source` is a hub repo id and `filename` is downloaded."""
    path = Path(source)
    if path.exists():
        return path / filename if filename and path.is_dir() and (path / filename).exists() else path
    if str(source).count("/") != 1 or not filename:
        raise CheckpointError(f"checkpoint '{source}' not found: give a .safetensors/.pth file or a folder")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(source), filename, revision=revision))
    except Exception as exc:  # the hub client raises many types (offline, 404, auth)
        raise CheckpointError(
            f"could not fetch {filename} from the hub repo {source} ({type(exc).__name__}); "
            f"download it and pass the local path instead"
        ) from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch (.pth/.pt/.bin) file, or of a `save_pretrained` folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in _FOLDER_WEIGHTS if (path / name).exists()]
        if not found:
            raise CheckpointError(f"{path} has none of {', '.join(_FOLDER_WEIGHTS)}: is it a model folder?")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
            raise CheckpointError(f"{path} is not a readable .safetensors file ({_reason(exc)})") from exc
    try:
        # weights_only: a checkpoint is data; never unpickle arbitrary objects from a downloaded file.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors of every kind (KeyError, UnpicklingError, ...)
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({_reason(exc)}); give a .safetensors/.pth "
            "state dict or a save_pretrained folder"
        ) from exc
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return dict(loaded)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path, assign: bool = False
) -> None:
    """load_state_dict(strict=True), but the error lists missing, unexpected and mis-shaped keys in one line.

    `assign=True` adopts the given tensors (device and dtype included), e.g. into a model built on `meta`.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {listing(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes (file vs model) {listing(misshaped)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(model).__name__}: {'; '.join(problems)}. "
            f"Check that the file holds {type(model).__name__} weights, or pass its config (a folder with config.json)"
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _converted(state_dict: Mapping[str, torch.Tensor], device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # Cast before loading: ModelMixin.to(dtype) logs a spurious float32 warning in diffusers 0.39.
    return {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in state_dict.items()
    }


def infer_ella_config(state_dict: Mapping[str, torch.Tensor], heads: int = 8) -> dict[str, Any] | None:
    """ELLA config read off tensor shapes (heads cannot be, so it is given); None if keys are not ELLA's.

    Tolerates a few missing tensors so that the strict load can then name them precisely.
    """
    time_weight = state_dict.get("time_embedding.linear_1.weight")
    latents = state_dict.get("connector.latents")
    time_aware = state_dict.get("connector.time_aware_linear.weight")
    if time_weight is None or (latents is None and time_aware is None):
        return None
    layers = {k.split(".")[2] for k in state_dict if k.startswith("connector.perceiver_blocks.")}
    proj_in = state_dict.get("connector.proj_in.weight")
    proj_out = state_dict.get("connector.proj_out.0.weight")
    pooled = state_dict.get("pooled_proj.1.weight")
    return {
        "time_channel": time_weight.shape[1],
        "time_embed_dim": time_weight.shape[0],
        "width": latents.shape[1] if latents is not None else time_aware.shape[0],  # type: ignore[union-attr]
        "num_latents": latents.shape[0] if latents is not None else 64,
        "layers": len(layers),
        "heads": heads,
        "input_dim": None if proj_in is None else proj_in.shape[1],
        "output_dim": None if proj_out is None else proj_out.shape[0],
        "pooled_dim": None if pooled is None else pooled.shape[0],
    }


def load_tsc(
    source: str | Path = ELLA_REPO,
    filename: str | None = ELLA_SD15_FILE,
    *,
    heads: int = 8,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ELLA:
    """An ELLA TSC from the released file (default), any single file, or a `save_pretrained` folder.

    A folder's config.json gives the architecture; for a single file it is read off the tensor shapes
    (and `heads`). Keys must match exactly.
    """
    path = resolve(source, filename, revision)
    state_dict = read_state_dict(path)
    config_file = path / "config.json" if path.is_dir() else None
    if config_file is not None and config_file.exists():
        config = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
    else:
        config = infer_ella_config(state_dict, heads) or {}
    try:
        with torch.device("meta"):
            model = ELLA(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot build ELLA from its config ({exc}); check heads (8 when released)"
        ) from exc
    load_strict(model, _converted(state_dict, device, dtype), path, assign=True)
    return model.eval()


def load_llm4gen_adapter(
    source: str | Path = LLM4GEN_REPO,
    filename: str | None = LLM4GEN_FILE,
    *,
    heads: int = 8,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LLM4GENAdapter:
    """The CAM from the released `projector.pth` (default) or a folder/file of the same layout."""
    path = resolve(source, filename, revision)
    state_dict = read_state_dict(path)
    config: dict[str, Any] = {"heads": heads}
    llm_proj = state_dict.get("CrossFusionModule.0.llm_proj.weight")
    if llm_proj is not None:
        blocks = {k.split(".")[1] for k in state_dict if k.startswith("CrossFusionModule.")}
        ffn = state_dict.get("CrossFusionModule.0.FFN.0.weight")
        config.update(clip_dim=llm_proj.shape[0], llm_dim=llm_proj.shape[1], depth=len(blocks))
        if ffn is not None:
            config["mlp_ratio"] = ffn.shape[0] // llm_proj.shape[0]
    try:
        with torch.device("meta"):
            model = LLM4GENAdapter(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build the CAM ({exc}); check heads (8 when released)") from exc
    load_strict(model, _converted(state_dict, device, dtype), path, assign=True)
    return model.eval()


def sdxl_pooled_dim(unet_config: Mapping[str, Any]) -> int | None:
    """Width of the pooled text embedding an SDXL-style UNet adds to its time embedding, else None."""
    if unet_config.get("addition_embed_type") != "text_time":
        return None
    # The added conditioning is [pooled text; 6 micro-conditioning numbers x addition_time_embed_dim].
    return int(
        unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
    )


def check_base(tsc: ELLA, unet_config: Mapping[str, Any]) -> None:
    """Refuse a UNet the TSC cannot drive (e.g. an SDXL UNet with the SD 1.5 TSC), saying which fits."""
    unet_width = unet_config.get("cross_attention_dim")
    pooled = sdxl_pooled_dim(unet_config)
    tsc_pooled = tsc.config["pooled_dim"]
    if pooled is None and tsc_pooled is not None:
        raise CheckpointError(
            f"the TSC is an ELLA-SDXL one ({tsc.output_dim}-wide tokens and a pooled head) but this UNet "
            f"(cross_attention_dim {unet_width}) takes no pooled embedding: use it with an SDXL base "
            "(backend ella-sdxl)"
        )
    kind = "an SDXL" if pooled is not None else "this"
    if unet_width != tsc.output_dim:
        released = " (SD 1.x for the released TSC)" if tsc.output_dim == 768 else ""
        raise CheckpointError(
            f"the TSC makes {tsc.output_dim}-wide tokens but {kind} UNet's cross_attention_dim is {unet_width}: "
            f"use a base whose UNet takes {tsc.output_dim}{released}, or a TSC trained for this base "
            f"(ELLA(output_dim={unet_width}{f', pooled_dim={pooled}' if pooled else ''}))"
        )
    if pooled is not None and tsc_pooled != pooled:
        raise CheckpointError(
            f"an SDXL UNet needs a {pooled}-wide pooled text embedding but the TSC gives "
            f"{tsc_pooled or 'none'}: use an ELLA-SDXL TSC (ELLA(output_dim={unet_width}, pooled_dim={pooled}))"
        )


def text_width(tsc: ELLA) -> int:
    """Width of the text features the TSC reads: its proj_in's input, or its own width without proj_in."""
    return int(tsc.config["input_dim"] or tsc.config["width"])


def check_text_width(tsc: ELLA, hidden_size: int, source: object | None = None) -> None:
    """Refuse a text encoder whose features the TSC cannot read (before any image is made)."""
    expected = text_width(tsc)
    if hidden_size != expected:
        named = f" {source}" if source is not None else ""
        raise CheckpointError(
            f"the text encoder{named} makes {hidden_size}-wide features but the TSC takes {expected}: "
            "use the T5 the TSC was trained with (google/flan-t5-xl, 2048, for the released ELLA)"
        )
