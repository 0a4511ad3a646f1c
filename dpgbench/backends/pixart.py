"""The `pixart-alpha` and `pixart-alpha-512` backends: PixArt-α with its model card's defaults.

Resolution binning (render at the nearest trained aspect-ratio bucket, then resize) and caption cleaning
are the pipeline's defaults and stay on; cleaning needs beautifulsoup4 and ftfy, and rather than let the
pipeline silently skip it when they are missing (changing the prompts), we refuse to start.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from dpgbench.backends.diffusers_pipeline import DiffusersBackend, DiffusersConfig, option
from dpgbench.errors import DpgBenchError


@dataclass
class PixArtAlphaConfig(DiffusersConfig):
    # Model card of PixArt-alpha/PixArt-XL-2-1024-MS and PixArtAlphaPipeline's defaults: 20 steps,
    # guidance 4.5, DPMSolverMultistepScheduler (from the repo), T5 prompts up to 120 tokens.
    model: str = option("PixArt-alpha/PixArt-XL-2-1024-MS", "model")
    steps: int | None = option(20, "steps")
    guidance: float | None = option(4.5, "guidance")
    width: int | None = option(1024, "width")
    height: int | None = option(1024, "height")
    scheduler: str = option("", "scheduler", "empty = the checkpoint's DPMSolverMultistepScheduler")
    resolution_binning: bool = field(
        default=True,
        metadata={"help": "snap the size to the nearest trained aspect-ratio bin, then resize back"},
    )
    clean_caption: bool = field(
        default=True,
        metadata={"help": "the pipeline's caption cleaning (needs beautifulsoup4 and ftfy)"},
    )
    max_sequence_length: int = field(default=120, metadata={"help": "T5 tokens kept from each prompt"})


class PixArtAlphaBackend(DiffusersBackend):
    Config = PixArtAlphaConfig
    name = "pixart-alpha"
    pipeline_classes = ("PixArtAlphaPipeline",)
    config: PixArtAlphaConfig

    def _check_config(self) -> None:
        super()._check_config()
        missing = [m for m in ("bs4", "ftfy") if importlib.util.find_spec(m) is None]
        if self.config.clean_caption and missing:
            raise DpgBenchError(
                f"backend '{self.name}': clean_caption=true needs {' and '.join(missing)}: "
                "pip install beautifulsoup4 ftfy, or pass --backend-arg clean_caption=false"
            )

    def call_kwargs(self) -> dict[str, Any]:
        return {
            "use_resolution_binning": self.config.resolution_binning,
            "clean_caption": self.config.clean_caption,
            "max_sequence_length": self.config.max_sequence_length,
        }


@dataclass
class PixArtAlpha512Config(PixArtAlphaConfig):
    model: str = option("PixArt-alpha/PixArt-XL-2-512x512", "model")
    width: int | None = option(512, "width")
    height: int | None = option(512, "height")


class PixArtAlpha512Backend(PixArtAlphaBackend):
    Config = PixArtAlpha512Config
    name = "pixart-alpha-512"
