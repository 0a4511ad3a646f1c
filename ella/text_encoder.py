"""The LLM side of ELLA: prompts -> FLAN-T5 encoder features, at a fixed length of 128 or per prompt.

Owns `T5TextEmbedder` and `TextFeatures`. Fixed length reproduces the released model's training input
(128 tokens, padding attended); flexible length zeroes the padding rows and masks them in the TSC.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import T5EncoderModel, T5Tokenizer

from ella.errors import refuse_missing_weights

FLAN_T5_XL = "google/flan-t5-xl"
FIXED_LENGTH = 128


@dataclass
class TextFeatures:
    """T5 features (batch, tokens, d_model); `mask` (batch, tokens) is None at fixed length."""

    hidden: torch.Tensor
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.hidden)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off while loading: missing weights are refused by us in one line instead,
    and the slow tokenizer's `legacy` notice is about the behaviour we choose on purpose."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    # Upstream runs T5-XL in fp16 on GPU; CPU half-precision matmuls are slow or missing, so fp32 there.
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


class T5TextEmbedder:
    """A frozen T5 encoder + its sentencepiece tokenizer. `max_length=None` means flexible length."""

    def __init__(self, model: T5EncoderModel, tokenizer: T5Tokenizer, max_length: int | None = FIXED_LENGTH):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path = FLAN_T5_XL,
        *,
        max_length: int | None = FIXED_LENGTH,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
    ) -> T5TextEmbedder:
        """Encoder weights only (a full T5 checkpoint's decoder is skipped); fp16 on GPU unless told.

        A folder lacking encoder weights (another model's layout) raises `CheckpointError` instead of
        running with randomly initialised layers.
        """
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        with quiet_transformers():
            model, info = T5EncoderModel.from_pretrained(
                path, dtype=dtype, revision=revision, output_loading_info=True
            )
            refuse_missing_weights(info, path, "T5EncoderModel")
            # The slow sentencepiece tokenizer, as upstream: the fast one differs on some whitespace cases.
            tokenizer = T5Tokenizer.from_pretrained(path, revision=revision or "main", legacy=True)
        model = model.to(device)
        return cls(model, tokenizer, max_length)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    def tokenize(self, prompts: Sequence[str], max_length: int | None) -> dict[str, torch.Tensor]:
        if max_length is not None:
            return self.tokenizer(
                list(prompts),
                padding="max_length",
                max_length=max_length,
                truncation=True,
                return_tensors="pt",
            )
        return self.tokenizer(list(prompts), padding="longest", truncation=True, return_tensors="pt")

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextFeatures:
        """One T5 forward for all `prompts`, at `self.max_length` (None = as long as the longest prompt)."""
        length = self.max_length
        tokens = self.tokenize(prompts, length)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.model(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=mask
        ).last_hidden_state
        if length is not None:
            # Fixed length: the released TSC was trained attending to the padding features too.
            return TextFeatures(hidden)
        # Exact zeros mark padding (see ELLAProxyUNet); a real T5 output row is never all zero.
        return TextFeatures(hidden * mask[..., None].to(hidden.dtype), mask.bool())


def pad_features(features: Sequence[TextFeatures]) -> list[TextFeatures]:
    """Zero-pad flexible-length features to a common token count (fixed-length ones already agree)."""
    longest = max(f.hidden.shape[1] for f in features)
    padded = []
    for f in features:
        missing = longest - f.hidden.shape[1]
        if missing == 0:
            padded.append(f)
            continue
        if f.mask is None:
            raise ValueError("cannot pad fixed-length features; encode both with the same max_length")
        hidden = torch.nn.functional.pad(f.hidden, (0, 0, 0, missing))
        padded.append(TextFeatures(hidden, torch.nn.functional.pad(f.mask, (0, missing))))
    return padded
