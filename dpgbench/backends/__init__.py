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
    "dummy": Entry("dpgbench.backends.dummy:DummyBackend", "", "deterministic drawings (Pillow only), for demos and tests"),
}
