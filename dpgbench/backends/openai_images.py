"""The `openai-images` backend: an OpenAI-compatible image API (DALL·E 3, gpt-image-1, or a local server).

It owns the requests (one per image, a few in parallel), retries with backoff on 429/5xx/connection
errors, turning refusals into `PromptRefused` (generate.py records the image as failed and goes on),
and cost accounting. The API takes no seed: images are recorded with seeds but cannot be reproduced.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from PIL import Image

from dpgbench.errors import DpgBenchError
from dpgbench.openai_compat import backoff_wait, error_code, error_message

# USD per image from https://openai.com/api/pricing (checked 2025-06): (model, quality, size) -> price.
# gpt-image-1 is billed by tokens; its responses report usage, which is preferred when present.
PRICES = {
    ("dall-e-3", "standard", "1024x1024"): 0.040,
    ("dall-e-3", "standard", "1024x1792"): 0.080,
    ("dall-e-3", "standard", "1792x1024"): 0.080,
    ("dall-e-3", "hd", "1024x1024"): 0.080,
    ("dall-e-3", "hd", "1024x1792"): 0.120,
    ("dall-e-3", "hd", "1792x1024"): 0.120,
    ("dall-e-2", "standard", "1024x1024"): 0.020,
    ("dall-e-2", "standard", "512x512"): 0.018,
    ("dall-e-2", "standard", "256x256"): 0.016,
}
# gpt-image-1, USD per million tokens: text input, image input, image output (same page).
TOKEN_PRICES = {"gpt-image-1": (5.0, 10.0, 40.0)}
# Error codes the API uses when its safety system rejects a prompt (DALL·E 3, gpt-image-1).
REFUSAL_CODES = ("content_policy_violation", "moderation_blocked")


class PromptRefused(Exception):
    """The service refused this prompt (content policy): one failed image, not a broken run."""


@dataclass
class OpenAIImagesConfig:
    model: str = field(default="dall-e-3", metadata={"help": "image model name, e.g. dall-e-3, gpt-image-1"})
    size: str = field(default="1024x1024", metadata={"help": "image size the API accepts, e.g. 1024x1024"})
    quality: str = field(
        default="",
        metadata={"help": "standard/hd (dall-e-3), low/medium/high (gpt-image-1); empty = API default"},
    )
    style: str = field(default="", metadata={"help": "vivid or natural (dall-e-3 only); empty = API default"})
    base_url: str = field(
        default="",
        metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (empty = OpenAI)"},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "environment variable holding the API key (the key never goes into manifests)"},
    )
    max_retries: int = field(
        default=6, metadata={"help": "retries per image on 429, 5xx and connection errors"}
    )
    backoff: float = field(default=2.0, metadata={"help": "first retry wait in seconds, doubled each retry"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest wait between retries, in seconds"})
    timeout: float = field(default=180.0, metadata={"help": "seconds before one request is abandoned"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    price_per_image: float | None = field(
        default=None,
        metadata={"help": "USD per image for cost accounting when the model is not in our table"},
    )


@dataclass
class Usage:
    """Running totals for the run summary."""

    images: int = 0
    requests: int = 0
    retries: int = 0
    refused: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True


class OpenAIImagesBackend:
    Config = OpenAIImagesConfig

    def __init__(self, config: OpenAIImagesConfig) -> None:
        from openai import OpenAI

        self.config = config
        key = os.environ.get(config.api_key_env, "")
        if not key:
            raise DpgBenchError(
                f"backend 'openai-images': set {config.api_key_env} to your API key "
                "(or --backend-arg api_key_env=NAME for another variable; any value for a local server)"
            )
        if config.concurrency < 1 or config.max_retries < 0:
            raise DpgBenchError("backend 'openai-images': concurrency must be >= 1 and max_retries >= 0")
        # The client's own retries are off: ours count attempts and honour Retry-After the same way.
        self.client = OpenAI(
            api_key=key, base_url=config.base_url or None, max_retries=0, timeout=config.timeout
        )
        self.usage = Usage()
        self._lock = threading.Lock()

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        """One request per image; the seeds cannot reach the API and only name the images."""
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(seeds))) as pool:
            return list(pool.map(lambda _seed: self._one_image(prompt), seeds))

    def _one_image(self, prompt: str) -> Image.Image:
        import openai

        c = self.config
        attempt = 0
        while True:
            self._count(requests=1)
            try:
                response = self.client.images.generate(**self._request(prompt))
                break
            except openai.BadRequestError as exc:
                # 1. A refusal is the prompt's fate, not the run's: recorded as a failed image.
                if error_code(exc) in REFUSAL_CODES:
                    self._count(refused=1)
                    raise PromptRefused(
                        f"refused by the API ({error_code(exc)}): {error_message(exc)}"
                    ) from None
                raise DpgBenchError(
                    f"backend 'openai-images' option rejected by the API: {error_message(exc)} "
                    f"(model={c.model}, size={c.size}, quality={c.quality or 'default'})"
                ) from None
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise DpgBenchError(
                    f"backend 'openai-images': {type(exc).__name__}: {error_message(exc)}; "
                    f"check {c.api_key_env}, model={c.model} and base_url"
                ) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                # 2. Busy or flaky service: wait (Retry-After if given, else exponential) and try again.
                if isinstance(exc, openai.RateLimitError) and error_code(exc) == "insufficient_quota":
                    raise DpgBenchError(
                        f"backend 'openai-images': the account is out of quota ({error_message(exc)}); "
                        "add credit or use another key"
                    ) from None
                unreachable = isinstance(exc, openai.APIConnectionError) and not isinstance(
                    exc, openai.APITimeoutError
                )
                if attempt >= c.max_retries and unreachable and not self.usage.images:
                    # Never reached at all: a wrong base_url or no network, not one unlucky image.
                    raise DpgBenchError(
                        f"backend 'openai-images': cannot reach {c.base_url or 'https://api.openai.com/v1'} "
                        f"after {attempt + 1} attempts ({error_message(exc)}); check base_url and the network"
                    ) from None
                if attempt >= c.max_retries:
                    raise RuntimeError(
                        f"gave up after {attempt + 1} attempts: {type(exc).__name__}: {error_message(exc)}"
                    ) from None
                self._count(retries=1)
                time.sleep(backoff_wait(attempt, exc, self.config.backoff, self.config.max_backoff))
                attempt += 1
            except openai.APIStatusError as exc:  # other 5xx-like statuses the client has no class for
                if exc.status_code < 500 or attempt >= c.max_retries:
                    raise RuntimeError(f"API error {exc.status_code}: {error_message(exc)}") from None
                self._count(retries=1)
                time.sleep(backoff_wait(attempt, exc, self.config.backoff, self.config.max_backoff))
                attempt += 1
        # 3. Decode the image and account for its cost.
        item = response.data[0]
        image = _decode(item)
        cost = self._cost(getattr(response, "usage", None))
        image.info["revised_prompt"] = getattr(item, "revised_prompt", None) or ""
        image.info["cost_usd"] = cost if cost is not None else ""
        self._count(images=1, cost=cost)
        return image

    def _request(self, prompt: str) -> dict[str, Any]:
        c = self.config
        request: dict[str, Any] = {"model": c.model, "prompt": prompt, "n": 1, "size": c.size}
        if c.quality:
            request["quality"] = c.quality
        if c.style:
            request["style"] = c.style
        if not c.model.startswith("gpt-image"):
            # gpt-image models always answer in base64 and reject the parameter; DALL·E defaults to URLs.
            request["response_format"] = "b64_json"
        return request

    def _cost(self, usage: Any) -> float | None:
        c = self.config
        if c.price_per_image is not None:
            return c.price_per_image
        if usage is not None and c.model in TOKEN_PRICES:
            text_in, image_in, image_out = TOKEN_PRICES[c.model]
            details = getattr(usage, "input_tokens_details", None)
            text_tokens = getattr(details, "text_tokens", None)
            image_tokens = getattr(details, "image_tokens", 0) or 0
            if text_tokens is None:
                text_tokens = usage.input_tokens
            return (text_tokens * text_in + image_tokens * image_in + usage.output_tokens * image_out) / 1e6
        return PRICES.get((c.model, c.quality or "standard", c.size))

    def _count(
        self, images: int = 0, requests: int = 0, retries: int = 0, refused: int = 0, cost: float | None = 0.0
    ) -> None:
        with self._lock:
            u = self.usage
            u.images += images
            u.requests += requests
            u.retries += retries
            u.refused += refused
            if cost is None:
                u.cost_known = False
            else:
                u.cost_usd += cost

    def info(self) -> dict[str, Any]:
        c = self.config
        try:
            version = metadata.version("openai")
        except metadata.PackageNotFoundError:  # pragma: no cover - the client is imported above
            version = "unknown"
        config = asdict(c)
        return {
            "name": "openai-images",
            "model": c.model,
            "endpoint": c.base_url or "https://api.openai.com/v1",
            "size": c.size,
            "quality": c.quality or "API default",
            "style": c.style or "API default",
            "seeds": "not sent: the API has no seed, images are not reproducible",
            "price_per_image_usd": c.price_per_image
            if c.price_per_image is not None
            else PRICES.get((c.model, c.quality or "standard", c.size)),
            "usage": asdict(self.usage),
            "config": config,
            "packages": {"openai": version},
        }


def _decode(item: Any) -> Image.Image:
    if getattr(item, "b64_json", None):
        data = base64.b64decode(item.b64_json)
    elif getattr(item, "url", None):
        import urllib.request

        with urllib.request.urlopen(item.url, timeout=120) as reply:  # the URL the API itself returned
            data = reply.read()
    else:
        raise RuntimeError("the API answered without an image (no b64_json and no url)")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")
