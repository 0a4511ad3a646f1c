"""The `sdxl` and `playground-v2` backends: SDXL-architecture pipelines with their model cards' defaults.

Playground v2 is an SDXL-architecture model trained from scratch; its card asks for guidance 3.0 and the
fp16 weight files. The invisible watermark is off by default: it changes pixels and scores nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpgbench.backends.diffusers_pipeline import DiffusersBackend, DiffusersConfig, option

WATERMARK_HELP = "add SDXL's invisible watermark (needs the invisible-watermark package)"


@dataclass
class SDXLConfig(DiffusersConfig):
    # Model card of stabilityai/stable-diffusion-xl-base-1.0: 1024x1024, the pipeline's 50 steps and
    # guidance 5.0, the repo's EulerDiscreteScheduler.
    model: str = option("stabilityai/stable-diffusion-xl-base-1.0", "model")
    steps: int | None = option(50, "steps")
    guidance: float | None = option(5.0, "guidance")
    width: int | None = option(1024, "width")
    height: int | None = option(1024, "height")
    scheduler: str = option("", "scheduler", "empty = the checkpoint's EulerDiscreteScheduler")
    watermark: bool = field(default=False, metadata={"help": WATERMARK_HELP})


class SDXLBackend(DiffusersBackend):
    Config = SDXLConfig
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    config: SDXLConfig

    def load_kwargs(self) -> dict[str, Any]:
        return {"add_watermarker": self.config.watermark}


@dataclass
class PlaygroundV2Config(SDXLConfig):
    # Model card of playgroundai/playground-v2-1024px-aesthetic: guidance_scale=3.0, variant="fp16",
    # add_watermarker=False, 1024x1024.
    model: str = option("playgroundai/playground-v2-1024px-aesthetic", "model")
    guidance: float | None = option(3.0, "guidance")
    variant: str | None = option("fp16", "variant")


class PlaygroundV2Backend(SDXLBackend):
    Config = PlaygroundV2Config
    name = "playground-v2"
