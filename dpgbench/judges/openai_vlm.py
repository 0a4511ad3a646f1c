"""The `openai-vlm` judge: an OpenAI-compatible chat API with image input (GPT-4o, or a vLLM server by URL).

Owns the requests (one chat turn per question, the image sent as a PNG data URL, a few in flight at once),
retries with backoff on 429/5xx/connection errors (honouring Retry-After), cost accounting from the reported
token usage, and the optional probability of "yes" from the first token's top logprobs.
"""

from __future__ import annotations

import base64
import io
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from dpgbench.errors import DpgBenchError
from dpgbench.openai_compat import backoff_wait, error_code, error_message

if TYPE_CHECKING:
    from PIL import Image

# USD per million tokens (input, output), from https://openai.com/api/pricing (checked 2025-06).
# Images are billed as input tokens, which the usage report already includes.
TOKEN_PRICES = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


@dataclass
class OpenAIVlmConfig:
    model: str = field(default="gpt-4o", metadata={"help": "chat model with image input, e.g. gpt-4o"})
    base_url: str = field(
        default="",
        metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (empty = OpenAI)"},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "environment variable holding the API key (the key never goes into manifests)"},
    )
    prompt: str = field(
        default="{question} Answer with yes or no.",
        metadata={"help": "the user message after the image; {question} is replaced"},
    )
    detail: str = field(default="auto", metadata={"help": "image detail: low, high or auto (low = cheapest)"})
    max_tokens: int = field(default=5, metadata={"help": "longest answer, in tokens"})
    seed: int | None = field(
        default=0, metadata={"help": "sampling seed sent to the API (best effort there)"}
    )
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    max_retries: int = field(
        default=6, metadata={"help": "retries per question on 429, 5xx and connection errors"}
    )
    backoff: float = field(default=2.0, metadata={"help": "first retry wait in seconds, doubled each retry"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest wait between retries, in seconds"})
    timeout: float = field(default=120.0, metadata={"help": "seconds before one request is abandoned"})
    input_price: float | None = field(
        default=None, metadata={"help": "USD per million input tokens, for models not in our price table"}
    )
    output_price: float | None = field(
        default=None, metadata={"help": "USD per million output tokens, for models not in our price table"}
    )


@dataclass
class Usage:
    """Running totals, reported by info() into the eval manifest."""

    questions: int = 0
    requests: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None once any request's cost is unknown


class OpenAIVlmJudge:
    Config = OpenAIVlmConfig

    def __init__(self, config: OpenAIVlmConfig) -> None:
        from openai import OpenAI

        self.config = config
        key = os.environ.get(config.api_key_env, "")
        if not key:
            raise DpgBenchError(
                f"judge 'openai-vlm': set {config.api_key_env} to your API key "
                "(or --judge-arg api_key_env=NAME for another variable; any value for a local server)"
            )
        if config.concurrency < 1 or config.max_retries < 0:
            raise DpgBenchError("judge 'openai-vlm': concurrency must be >= 1 and max_retries >= 0")
        if config.detail not in ("low", "high", "auto"):
            raise DpgBenchError(f"judge 'openai-vlm' option detail={config.detail}: use low, high or auto")
        # The client's own retries are off: ours count attempts and honour Retry-After.
        self.client = OpenAI(
            api_key=key, base_url=config.base_url or None, max_retries=0, timeout=config.timeout
        )
        self.usage = Usage()
        self._lock = threading.Lock()

    # -- the Judge contract ------------------------------------------------------------------------

    def ask(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        return self.ask_batch([image], [questions])[0]

    def ask_with_scores(self, image: Image.Image, questions: Sequence[str]) -> list[tuple[str, float]]:
        """(raw answer, probability mass of "yes" among the first token's top-5 logprobs) per question."""
        return self._ask_all([image], [questions], with_scores=True)[0]

    def ask_batch(
        self, images: Sequence[Image.Image], questions_per_image: Sequence[Sequence[str]]
    ) -> list[list[str]]:
        scored = self._ask_all(images, questions_per_image, with_scores=False)
        return [[answer for answer, _ in row] for row in scored]

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": "openai-vlm",
            "model": c.model,
            "base_url": c.base_url or "https://api.openai.com/v1",
            "prompt": c.prompt,
            "detail": c.detail,
            "max_tokens": c.max_tokens,
            "temperature": 0,
            "seed": c.seed,
            "prices_per_mtok": self._prices(),
            "usage": asdict(self.usage),
            "openai": metadata.version("openai"),
        }

    # -- steps -------------------------------------------------------------------------------------

    def _ask_all(
        self, images: Sequence[Image.Image], questions_per_image: Sequence[Sequence[str]], with_scores: bool
    ) -> list[list[tuple[str, float]]]:
        # 1. Each image encoded once, as a PNG data URL (lossless: the judge sees the pixels we scored).
        urls = [png_data_url(image) for image in images]
        jobs = [(i, q) for i, questions in enumerate(questions_per_image) for q in questions]
        if not jobs:
            return [[] for _ in questions_per_image]
        # 2. All questions of all images through one pool, `concurrency` requests in flight. The first
        #    error that ends the call (gave up, auth, Ctrl-C) stops the rest at once: queued questions are
        #    not sent and workers waiting to retry wake up, instead of each retrying to its own limit.
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.config.concurrency, len(jobs))))
        try:
            futures = [pool.submit(self._stopping, stop, urls[i], q, with_scores) for i, q in jobs]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [e for f in futures if f in done and (e := f.exception()) is not None]
            if errors:  # the cause, not a Stopped it led to
                raise min(errors, key=lambda e: isinstance(e, Stopped))
            flat = [f.result() for f in futures]
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        # 3. Back to one list per image, in the order asked.
        out: list[list[tuple[str, float]]] = []
        for questions in questions_per_image:
            out.append(flat[: len(questions)])
            flat = flat[len(questions) :]
        return out

    def _stopping(
        self, stop: threading.Event, url: str, question: str, with_scores: bool
    ) -> tuple[str, float]:
        """`_one_question` in a worker: a failure sets `stop` before the worker can take the next question."""
        try:
            return self._one_question(url, question, with_scores, stop)
        except Stopped:
            raise
        except BaseException:
            stop.set()
            raise

    def _one_question(
        self, url: str, question: str, with_scores: bool, stop: threading.Event | None = None
    ) -> tuple[str, float]:
        import openai

        c = self.config
        stop = stop or threading.Event()
        attempt = 0
        while True:
            if stop.is_set():
                raise Stopped()
            self._count(requests=1)
            try:
                response = self.client.chat.completions.create(**self._request(url, question, with_scores))
                break
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise DpgBenchError(
                    f"judge 'openai-vlm': {type(exc).__name__}: {error_message(exc)}; "
                    f"check {c.api_key_env}, model={c.model} and base_url={c.base_url or '(OpenAI)'}"
                ) from None
            except openai.BadRequestError as exc:
                raise DpgBenchError(
                    f"judge 'openai-vlm': the API rejected the request ({error_message(exc)}); "
                    f"check model={c.model} takes image input and the other --judge-arg options"
                ) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                # Busy or flaky service: wait (Retry-After if given, else exponential) and try again.
                if isinstance(exc, openai.RateLimitError) and error_code(exc) == "insufficient_quota":
                    raise DpgBenchError(
                        f"judge 'openai-vlm': the account is out of quota ({error_message(exc)}); add credit or use another key"
                    ) from None
                attempt = self._retry_or_give_up(attempt, exc, stop)
            except openai.APIStatusError as exc:  # other statuses the client has no class for
                if exc.status_code < 500:
                    raise DpgBenchError(
                        f"judge 'openai-vlm': API error {exc.status_code}: {error_message(exc)}"
                    ) from None
                attempt = self._retry_or_give_up(attempt, exc, stop)
        choice = response.choices[0]
        self._count(questions=1, usage=getattr(response, "usage", None))
        answer = (choice.message.content or "").strip()
        return answer, yes_probability(choice.logprobs) if with_scores else float("nan")

    def _request(self, url: str, question: str, with_scores: bool) -> dict[str, Any]:
        c = self.config
        request: dict[str, Any] = {
            "model": c.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url, "detail": c.detail}},
                        {"type": "text", "text": c.prompt.format(question=question)},
                    ],
                }
            ],
            "temperature": 0,
            "max_completion_tokens": c.max_tokens,
        }
        if c.seed is not None:
            request["seed"] = c.seed
        if with_scores:
            request["logprobs"] = True
            request["top_logprobs"] = 5
        return request

    def _retry_or_give_up(self, attempt: int, exc: Any, stop: threading.Event) -> int:
        c = self.config
        if attempt >= c.max_retries:
            raise DpgBenchError(
                f"judge 'openai-vlm': gave up after {attempt + 1} attempts ({type(exc).__name__}: {error_message(exc)}); "
                "answers so far are cached, run the same command again to resume"
            ) from None
        self._count(retries=1)
        if stop.wait(backoff_wait(attempt, exc, self.config.backoff, self.config.max_backoff)):
            raise Stopped()  # another question ended the call while this one waited
        return attempt + 1

    def _prices(self) -> tuple[float, float] | None:
        c = self.config
        if c.input_price is not None and c.output_price is not None:
            return (c.input_price, c.output_price)
        return TOKEN_PRICES.get(c.model)

    def _count(self, requests: int = 0, retries: int = 0, questions: int = 0, usage: Any = None) -> None:
        with self._lock:
            u = self.usage
            u.requests += requests
            u.retries += retries
            u.questions += questions
            if questions:
                tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
                tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
                u.input_tokens += tokens_in
                u.output_tokens += tokens_out
                prices = self._prices()
                if prices is None or usage is None or u.cost_usd is None:
                    u.cost_usd = None
                else:
                    u.cost_usd += (tokens_in * prices[0] + tokens_out * prices[1]) / 1e6


class Stopped(Exception):
    """A question abandoned because another question of the same call failed for good."""


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def yes_probability(logprobs: Any) -> float:
    """Sum of exp(logprob) over the first token's top alternatives that spell "yes" (NaN if none reported)."""
    content = getattr(logprobs, "content", None)
    if not content:
        return float("nan")
    first = content[0]
    alternatives = first.top_logprobs or [first]
    return sum(math.exp(alt.logprob) for alt in alternatives if alt.token.strip().lower() == "yes")
