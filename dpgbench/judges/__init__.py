"""Judges turn (image, questions) into raw answers; deciding what counts as "yes" is scoring's job.

Each judge family lives in its own module, imported only when its name is used. A judge class has a
`Config` dataclass (its `--judge-arg` options) and implements `Judge`; batching is the judge's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dpgbench.registry import Entry

if TYPE_CHECKING:
    from PIL import Image


class Judge(Protocol):
    def ask(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        """Raw answer text for each question about one image, in order."""
        ...

    def info(self) -> dict[str, Any]:
        """Model ids, revisions, dtype, prompt format: written into the eval manifest."""
        ...


# A judge may also offer `ask_batch(images, questions_per_image) -> list[list[str]]` to answer several
# images in one forward pass; evaluate.py uses it when present and falls back to `ask` otherwise.
# A judge that pays per request (openai-vlm) keeps a `usage` dataclass (requests, retries, tokens, cost_usd):
# evaluate.py appends it to eval/<judge>/usage.jsonl after each call and sums it into summary.json.


JUDGES: dict[str, Entry] = {
    "dummy": Entry(
        "dpgbench.judges.dummy:DummyJudge", "", "deterministic pseudo-answers (no model), for demos and tests"
    ),
    "mplug-large": Entry(
        "dpgbench.judges.mplug:MplugJudge",
        "mplug",
        "mPLUG-large VQA via modelscope (the DPG-Bench reference), batched",
    ),
    "hf-vqa": Entry(
        "dpgbench.judges.hf_vqa:HfVqaJudge",
        "generate",
        "transformers BLIP VQA or image-text-to-text VLM asked yes/no, with P(yes)",
    ),
    "openai-vlm": Entry(
        "dpgbench.judges.openai_vlm:OpenAIVlmJudge",
        "generate",
        "OpenAI-compatible chat API with image input (GPT-4o, vLLM server), yes/no",
    ),
}
