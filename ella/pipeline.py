"""Inference with ELLA on stock diffusers pipelines (SD 1.x and ELLA-SDXL).

Owns loading a base pipeline without its CLIP encoders, attaching/detaching the TSC through
`ELLAProxyUNet`, and turning T5 features into the pipeline's keyword arguments. The T5 encoder runs
once per prompt (prompt and negative in one call); images of one prompt share those features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ella.model import ELLA
from ella.text_encoder import T5TextEmbedder, TextFeatures, pad_features
from ella.unet_proxy import ELLAProxyUNet


def load_pipeline(
    base: str | Path,
    tsc: ELLA,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> Any:
    """A StableDiffusionPipeline (or SDXL one, if the TSC has a pooled head) with the TSC attached.

    The CLIP text encoders and the safety checker are not loaded: T5 + TSC replace the text side.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if tsc.config["pooled_dim"] is not None:
        pipe = StableDiffusionXLPipeline.from_pretrained(
            base,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
            torch_dtype=dtype,
            revision=revision,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            base,
            text_encoder=None,
            tokenizer=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            torch_dtype=dtype,
            revision=revision,
        )
    # nn.Module.to: diffusers 0.39's ModelMixin.to logs a spurious "keep in float32: []" warning on casts.
    attach(pipe, torch.nn.Module.to(tsc, device=device, dtype=dtype))
    return pipe.to(device)


def attach(pipe: Any, tsc: ELLA) -> Any:
    """Wrap `pipe.unet` with the TSC (refusing a base it cannot drive); returns the pipeline."""
    if not isinstance(pipe.unet, ELLAProxyUNet):
        pipe.unet = ELLAProxyUNet(tsc, pipe.unet)
    return pipe


def detach(pipe: Any) -> Any:
    """Give the pipeline its plain UNet back (to compare with the base model, for instance)."""
    if isinstance(pipe.unet, ELLAProxyUNet):
        pipe.unet = pipe.unet.unet
    return pipe


def pipeline_inputs(
    pipe: Any, prompt: TextFeatures, negative: TextFeatures, count: int
) -> dict[str, torch.Tensor]:
    """Keyword arguments for `pipe(...)`: one row of features per image, prompt and negative padded alike.

    For SDXL, zero pooled embeddings stand in for CLIP's: the proxy replaces them with the TSC's
    timestep-aware pooled output at every step.
    """
    proxy = getattr(pipe.unet, "_orig_mod", pipe.unet)  # under torch.compile, the wrapped module
    if not isinstance(proxy, ELLAProxyUNet):
        raise ValueError("the pipeline has no TSC attached: call ella.pipeline.attach(pipe, tsc) first")
    prompt, negative = pad_features([prompt, negative])
    device, dtype = proxy.device, proxy.dtype

    def rows(features: TextFeatures) -> torch.Tensor:
        if len(features) not in (1, count):
            raise ValueError(f"features for {len(features)} prompts cannot make {count} images")
        return features.hidden.to(device=device, dtype=dtype).expand(count, -1, -1).contiguous()

    inputs = {"prompt_embeds": rows(prompt), "negative_prompt_embeds": rows(negative)}
    pooled_dim = proxy.tsc.config["pooled_dim"]
    if pooled_dim is not None:
        placeholder = torch.zeros(count, pooled_dim, device=device, dtype=dtype)
        inputs |= {"pooled_prompt_embeds": placeholder, "negative_pooled_prompt_embeds": placeholder.clone()}
    return inputs


def generate(
    pipe: Any,
    embedder: T5TextEmbedder,
    prompt: str,
    generators: Sequence[torch.Generator],
    negative_prompt: str = "",
    **pipe_kwargs: Any,
) -> list[Any]:
    """Images of one prompt, one per generator; T5 runs once (prompt and negative together)."""
    both = embedder.encode([prompt, negative_prompt])
    prompt_features = TextFeatures(both.hidden[:1], None if both.mask is None else both.mask[:1])
    negative_features = TextFeatures(both.hidden[1:], None if both.mask is None else both.mask[1:])
    inputs = pipeline_inputs(pipe, prompt_features, negative_features, len(generators))
    return list(pipe(**inputs, generator=list(generators), **pipe_kwargs).images)
