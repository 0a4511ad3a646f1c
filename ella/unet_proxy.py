"""A stand-in for a diffusers UNet that runs the TSC first, so stock SD 1.x / SDXL pipelines take ELLA.

Owns `ELLAProxyUNet`: the pipeline hands it cached T5 features as `encoder_hidden_states`; at every
step the TSC turns them and the current timestep into the UNet's conditioning, for every row of the
batch (both classifier-free-guidance halves). For SDXL it also supplies the pooled text embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ella.checkpoint import check_base
from ella.model import ELLA


class ELLAProxyUNet(nn.Module):
    """Holds the real UNet and the TSC; looks like the UNet to the pipeline (config, dtype, device, ...)."""

    def __init__(self, tsc: ELLA, unet: nn.Module):
        super().__init__()
        check_base(tsc, unet.config)  # type: ignore[arg-type]
        self.tsc = tsc
        self.unet = unet

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.unet.device  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        # Pipelines also read UNet attributes such as `add_embedding` (SDXL) or `attn_processors`.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        """`encoder_hidden_states` are T5 features; rows that are exactly zero are padding (flexible length)."""
        is_token = (encoder_hidden_states != 0).any(dim=-1)
        # Fixed-length features have no zero rows: no mask at all, exactly as the released model ran.
        text_mask = None if bool(is_token.all()) else is_token
        tokens, pooled = self.tsc.encode(encoder_hidden_states, timestep, text_mask)
        if pooled is not None:
            added_cond_kwargs = {**(added_cond_kwargs or {}), "text_embeds": pooled.to(self.dtype)}
        return self.unet(
            sample, timestep, tokens.to(self.dtype), *args, added_cond_kwargs=added_cond_kwargs, **kwargs
        )
