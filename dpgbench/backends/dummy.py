"""A deterministic drawing backend (Pillow only) for the demo and end-to-end tests.

Image i depends only on (prompt, seeds[i]): a background and a few shapes whose colours and places come
from a hash, so runs are reproducible bit for bit without any model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw


@dataclass
class DummyConfig:
    width: int = field(default=64, metadata={"help": "image width in pixels"})
    height: int = field(default=64, metadata={"help": "image height in pixels"})
    shapes: int = field(default=6, metadata={"help": "number of shapes drawn per image"})


class DummyBackend:
    Config = DummyConfig

    def __init__(self, config: DummyConfig) -> None:
        self.config = config

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        return [self._draw(prompt, seed) for seed in seeds]

    def _draw(self, prompt: str, seed: int) -> Image.Image:
        stream = hashlib.shake_256(f"{seed}\0{prompt}".encode()).digest(4 + 8 * self.config.shapes)
        w, h = self.config.width, self.config.height
        image = Image.new("RGB", (w, h), tuple(stream[:3]))
        draw = ImageDraw.Draw(image)
        for k in range(self.config.shapes):
            b = stream[4 + 8 * k : 12 + 8 * k]
            x0, y0 = b[0] * w // 256, b[1] * h // 256
            x1, y1 = x0 + 1 + b[2] * w // 512, y0 + 1 + b[3] * h // 512
            colour = (b[4], b[5], b[6])
            (draw.ellipse if b[7] % 2 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        return image

    def info(self) -> dict[str, Any]:
        return {
            "name": "dummy",
            "model": "none (hash-driven drawings)",
            "width": self.config.width,
            "height": self.config.height,
            "shapes": self.config.shapes,
        }
