"""ELLA's Timestep-Aware Semantic Connector (TSC): LLM text features + diffusion timestep -> UNet conditioning.

Owns the TSC modules (AdaLN, perceiver blocks, the connector, the ELLA model) and attention capture.
Parameter names follow the released `QQGYLab/ELLA` checkpoints so they load strictly; the architecture
facts (shapes, norms, activation, timestep features) were read from TencentQQGYLab/ELLA `model.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


@dataclass
class AttentionCapture:
    """Attention weights recorded by `ELLA.capture_attention`.

    `calls[i][b]` is block b's softmax weights in forward call i, shape (batch, heads, num_latents,
    num_latents + text_tokens), float32: the keys are the latents first, then the text tokens.
    """

    num_latents: int
    per_block: list[list[torch.Tensor]] = field(default_factory=list)

    @property
    def calls(self) -> list[list[torch.Tensor]]:
        # Every forward call appends exactly once to each block's list.
        return [list(step) for step in zip(*self.per_block, strict=True)]

    def text_attention(self, call: int = -1, block: int = -1) -> torch.Tensor:
        """Weights from the queries to the text tokens only: (batch, heads, num_latents, text_tokens)."""
        return self.calls[call][block][..., self.num_latents :]


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine whose shift and scale come from the timestep embedding."""

    def __init__(self, dim: int, time_embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(time_embed_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        # Zero init makes a fresh block start as a plain LayerNorm (scale 0, shift 0).
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        # time_embedding: (batch, 1, time_embed_dim). The released weights put shift first, then scale.
        shift, scale = self.linear(F.silu(time_embedding)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class PerceiverBlock(nn.Module):
    """Latents attend to [latents; text]; then a squared-ReLU MLP. Every norm is timestep-modulated."""

    # Set by ELLA.capture_attention; None means "record nothing".
    attention_sink: list[torch.Tensor] | None

    def __init__(self, width: int, heads: int, time_embed_dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("sq_relu", SquaredReLU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_1 = AdaLayerNorm(width, time_embed_dim)
        self.ln_2 = AdaLayerNorm(width, time_embed_dim)
        self.ln_ff = AdaLayerNorm(width, time_embed_dim)
        self.attention_sink = None

    def forward(
        self,
        text: torch.Tensor,
        latents: torch.Tensor,
        time_embedding: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        normed_latents = self.ln_1(latents, time_embedding)
        keys = torch.cat([normed_latents, self.ln_2(text, time_embedding)], dim=1)
        attended, _ = self.attn(
            normed_latents, keys, keys, key_padding_mask=key_padding_mask, need_weights=False
        )
        if self.attention_sink is not None:
            # Recomputed on the side so the output above takes the same kernel as without capture.
            self.attention_sink.append(self._attention_weights(normed_latents, keys, key_padding_mask))
        latents = latents + attended
        return latents + self.mlp(self.ln_ff(latents, time_embedding))

    def _attention_weights(
        self, queries: torch.Tensor, keys: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(QK^T/sqrt(d)) per head, float32, from the same in-projection the attention uses."""
        width, heads = self.attn.embed_dim, self.attn.num_heads
        head_dim = width // heads
        weight = self.attn.in_proj_weight.float()
        bias = self.attn.in_proj_bias.float() if self.attn.in_proj_bias is not None else None
        q = F.linear(queries.float(), weight[:width], None if bias is None else bias[:width])
        k = F.linear(
            keys.float(), weight[width : 2 * width], None if bias is None else bias[width : 2 * width]
        )
        q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1).detach()


class PerceiverConnector(nn.Module):
    """Learned queries (shifted by the timestep) read the projected text through the perceiver blocks."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        num_latents: int,
        input_dim: int | None,
        time_embed_dim: int,
        output_dim: int | None,
    ):
        super().__init__()
        self.latents = nn.Parameter(width**-0.5 * torch.randn(num_latents, width))
        self.time_aware_linear = nn.Linear(time_embed_dim, width)
        # The released SD 1.5 TSC has proj_in (T5 width 2048 -> 768) and no proj_out.
        self.proj_in = nn.Linear(input_dim, width) if input_dim is not None else None
        self.perceiver_blocks = nn.Sequential(
            *[PerceiverBlock(width, heads, time_embed_dim) for _ in range(layers)]
        )
        self.proj_out = (
            nn.Sequential(nn.Linear(width, output_dim), nn.LayerNorm(output_dim))
            if output_dim is not None
            else None
        )

    def forward(
        self, text: torch.Tensor, time_embedding: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output tokens, latents before proj_out) so a pooled head can read the latter."""
        latents = self.latents.expand(len(text), -1, -1) + self.time_aware_linear(F.silu(time_embedding))
        if self.proj_in is not None:
            text = self.proj_in(text)
        for block in self.perceiver_blocks:
            latents = block(text, latents, time_embedding, key_padding_mask)
        output = self.proj_out(latents) if self.proj_out is not None else latents
        return output, latents


class ELLA(ModelMixin, ConfigMixin):
    """The TSC. Defaults reproduce `QQGYLab/ELLA` `ella-sd1.5-tsc-t5xl.safetensors` (66,820,608 params).

    For SDXL set `output_dim=2048` (the UNet's cross-attention width) and `pooled_dim=1280` (the pooled
    text embedding SDXL's added conditioning expects); no ELLA-SDXL weights were ever released.
    """

    config_name = "config.json"  # type: ignore[assignment]  # diffusers types it None in ConfigMixin

    @register_to_config
    def __init__(
        self,
        time_channel: int = 320,
        time_embed_dim: int = 768,
        act_fn: str = "silu",
        width: int = 768,
        layers: int = 6,
        heads: int = 8,
        num_latents: int = 64,
        input_dim: int | None = 2048,
        output_dim: int | None = None,
        pooled_dim: int | None = None,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"TSC width {width} is not divisible by heads={heads}")
        self.time_embedding = TimestepEmbedding(time_channel, time_embed_dim, act_fn=act_fn)
        self.connector = PerceiverConnector(
            width, layers, heads, num_latents, input_dim, time_embed_dim, output_dim
        )
        # SDXL only: mean of the final latents -> pooled text embedding.
        self.pooled_proj = (
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, pooled_dim))
            if pooled_dim is not None
            else None
        )

    @property
    def output_dim(self) -> int:
        """Width of the tokens handed to the UNet (its cross_attention_dim must match)."""
        return int(self.config["output_dim"] or self.config["width"])

    def timestep_embedding(self, timesteps: torch.Tensor | float | int, batch: int) -> torch.Tensor:
        """Sinusoidal features (cos first, no frequency shift) -> MLP; returns (batch, 1, time_embed_dim)."""
        weight = self.time_embedding.linear_1.weight
        steps = torch.as_tensor(timesteps, device=weight.device).reshape(-1)
        if steps.numel() == 1:
            steps = steps.expand(batch)
        if steps.numel() != batch:
            raise ValueError(f"got {steps.numel()} timesteps for a batch of {batch}; pass one or one per row")
        features = get_timestep_embedding(
            steps, self.config["time_channel"], flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return self.time_embedding(features.to(weight.dtype)).unsqueeze(1)

    def encode(
        self,
        text_features: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens for the UNet (batch, num_latents, output_dim), pooled (batch, pooled_dim) or None).

        `text_mask` (batch, tokens), 1 = real token: padding is hidden from the attention (flexible-length
        prompts). Without it every token is attended, as the released model was trained (fixed length 128).
        """
        batch = len(text_features)
        time_embedding = self.timestep_embedding(timesteps, batch)
        key_padding_mask = None
        if text_mask is not None:
            latent_keys = torch.zeros(
                batch, self.config["num_latents"], dtype=torch.bool, device=text_mask.device
            )
            key_padding_mask = torch.cat([latent_keys, ~text_mask.bool()], dim=1).to(text_features.device)
        dtype = self.time_embedding.linear_1.weight.dtype
        tokens, latents = self.connector(text_features.to(dtype), time_embedding, key_padding_mask)
        pooled = self.pooled_proj(latents.mean(dim=1)) if self.pooled_proj is not None else None
        return tokens, pooled

    def forward(
        self,
        text_features: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        text_mask: torch.Tensor | None = None,
        return_pooled: bool = False,
    ) -> Any:
        """The UNet tokens; with `return_pooled`, the `encode` pair (what training through DDP needs)."""
        tokens, pooled = self.encode(text_features, timesteps, text_mask)
        return (tokens, pooled) if return_pooled else tokens

    @contextmanager
    def capture_attention(self) -> Iterator[AttentionCapture]:
        """Record every block's attention weights while inside the block; outputs stay bit-identical."""
        blocks = list(self.connector.perceiver_blocks)
        capture = AttentionCapture(num_latents=self.config["num_latents"], per_block=[[] for _ in blocks])
        for block, sink in zip(blocks, capture.per_block, strict=True):
            assert isinstance(block, PerceiverBlock)
            block.attention_sink = sink
        try:
            yield capture
        finally:
            for block in blocks:
                assert isinstance(block, PerceiverBlock)
                block.attention_sink = None
