"""The package's error type for unusable weights or models, and the check that a model loaded all its weights.

Owns `CheckpointError` (a ValueError whose message is one line naming the file and the fix); kept apart
from `checkpoint.py` so that every module (text encoders included) can raise it without import cycles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_SHOWN_KEYS = 6


class CheckpointError(ValueError):
    """A checkpoint or base model that does not fit: the message names the file and what to do."""


def listing(keys: Sequence[str]) -> str:
    """'3 (a, b, c)', the first few keys only."""
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _SHOWN_KEYS else ''})"


def refuse_missing_weights(
    loading_info: Mapping[str, Any], source: object, expected: str, unused: Sequence[str] = ()
) -> None:
    """After `from_pretrained(..., output_loading_info=True)`: weights the files lacked would stay random.

    transformers only logs a warning for them; a text encoder with random layers gives plausible-looking
    but meaningless features, so it is refused with the keys listed. `unused` keys may be absent.
    """
    missing = [k for k in loading_info.get("missing_keys") or [] if k not in unused]
    if missing:
        raise CheckpointError(
            f"{source} lacks weights of {expected}: missing keys {listing(missing)}; "
            f"is it a {expected} folder?"
        )
