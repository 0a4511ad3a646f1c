"""Dense prompts from short captions or sampled object lists, as DPG-Bench made its prompts with GPT-4.

One LLM request per source (template `dense_prompt`), checked for JSON, length and (for object lists) that
every object is named, retried with the reason, and reported when it still fails. Writes `prompts.jsonl`
(item_id, text, source) that `build graphs` reads, and a manifest with the template's hash and the cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpgbench.build.llm import (
    Attempts,
    Failure,
    InvalidReply,
    LLMClient,
    LLMConfig,
    RequestFailed,
    Usage,
    ask_until_valid,
    parse_json_object,
)
from dpgbench.build.sources import Source, SourceSet
from dpgbench.build.templates import Template, load_template
from dpgbench.data import write_atomic
from dpgbench.graphcheck import mentions_argument
from dpgbench.runs import check_manifest, environment, write_json

TEMPLATE = "dense_prompt"


@dataclass
class DensePromptConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    min_words: int = 40  # the template asks for 60-80; the check leaves the model some slack
    max_words: int = 110
    max_tries: int = 3
    template_dir: str | None = None


@dataclass(frozen=True)
class DensePrompt:
    item_id: str
    text: str
    source: str
    objects: tuple[str, ...] = ()


@dataclass
class DensePromptSummary:
    prompts: list[DensePrompt]
    failures: list[Failure]
    usage: Usage
    seconds: float


def validate_dense_prompt(reply: str, source: Source, min_words: int, max_words: int) -> str:
    value = parse_json_object(reply).get("prompt")
    if not isinstance(value, str) or not value.strip():
        raise InvalidReply('the object needs a non-empty string "prompt"')
    text = " ".join(value.split())  # one paragraph, single spaces: prompts are compared and hashed as text
    words = len(text.split())
    if not min_words <= words <= max_words:
        raise InvalidReply(f"the prompt has {words} words; write {min_words}-{max_words} (aim for 60-80)")
    missing = [obj for obj in source.objects if not mentions_argument(text, [obj])]
    if missing:
        raise InvalidReply(f"the prompt must name every object; missing: {', '.join(missing)}")
    return text


def write_dense_prompt(
    client: LLMClient, template: Template, source: Source, config: DensePromptConfig
) -> DensePrompt | Failure:
    attempts = Attempts()
    try:
        text = ask_until_valid(
            client,
            template.messages(source=source.text),
            lambda reply: validate_dense_prompt(reply, source, config.min_words, config.max_words),
            config.max_tries,
            attempts,
        )
    except (InvalidReply, RequestFailed) as exc:
        return Failure(source.item_id, TEMPLATE, attempts.tries, str(exc))
    return DensePrompt(source.item_id, text, source.text, source.objects)


def build_dense_prompts(
    config: DensePromptConfig,
    sources: SourceSet,
    out: Path,
    offline: bool = False,
    on_prompt: Callable[[int], None] | None = None,
) -> DensePromptSummary:
    """Dense prompts for every source into `out` (prompts.jsonl, manifest.json, llm_cache.jsonl); resumable."""
    started = time.monotonic()
    template = load_template(TEMPLATE, config.template_dir)
    identity = {
        "kind": "dense-prompts",
        "llm": config.llm.identity(),
        "templates": {TEMPLATE: template.sha256},
        "sources_sha256": sources.sha256,
        "words": [config.min_words, config.max_words],
    }
    manifest_path = out / "manifest.json"
    check_manifest(manifest_path, identity, "prompt build")
    manifest: dict[str, Any] = {
        "identity": identity,
        "config": asdict(config),
        "sources": sources.path,
        "templates": {TEMPLATE: template.info()},
        "finished": False,
        "environment": environment(),
    }
    write_json(manifest_path, manifest)
    results: list[DensePrompt | Failure] = []
    with LLMClient(config.llm, out / "llm_cache.jsonl", offline) as client:
        pool = ThreadPoolExecutor(max_workers=max(1, config.llm.concurrency))
        try:
            futures = [pool.submit(write_dense_prompt, client, template, s, config) for s in sources.items]
            for future in futures:
                results.append(future.result())
                if on_prompt is not None:
                    on_prompt(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        usage = client.usage
    prompts = [r for r in results if isinstance(r, DensePrompt)]
    failures = [r for r in results if isinstance(r, Failure)]
    lines = [
        json.dumps(
            {"item_id": p.item_id, "text": p.text, "source": p.source, "objects": list(p.objects)},
            ensure_ascii=False,
        )
        for p in prompts
    ]
    write_atomic(out / "prompts.jsonl", "".join(line + "\n" for line in lines))
    summary = DensePromptSummary(prompts, failures, usage, time.monotonic() - started)
    words = [len(p.text.split()) for p in prompts]
    manifest.update(
        finished=True,
        counts={
            "sources": len(sources.items),
            "prompts": len(prompts),
            "failed": len(failures),
            "mean_words": round(sum(words) / len(words), 2) if words else None,
        },
        usage=usage.as_dict(),
        failures=[asdict(f) for f in failures],
        seconds=round(summary.seconds, 3),
    )
    write_json(manifest_path, manifest)
    return summary
