"""Commands of the benchmark construction tools: `build prompts`, `build graphs`, `build review`, `stats`.

Thin shells over `dpgbench.build` (imported inside the commands, so `dpgbench --help` stays light). Rerunning a
build command with the same --out resumes it from the request cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dpgbench.errors import DpgBenchError
from dpgbench.terminal import console, err_console, progress_bar

if TYPE_CHECKING:
    from dpgbench.build.llm import Failure, LLMConfig, Usage
    from dpgbench.build.sources import SourceSet

build_app = typer.Typer(
    help="Make new prompt sets and question graphs with an LLM, and review them.", no_args_is_help=True
)
review_app = typer.Typer(
    help="Human review of generated graphs: export a sheet, import the edits.", no_args_is_help=True
)
build_app.add_typer(review_app, name="review")

Model = Annotated[str, typer.Option(help="chat model name on the server")]
BaseUrl = Annotated[
    str | None, typer.Option(help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (default: OpenAI)")
]
ApiKeyEnv = Annotated[str, typer.Option(help="environment variable holding the API key")]
Concurrency = Annotated[int, typer.Option(min=1, help="requests in flight at once")]
MaxAttempts = Annotated[
    int, typer.Option(min=1, help="HTTP attempts per request (429/5xx/timeouts back off)")
]
Timeout = Annotated[float, typer.Option(help="seconds to wait for one answer")]
Temperature = Annotated[float, typer.Option(help="sampling temperature (0: most reproducible)")]
MaxTokens = Annotated[int, typer.Option(help="max tokens per answer")]
JsonMode = Annotated[
    bool, typer.Option(help="ask for response_format json_object (off for servers without it)")
]
PricePrompt = Annotated[
    float | None, typer.Option(help="USD per million prompt tokens (default: known price or 0)")
]
PriceCompletion = Annotated[float | None, typer.Option(help="USD per million completion tokens")]
MaxTries = Annotated[
    int, typer.Option(min=1, help="answers per stage and prompt before it is reported as failed")
]
Templates = Annotated[
    Path | None, typer.Option(help="folder of NAME.vN.txt templates (default: shipped ones)")
]
Offline = Annotated[bool, typer.Option(help="replay the cache only; report uncached prompts as failed")]
Limit = Annotated[int | None, typer.Option(min=1, help="only the first N prompts")]


def llm_config(
    model: str,
    base_url: str | None,
    api_key_env: str,
    concurrency: int,
    max_attempts: int,
    timeout: float,
    temperature: float,
    max_tokens: int,
    json_mode: bool,
    price_prompt: float | None,
    price_completion: float | None,
) -> LLMConfig:
    from dpgbench.build.llm import LLMConfig

    return LLMConfig(
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        temperature=temperature,
        max_tokens=max_tokens,
        json_mode=json_mode,
        concurrency=concurrency,
        max_attempts=max_attempts,
        timeout=timeout,
        price_prompt=price_prompt,
        price_completion=price_completion,
    )


def limited(sources: SourceSet, limit: int | None) -> SourceSet:
    from dpgbench.build.sources import SourceSet

    if limit is None:
        return sources
    # Same identity as the whole set: a trial with --limit and the full run can share one folder and cache.
    return SourceSet(f"{sources.path} (first {limit})", sources.sha256, sources.items[:limit])


def report_build(
    out: Path, what: str, done: int, failures: list[Failure], usage: Usage, seconds: float
) -> None:
    for f in failures[:10]:
        err_console.print(
            f"[yellow]failed[/] {f.item_id} at {f.stage} after {f.tries} answer(s): {f.reason}",
            highlight=False,
            soft_wrap=True,
        )
    if len(failures) > 10:
        err_console.print(f"... {len(failures)} failures in all, listed in {out / 'manifest.json'}")
    console.print(
        f"{out}: {done} {what}, {len(failures)} failed in {seconds:.1f} s; requests {usage.requests} "
        f"(+{usage.cache_hits} from cache), {usage.retries} retried, tokens {usage.prompt_tokens} in / "
        f"{usage.completion_tokens} out, cost ${usage.cost_usd:.4f} (the folder's {usage.total_requests} "
        f"requests so far: ${usage.total_cost_usd:.4f})",
        highlight=False,
    )


@build_app.command("prompts")
def build_prompts_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="captions (.txt one per line, .csv/.tsv, COCO captions .json, .jsonl, folder) or, with "
            "--objects, a category list (one per line)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="output folder (prompts.jsonl, manifest.json, llm_cache.jsonl)")],
    objects: Annotated[int, typer.Option(help="sample this many object lists from SOURCE's categories")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the object sampling")] = 0,
    min_objects: Annotated[int, typer.Option(help="fewest objects per sampled list")] = 1,
    max_objects: Annotated[int, typer.Option(help="most objects per sampled list")] = 4,
    min_words: Annotated[int, typer.Option(help="shortest accepted prompt, in words")] = 40,
    max_words: Annotated[int, typer.Option(help="longest accepted prompt, in words")] = 110,
    model: Model = "gpt-4",
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: Concurrency = 4,
    max_attempts: MaxAttempts = 6,
    timeout: Timeout = 120.0,
    temperature: Temperature = 0.0,
    max_tokens: MaxTokens = 400,
    json_mode: JsonMode = True,
    price_prompt: PricePrompt = None,
    price_completion: PriceCompletion = None,
    max_tries: MaxTries = 3,
    templates: Templates = None,
    offline: Offline = False,
    limit: Limit = None,
) -> None:
    """Dense prompts (60-80 words) from short captions or sampled object lists."""
    from dpgbench.build.dense_prompts import TEMPLATE, DensePromptConfig, build_dense_prompts
    from dpgbench.build.sources import read_sources, sample_objects
    from dpgbench.build.templates import load_template

    sources = (
        sample_objects(source, objects, seed, min_objects, max_objects) if objects else read_sources(source)
    )
    sources = limited(sources, limit)
    llm = llm_config(
        model, base_url, api_key_env, concurrency, max_attempts, timeout, temperature, max_tokens, json_mode,
        price_prompt, price_completion,
    )  # fmt: skip
    config = DensePromptConfig(llm, min_words, max_words, max_tries, str(templates) if templates else None)
    load_template(TEMPLATE, config.template_dir)  # a missing template is reported before any work starts
    with progress_bar("dense prompts", len(sources.items), "prompts") as advance:
        summary = build_dense_prompts(config, sources, out, offline, on_prompt=advance)
    report_build(
        out, "prompt(s) written", len(summary.prompts), summary.failures, summary.usage, summary.seconds
    )
    console.print(f"next: dpgbench build graphs {out / 'prompts.jsonl'} --out GRAPHS_FOLDER")
    if summary.failures:
        raise typer.Exit(1)


@build_app.command("graphs")
def build_graphs_cmd(
    prompts: Annotated[
        Path, typer.Argument(help="prompts: .jsonl (e.g. build prompts' output), .txt, .csv or folder")
    ],
    out: Annotated[
        Path, typer.Option(help="output folder (graphs.csv, graphs.jsonl, manifest.json, llm_cache.jsonl)")
    ],
    model: Model = "gpt-4",
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: Concurrency = 4,
    max_attempts: MaxAttempts = 6,
    timeout: Timeout = 120.0,
    temperature: Temperature = 0.0,
    max_tokens: MaxTokens = 1500,
    json_mode: JsonMode = True,
    price_prompt: PricePrompt = None,
    price_completion: PriceCompletion = None,
    max_tries: MaxTries = 3,
    templates: Templates = None,
    offline: Offline = False,
    limit: Limit = None,
) -> None:
    """DSG question graphs in three stages (tuples; questions and dependencies at once), validated."""
    from dpgbench.build.graphs import GraphConfig, build_graphs
    from dpgbench.build.sources import read_sources

    sources = limited(read_sources(prompts), limit)
    llm = llm_config(
        model, base_url, api_key_env, concurrency, max_attempts, timeout, temperature, max_tokens, json_mode,
        price_prompt, price_completion,
    )  # fmt: skip
    config = GraphConfig(llm, max_tries, str(templates) if templates else None)
    config.templates()  # a missing template is reported before any work starts
    with progress_bar("question graphs", len(sources.items), "prompts") as advance:
        summary = build_graphs(config, sources, out, offline, on_prompt=advance)
    report_build(out, f"graph(s) with {summary.n_questions} questions", len(summary.graphs), summary.failures,
                 summary.usage, summary.seconds)  # fmt: skip
    for note in summary.notes:
        err_console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
    console.print(f"next: dpgbench build review export {out / 'graphs.csv'} review.csv")
    if summary.failures:
        raise typer.Exit(1)


@review_app.command("export")
def review_export_cmd(
    graphs: Annotated[str, typer.Argument(help="question graphs (.csv/.jsonl) or a benchmark name")],
    sheet: Annotated[Path, typer.Argument(help="review sheet to write (.csv)")],
) -> None:
    """Write a review sheet: the DSG CSV plus action (keep/delete), comment and lint columns."""
    from dpgbench import catalog
    from dpgbench.build.review import export_review

    if sheet.suffix.lower() != ".csv":
        raise DpgBenchError(f"{sheet}: a review sheet is a .csv file; choose a name ending in .csv")
    loaded = catalog.resolve(graphs)
    flagged = export_review(loaded, sheet)
    console.print(
        f"{sheet}: {len(loaded.prompts)} prompts, {loaded.n_questions} questions, {flagged} row(s) with lint notes; "
        "edit cells, set action=delete to drop a row, add rows with new ids, then "
        f"`dpgbench build review import {sheet} --out reviewed.csv --original {graphs}`",
        highlight=False,
    )


@review_app.command("import")
def review_import_cmd(
    sheet: Annotated[Path, typer.Argument(help="the edited review sheet (.csv)")],
    out: Annotated[Path, typer.Option(help="reviewed graphs to write (.csv DSG format or .jsonl)")],
    original: Annotated[
        str | None, typer.Option(help="the graphs the sheet came from, to count the edits")
    ] = None,
) -> None:
    """Validate an edited review sheet and write the reviewed graphs (refused with the first error's line)."""
    from dpgbench import catalog
    from dpgbench.build.review import import_review, review_record
    from dpgbench.runs import write_json

    source = catalog.resolve(original) if original is not None else None
    result = import_review(sheet, source, out)
    write_json(out.with_name(out.name + ".review.json"), review_record(sheet, source, out, result))
    for warning in result.warnings[:5]:
        err_console.print(f"[yellow]{warning}[/]", highlight=False, soft_wrap=True)
    console.print(
        f"{out}: {len(result.graphs)} prompts, {sum(len(p.questions) for p in result.graphs)} questions "
        f"({result.edited} edited, {result.deleted} deleted, {result.added} added, {len(result.warnings)} warning(s))",
        highlight=False,
    )


def stats_cmd(
    files: Annotated[
        list[str], typer.Argument(help="prompt sets: .csv/.jsonl graphs, folders of .txt, benchmark names")
    ],
    csv: Annotated[Path | None, typer.Option(help="also write the table as CSV")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a length-distribution plot (.png)")] = None,
    pos: Annotated[bool, typer.Option(help="count nouns/adjectives/prepositions (needs NLTK data)")] = True,
    clip_vocab: Annotated[
        Path | None, typer.Option(help="CLIP bpe_simple_vocab_16e6.txt.gz or an open_clip_torch .whl")
    ] = None,
) -> None:
    """Prompt-set statistics as in the paper's Table 2 (words, CLIP tokens, POS counts, graphs)."""
    from dpgbench import catalog
    from dpgbench.build.clip_tokens import ClipTokenizer
    from dpgbench.build.stats import nltk_tagger, plot_lengths, prompt_set_stats
    from dpgbench.runs import write_csv

    sets = [
        catalog.resolve(spec) for spec in files
    ]  # a wrong path is named before NLTK or CLIP is looked for
    tagger = nltk_tagger() if pos else None
    tokenizer = ClipTokenizer.load(clip_vocab)
    results = [prompt_set_stats(graphs, tokenizer, tagger) for graphs in sets]
    table = Table(title="prompt-set statistics (means per prompt)")
    columns: list[tuple[str, str, str]] = [
        ("set", "name", ""),
        ("prompts", "prompts", "d"),
        ("words", "words", ".2f"),
        ("CLIP tokens", "clip_tokens", ".2f"),
        ("> 77 tokens %", "over_clip_window", ".1f"),
        ("nouns", "nouns", ".2f"),
        ("adj+adv", "adjectives_adverbs", ".2f"),
        ("prep", "prepositions", ".2f"),
        ("distinct nouns", "distinct_nouns", "d"),
        ("questions", "questions_per_prompt", ".2f"),
        ("depth mean/max", "depth_mean", ".2f"),
    ]
    for title, _, _ in columns:
        table.add_column(title, justify="left" if title == "set" else "right")
    for s in results:
        cells = [_cell(getattr(s, attribute), spec) for _, attribute, spec in columns]
        if s.depth_max is not None:
            cells[-1] += f" / {s.depth_max}"
        table.add_row(*cells)
    console.print(table)
    categories = sorted({c for s in results for c in s.categories})
    if categories:
        histogram = Table(title="questions per level-1 category (percent of the set's questions)")
        histogram.add_column("set")
        for c in categories:
            histogram.add_column(c, justify="right")
        for s in results:
            total = sum(s.categories.values())
            histogram.add_row(
                s.name, *(f"{100 * s.categories.get(c, 0) / total:.1f}" if total else "-" for c in categories)
            )
        console.print(histogram)
    if csv is not None:
        rows = [s.row() for s in results]
        names = list(dict.fromkeys(k for row in rows for k in row))
        write_csv(csv, rows, names)
        console.print(f"table: {csv}")
    if plot is not None:
        plot_lengths(results, plot)
        console.print(f"plot: {plot}")


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def register(app: typer.Typer) -> None:
    app.add_typer(build_app, name="build")
    app.command("stats")(stats_cmd)
