"""The LLM client of the build tools: any OpenAI-compatible chat server through the `openai` package.

Every answered request is appended to a JSONL cache keyed by the request itself, so a rerun (or a resume after
a kill) replays finished requests for free and the file is an audit trail of what the model was asked and
said. Adds a concurrency limit, backoff on 429/5xx/timeouts, and token and cost accounting.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dpgbench.errors import DpgBenchError
from dpgbench.runs import JsonlLog, read_jsonl

# USD per million (prompt, completion) tokens, from OpenAI's pricing page (2024); --price-* overrides them.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4": (30.0, 60.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
}
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
MAX_WAIT = 60.0


@dataclass
class LLMConfig:
    model: str = "gpt-4"
    base_url: str | None = None  # None: the openai package's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 1500
    json_mode: bool = True  # ask for response_format json_object; turn off for servers that reject it
    concurrency: int = 4
    max_attempts: int = 6  # HTTP attempts per request before the request is given up
    timeout: float = 120.0
    backoff: float = 2.0  # first wait in seconds; doubles per attempt (capped), or the server's Retry-After
    price_prompt: float | None = None  # USD per million tokens; None: PRICES_PER_MILLION or 0
    price_completion: float | None = None

    def prices(self) -> tuple[float, float]:
        known = PRICES_PER_MILLION.get(self.model, (0.0, 0.0))
        prompt = self.price_prompt if self.price_prompt is not None else known[0]
        completion = self.price_completion if self.price_completion is not None else known[1]
        return prompt, completion

    def identity(self) -> dict[str, Any]:
        """The settings that change what the model says (not how fast or how often we ask)."""
        return {
            "model": self.model,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "json_mode": self.json_mode,
        }


@dataclass
class Usage:
    requests: int = 0  # answered by the server
    cache_hits: int = 0
    retries: int = 0  # failed attempts that were retried
    failures: int = 0  # requests given up
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached_tokens: int = 0  # tokens of replies replayed from the cache (not paid again)
    seconds_waiting: float = 0.0  # backoff sleeps
    # Everything the folder's cache holds, earlier runs included: what the whole build has cost so far
    # (a rerun from the cache costs nothing itself, and its manifest still says what the files cost).
    total_requests: int = 0
    total_prompt_tokens: int = 0
    total_completion_tokens: int = 0
    total_cost_usd: float = 0.0

    def add_total(self, record: dict[str, Any], prices: tuple[float, float]) -> float:
        """Count one cached record in the totals; returns its cost in USD."""
        cost = (record["prompt_tokens"] * prices[0] + record["completion_tokens"] * prices[1]) / 1e6
        self.total_requests += 1
        self.total_prompt_tokens += record["prompt_tokens"]
        self.total_completion_tokens += record["completion_tokens"]
        self.total_cost_usd += cost
        return cost

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost_usd"] = round(self.cost_usd, 6)
        out["total_cost_usd"] = round(self.total_cost_usd, 6)
        out["seconds_waiting"] = round(self.seconds_waiting, 3)
        return out


@dataclass(frozen=True)
class Reply:
    text: str
    key: str
    cached: bool
    prompt_tokens: int
    completion_tokens: int


class RequestFailed(Exception):
    """A request still failing after `max_attempts` (rate limits, server errors, timeouts): the caller reports
    its item as failed and goes on. Errors no retry can fix (bad key, unknown model) are DpgBenchError."""


@dataclass(frozen=True)
class Failure:
    """An item the build gave up on, and why (for the manifest and the terminal)."""

    item_id: str
    stage: str
    tries: int
    reason: str


@dataclass
class _Pending:
    lock: threading.Lock = field(default_factory=threading.Lock)


def request_key(base_url: str | None, body: dict[str, Any]) -> str:
    canonical = json.dumps({"base_url": base_url, "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class LLMClient:
    """`complete(messages) -> Reply`, thread-safe; one per build folder, closed when the build ends."""

    def __init__(
        self,
        config: LLMConfig,
        cache_path: Path,
        offline: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.offline = offline  # cache only: a miss is an error (audit a finished build without a key)
        self.usage = Usage()
        self._sleep = sleep
        self._cache = {r["key"]: r for r in read_jsonl(cache_path) if "key" in r}
        for record in self._cache.values():
            self.usage.add_total(record, config.prices())
        self._log = JsonlLog(cache_path)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._slots = threading.BoundedSemaphore(max(1, config.concurrency))
        self._client: Any = None  # created on the first cache miss, so replaying needs no key or package

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        body = self.body(messages)
        key = request_key(self.config.base_url, body)
        # One caller per key at a time: two identical requests in flight would be paid twice.
        with self._lock:
            pending = self._pending.setdefault(key, _Pending())
        with pending.lock:
            with self._lock:
                record = self._cache.get(key)
                if record is not None:
                    self.usage.cache_hits += 1
                    self.usage.cached_tokens += record["prompt_tokens"] + record["completion_tokens"]
                    return Reply(
                        record["reply"], key, True, record["prompt_tokens"], record["completion_tokens"]
                    )
            if self.offline:
                # Reported per item, so an offline replay lists exactly what an online run would still ask.
                raise RequestFailed(f"not in the cache {self._log.path} (--offline)")
            record = self._ask(key, body)
            with self._lock:
                self._cache[key] = record
                self._log.append([record])
                self.usage.requests += 1
                self.usage.prompt_tokens += record["prompt_tokens"]
                self.usage.completion_tokens += record["completion_tokens"]
                self.usage.cost_usd += self.usage.add_total(record, self.config.prices())
        return Reply(record["reply"], key, False, record["prompt_tokens"], record["completion_tokens"])

    # -------------------------------------------------------------------------------------- the network

    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError:
                    raise DpgBenchError(
                        "the build tools need the openai package: pip install 'dpgbench[build]'"
                    ) from None
                key = os.environ.get(self.config.api_key_env)
                if not key:
                    if self.config.base_url is None:
                        raise DpgBenchError(
                            f"${self.config.api_key_env} is not set; export your API key, or point "
                            "--base-url at an OpenAI-compatible server"
                        )
                    key = "none"  # local servers (vLLM, llama.cpp, Ollama) accept any key
                # Retries are ours (counted, logged, honouring Retry-After), so the package's are off.
                self._client = openai.OpenAI(
                    api_key=key, base_url=self.config.base_url, timeout=self.config.timeout, max_retries=0
                )
            return self._client

    def _ask(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        import openai

        client = self._openai()
        last = ""
        for attempt in range(1, self.config.max_attempts + 1):
            started = time.monotonic()
            retry_after: float | None = None
            try:
                with self._slots:
                    response = client.chat.completions.create(**body)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in RETRY_STATUS and status < 500:
                    raise DpgBenchError(_fatal_message(status, exc, self.config)) from None
                last = f"HTTP {status}"
                retry_after = _retry_after(exc.response.headers.get("retry-after"))
            except openai.APITimeoutError:
                last = f"no answer within --timeout {self.config.timeout:g} s"
            except openai.APIConnectionError as exc:
                last = f"connection failed ({exc.__cause__ or exc})"
            else:
                return _record(key, body, response, attempt, time.monotonic() - started)
            if attempt == self.config.max_attempts:
                break
            wait = retry_after
            if wait is None:  # full jitter keeps many threads from retrying in step
                wait = random.uniform(0.5, 1.0) * min(MAX_WAIT, self.config.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.usage.retries += 1
                self.usage.seconds_waiting += wait
            self._sleep(wait)
        with self._lock:
            self.usage.failures += 1
        raise RequestFailed(f"gave up after {self.config.max_attempts} attempt(s): {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return min(MAX_WAIT, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare, the exponential wait is a fine substitute


def _fatal_message(status: int, exc: Exception, config: LLMConfig) -> str:
    where = config.base_url or "the OpenAI API"
    if status == 401:
        return f"{where} refused the key (HTTP 401); check ${config.api_key_env}"
    if status == 404:
        return f"{where}: HTTP 404 for model '{config.model}'; check --model and --base-url"
    detail = str(exc).splitlines()[0][:200]
    hint = "; try --no-json-mode if the server rejects response_format" if config.json_mode else ""
    return f"{where}: HTTP {status} ({detail}){hint}"


def _record(key: str, body: dict[str, Any], response: Any, attempts: int, seconds: float) -> dict[str, Any]:
    choice = response.choices[0] if response.choices else None
    usage = getattr(response, "usage", None)
    return {
        "key": key,
        "request": body,
        "reply": (choice.message.content or "") if choice is not None else "",
        "finish_reason": getattr(choice, "finish_reason", None),
        "response_model": getattr(response, "model", None),
        "response_id": getattr(response, "id", None),
        "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
        "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        "attempts": attempts,
        "seconds": round(seconds, 3),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# -------------------------------------------------------------------------------- JSON replies, retries


class InvalidReply(ValueError):
    """The model's reply broke a rule; the message is sent back to the model as the reason to try again."""


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply; tolerates a ```json fence around it, since many models add one."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise InvalidReply(
            f"the reply is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise InvalidReply("the reply must be one JSON object")
    return value


@dataclass
class Attempts:
    """What one conversation took: how many tries, and why the rejected ones were rejected."""

    tries: int = 0
    rejected: list[str] = field(default_factory=list)


def ask_until_valid(
    client: LLMClient,
    messages: list[dict[str, str]],
    validate: Callable[[str], Any],
    max_tries: int,
    attempts: Attempts,
) -> Any:
    """Ask; on an InvalidReply, show the model its reply and the validator's message and ask again.

    Returns what `validate` returns; raises InvalidReply (the last reason) after `max_tries` tries.
    RequestFailed passes through. The conversation is deterministic, so a rerun replays it from the cache.
    """
    conversation = list(messages)
    for _ in range(max_tries):
        attempts.tries += 1
        reply = client.complete(conversation)
        try:
            return validate(reply.text)
        except InvalidReply as exc:
            attempts.rejected.append(str(exc))
            conversation = conversation + [
                {"role": "assistant", "content": reply.text},
                {
                    "role": "user",
                    "content": f"That answer was rejected: {exc}. Reply again with the whole corrected "
                    "JSON object and nothing else.",
                },
            ]
    raise InvalidReply(attempts.rejected[-1] if attempts.rejected else "no tries allowed")
