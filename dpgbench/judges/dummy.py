"""A deterministic pseudo-judge (no model) for the demo and end-to-end tests.

The answer to a question depends on the image's pixels and the question text through a hash, with a
configurable share of "yes", so different images get different, reproducible scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class DummyJudgeConfig:
    yes_rate: float = field(default=0.75, metadata={"help": "share of questions answered yes"})
    salt: str = field(default="", metadata={"help": "changes every answer, to simulate another judge"})


class DummyJudge:
    Config = DummyJudgeConfig

    def __init__(self, config: DummyJudgeConfig) -> None:
        self.config = config
        self.calls = 0  # how often ask() ran, so tests can prove a cached run asks nothing

    def ask(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        return [answer for answer, _ in self.ask_with_scores(image, questions)]

    def ask_with_scores(self, image: Image.Image, questions: Sequence[str]) -> list[tuple[str, float]]:
        """(answer, pseudo P(yes)): a uniform draw u per question; yes iff u < yes_rate; P(yes) = 1 - u."""
        self.calls += 1
        pixels = hashlib.sha256(image.tobytes()).digest()
        out = []
        for question in questions:
            h = hashlib.sha256(pixels + self.config.salt.encode() + question.encode()).digest()
            u = int.from_bytes(h[:4], "big") / 2**32
            out.append(("yes" if u < self.config.yes_rate else "no", 1 - u))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "name": "dummy",
            "model": "none (hash of pixels and question)",
            "yes_rate": self.config.yes_rate,
            "salt": self.config.salt,
        }
