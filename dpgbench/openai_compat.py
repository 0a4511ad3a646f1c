"""What the OpenAI-compatible API clients (openai-images backend, openai-vlm judge) share about errors:
how long to wait before a retry, and the code and one-line message of an API error.

Stdlib only; the `openai` package is imported by the callers.
"""

from __future__ import annotations

import random
from typing import Any


def backoff_wait(attempt: int, exc: Any, backoff: float, max_backoff: float) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it gives seconds,
    else exponential from `backoff`, capped at `max_backoff`, with jitter so parallel workers spread out."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        if header is not None:
            return min(float(header), max_backoff)
    except ValueError:
        pass  # an HTTP date instead of seconds: fall back to our own schedule
    return min(backoff * 2**attempt, max_backoff) * random.uniform(0.8, 1.2)


def _error_body(exc: Any) -> dict[str, Any] | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return None


def error_code(exc: Any) -> str:
    """'content_policy_violation', 'insufficient_quota', ...: the error's code, else its type, else ''."""
    inner = _error_body(exc)
    if inner is not None and (inner.get("code") or inner.get("type")):
        return str(inner.get("code") or inner.get("type"))
    return str(getattr(exc, "code", "") or "")


def error_message(exc: Any) -> str:
    """The API's own message on one line (at most 300 characters), else the exception's text."""
    inner = _error_body(exc)
    text = str(inner["message"]) if inner is not None and inner.get("message") else str(exc)
    return " ".join(text.split())[:300] or type(exc).__name__
