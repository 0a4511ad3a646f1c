"""LLM4GEN (AAAI 2025): the Cross-Adapter Module (CAM) and the RankGen-T5-XL text encoder it reads.

Owns `LLM4GENAdapter` (names match the released `Shui-VL/LLM4GEN-models` `projector.pth`), the
RankGen encoder declared here so no remote code runs, and the prompt encoding of the release
(facts from YUHANG-Ma/LLM4GEN `infer_llm4gen_sd15.py`: "pre " prefix, 256 tokens, zero padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import T5Config, T5EncoderModel, T5PreTrainedModel, T5Tokenizer

from ella.errors import refuse_missing_weights
from ella.text_encoder import quiet_transformers

RANKGEN_ENCODER = "kalpeshk2011/rankgen-t5-xl-all"
# RankGen reuses the T5 v1.1 sentencepiece vocabulary; its own repo has no tokenizer files.
RANKGEN_TOKENIZER = "google/t5-v1_1-xl"
LLM4GEN_REPO = "Shui-VL/LLM4GEN-models"  # projector.pth at the root, the fine-tuned UNet in unet/
LLM_TOKENS = 256


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CrossFusionBlock(nn.Module):
    """LLM tokens (queries) read the CLIP tokens (keys/values); residual attention, then a 4x FFN.

    The released names are kept although they are swapped relative to their roles: `q_norm` normalises
    the CLIP tokens (the keys/values) and `kv_norm` the projected LLM tokens (the queries).
    """

    def __init__(self, llm_dim: int, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.llm_proj = nn.Linear(llm_dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.FFN = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), QuickGELU(), nn.Linear(mlp_ratio * dim, dim)
        )
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)

    def forward(self, clip_tokens: torch.Tensor, llm_tokens: torch.Tensor) -> torch.Tensor:
        llm = self.llm_proj(llm_tokens)
        clip_normed = self.q_norm(clip_tokens)
        llm_normed = self.kv_norm(llm)

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split_heads(self.q_proj(llm_normed)),
            split_heads(self.k_proj(clip_normed)),
            split_heads(self.v_proj(clip_normed)),
        )
        llm = llm + self.out_proj(attended.transpose(1, 2).flatten(2))
        llm = llm + self.FFN(self.norm(llm))
        # The UNet sees the untouched CLIP tokens followed by the refined LLM tokens (77 + 256).
        return torch.cat([clip_tokens, llm], dim=1)


class LLM4GENAdapter(ModelMixin, ConfigMixin):
    """The CAM. Defaults reproduce `projector.pth` (20 tensors, 8,663,040 parameters, SD 1.5 + T5-XL)."""

    config_name = "config.json"  # type: ignore[assignment]  # diffusers types it None in ConfigMixin

    @register_to_config
    def __init__(
        self, clip_dim: int = 768, llm_dim: int = 2048, heads: int = 8, depth: int = 1, mlp_ratio: int = 4
    ):
        super().__init__()
        self.CrossFusionModule = nn.ModuleList(
            [CrossFusionBlock(llm_dim, clip_dim, heads, mlp_ratio) for _ in range(depth)]
        )

    def forward(self, clip_tokens: torch.Tensor, llm_tokens: torch.Tensor) -> torch.Tensor:
        """(batch, 77, clip_dim) CLIP hidden states + (batch, 256, llm_dim) -> (batch, 77 + 256, clip_dim).

        With depth > 1 each block refines the LLM tokens again and re-appends them, as released.
        """
        dtype = self.dtype
        tokens = clip_tokens.to(dtype)
        for block in self.CrossFusionModule:
            tokens = block(tokens, llm_tokens.to(dtype))
        return tokens


class RankGenT5Encoder(T5PreTrainedModel):
    """RankGen's checkpoint layout (`t5_encoder.*` + `projection.weight`), declared here, no remote code.

    LLM4GEN uses the per-token hidden states of `t5_encoder`; `projection` (RankGen's retrieval vector
    of the first token) is kept only so the checkpoint loads without unexpected keys.
    """

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.t5_encoder = T5EncoderModel(config)
        self.projection = nn.Linear(config.d_model, config.d_model, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token hidden states (batch, tokens, d_model): what the CAM reads."""
        return self.t5_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class RankGenEmbedder:
    """Prompts -> (batch, 256, d_model) RankGen features, tokenised exactly as the LLM4GEN release does."""

    def __init__(self, model: RankGenT5Encoder, tokenizer, max_length: int = LLM_TOKENS):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        encoder: str | Path = RANKGEN_ENCODER,
        tokenizer: str | Path | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        max_length: int = LLM_TOKENS,
    ) -> RankGenEmbedder:
        """`tokenizer` defaults to the T5 v1.1 one for hub ids, to the encoder folder for local folders.

        The slow sentencepiece `T5Tokenizer`, as the release uses. A folder without RankGen's
        `t5_encoder.*` weights raises `CheckpointError` (it would otherwise run with random layers).
        """
        if tokenizer is None:
            tokenizer = encoder if Path(encoder).is_dir() else RANKGEN_TOKENIZER
        with quiet_transformers():
            model, info = RankGenT5Encoder.from_pretrained(
                encoder, dtype=dtype or torch.float32, output_loading_info=True
            )
            # `projection` is never used by LLM4GEN: only the t5_encoder weights must all be there.
            refuse_missing_weights(
                info, encoder, "RankGenT5Encoder (t5_encoder.*)", unused=["projection.weight"]
            )
            loaded_tokenizer = T5Tokenizer.from_pretrained(tokenizer, legacy=True)
        return cls(model.to(device), loaded_tokenizer, max_length)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def token_ids(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (batch, max_length).

        As released: "pre " prefix (RankGen's prefix-vector marker), tokens cut at max_length without
        re-adding </s>, padded with id 0 and mask 0.
        """
        encoded = self.tokenizer([f"pre {p}" for p in prompts], add_special_tokens=True)
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, token_ids in enumerate(encoded["input_ids"]):
            kept = token_ids[: self.max_length]
            ids[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
            mask[row, : len(kept)] = 1
        return ids, mask

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.token_ids(prompts)
        return self.model(ids.to(self.device), attention_mask=mask.to(self.device))
