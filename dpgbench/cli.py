"""The `dpgbench` command: thin Typer commands over the library; the only module that talks to the terminal.

Errors are one line with the fix and exit code 1 (`DPGBENCH_DEBUG=1` shows the traceback). Long jobs show a
rich progress bar with rate and ETA; rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from dpgbench import __version__, catalog, registry
from dpgbench.answers import read_answer_table, write_score_tables
from dpgbench.backends import BACKENDS
from dpgbench.data import GraphSet, save_graphs
from dpgbench.errors import DpgBenchError
from dpgbench.evaluate import EvaluateConfig, EvaluateSummary, evaluate, write_eval_manifest
from dpgbench.generate import (
    GenerateConfig,
    GenerateSummary,
    generate,
    model_differences,
    package_differences,
    replay_config,
    select_prompts,
    write_manifest,
)
from dpgbench.graphcheck import check_graphs
from dpgbench.judges import JUDGES
from dpgbench.runs import (
    RunPaths,
    check_manifest,
    distributed_rank,
    parse_shard,
    read_json,
    write_csv,
    write_json,
)
from dpgbench.scoring import PROTOCOLS, ProtocolResult, answer_stats, score
from dpgbench.terminal import console, err_console, fmt, progress_bar, warn_notes

app = typer.Typer(
    help="Reproducible DPG-Bench evaluation of text-to-image models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Benchmark files: fetch, list, convert.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def print_scores(results: dict[str, ProtocolResult]) -> None:
    order = [p for p in PROTOCOLS if p in results]
    overall = Table(title="DPG-Bench score (percent)")
    overall.add_column("protocol")
    overall.add_column("overall", justify="right")
    overall.add_column("prompts", justify="right")
    overall.add_column("not counted", justify="right")
    for name in order:
        r = results[name]
        overall.add_row(name, fmt(r.overall), str(r.n), str(len(r.excluded)))
    console.print(overall)
    for level in ("l1", "l2"):
        table = Table(title=f"{level.upper()} categories (percent, n = question-image pairs)")
        table.add_column("category")
        for name in order:
            table.add_column(name, justify="right")
        categories = sorted({c for name in order for c in getattr(results[name], level)})
        for category in categories:
            cells = []
            for name in order:
                c = getattr(results[name], level).get(category)
                cells.append(f"{c.score:.2f} ({c.n})" if c else "-")
            table.add_row(category, *cells)
        console.print(table)
    for name in order:
        r = results[name]
        if r.excluded:
            reasons: dict[str, int] = {}
            for why in r.excluded.values():
                reasons[why] = reasons.get(why, 0) + 1
            listed = "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items()))
            console.print(f"[yellow]{name}[/]: {len(r.excluded)} prompt(s) not counted: {escape(listed)}")
        if r.missing_images:
            console.print(f"[yellow]{name}[/]: {len(r.missing_images)} missing image(s) scored 0")


def load_prompts(spec: str) -> GraphSet:
    graphs = catalog.resolve(spec)
    warn_notes(graphs.notes, f"thing(s) ignored while loading {graphs.path} (see `dpgbench lint`)")
    return graphs


# -------------------------------------------------------------------------------------------- commands


BackendArgs = Annotated[
    list[str] | None,
    typer.Option(help="backend option key=value, repeatable (options: `dpgbench ls backends -v`)"),
]
JudgeArgs = Annotated[
    list[str] | None,
    typer.Option(help="judge option key=value, repeatable (options: `dpgbench ls judges -v`)"),
]
Where = Annotated[
    list[str] | None,
    typer.Option(help="with --answers: keep only rows whose column has this value, e.g. t2i_model=sd2dot1"),
]


@app.command("generate")
def generate_cmd(
    ctx: typer.Context,
    backend: Annotated[str | None, typer.Option(help="backend name (`dpgbench ls backends`)")] = None,
    prompts: Annotated[
        str, typer.Option(help="benchmark name or path (.csv, .jsonl, folder of .txt)")
    ] = "dpg-bench",
    out: Annotated[Path | None, typer.Option(help="run folder (default results/<backend>)")] = None,
    backend_arg: BackendArgs = None,
    seed: Annotated[int, typer.Option(help="base seed; image seeds derive from (seed, item_id, index)")] = 0,
    images_per_prompt: Annotated[int, typer.Option(help="images per prompt (DPG-Bench uses 4)")] = 4,
    limit: Annotated[int | None, typer.Option(help="only the first N prompts")] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: this job's share, for job arrays")] = None,
    from_manifest: Annotated[
        Path | None, typer.Option("--from", help="replay the settings of a run's manifest.json")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="retry images that failed in an earlier pass")] = True,
) -> None:
    """Make images for every prompt (4 per prompt), resumable and reproducible.

    `--from RUN/manifest.json --out NEW` replays a run (its hub model pinned to the commit it used);
    --backend-arg, --limit and --shard may be added, options that change the experiment may not.
    """
    recorded = None
    if from_manifest is not None:
        given = [
            "--" + name.replace("_", "-")
            for name in ("backend", "prompts", "seed", "images_per_prompt")
            if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
        ]
        if given:
            raise DpgBenchError(
                f"--from replays the run's settings and {', '.join(given)} would change them: drop "
                f"{'it' if len(given) == 1 else 'them'}, or run without --from"
            )
        manifest = read_json(from_manifest)
        in_place = out is None or out.resolve() == from_manifest.parent.resolve()
        overrides = registry.parse_pairs(backend_arg or [], "--backend-arg")
        config = replay_config(manifest, overrides, pin=not in_place)
        config = dataclasses.replace(config, limit=limit if limit is not None else config.limit)
        if getattr(ctx.get_parameter_source("retry_failed"), "name", "") == "COMMANDLINE":
            config.retry_failed = retry_failed
        recorded = None if in_place else manifest  # in place is a resume, checked by the manifest itself
        out = out or from_manifest.parent
    else:
        if backend is None:
            raise DpgBenchError(
                "--backend is required (see `dpgbench ls backends`), or replay a run with --from"
            )
        args = registry.parse_pairs(backend_arg or [], "--backend-arg")
        config = GenerateConfig(backend, args, prompts, images_per_prompt, seed, limit, retry_failed)
    out = out or Path("results") / config.backend
    summary = run_generate(config, out, shard, recorded)
    if summary.failed:
        raise typer.Exit(1)


def check_replay(recorded: dict, prompts_sha256: str, info: dict) -> None:
    """A replay must use the recorded prompts and model files; other differences are only reported."""
    if recorded.get("identity", {}).get("prompts_sha256") not in (None, prompts_sha256):
        raise DpgBenchError(
            f"--from: the prompt file {recorded['config']['prompts']} changed since the run was made "
            "(its sha256 differs); replay needs the same prompts"
        )
    changed = model_differences(recorded.get("backend") or {}, info)
    files = [c for c in changed if not c.startswith("dtype")]
    if files:
        raise DpgBenchError(
            f"--from: the model is not the one the run used ({'; '.join(files)}); replay needs the same files"
        )
    moved = [c for c in changed if c.startswith("dtype")]
    moved += package_differences(recorded.get("backend") or {}, info)
    if moved:
        warn_notes(moved, "difference(s) from the recorded run: pixels may not match exactly", show=5)


def run_generate(
    config: GenerateConfig, out: Path, shard_text: str | None, recorded: dict | None = None
) -> GenerateSummary:
    graphs = load_prompts(config.prompts)
    shard = combined_shard(shard_text)
    chosen = select_prompts(graphs.prompts, config.limit, (0, 1))
    mine = select_prompts(graphs.prompts, config.limit, shard)
    paths = RunPaths(out)
    # Refuse a folder made differently before loading a model for minutes.
    check_manifest(paths.manifest, config.identity(graphs.sha256), "run")
    backend = registry.create(BACKENDS, config.backend, "backend", config.backend_args)
    if recorded is not None:
        check_replay(recorded, graphs.sha256, backend.info())
    write_manifest(paths, config, graphs.sha256, [p.item_id for p in chosen], backend.info())
    total = len(mine) * config.images_per_prompt
    with progress_bar(f"generate {config.backend}", total, "images") as advance:
        try:
            skip = functools.partial(advance, skipped=True)  # resumed work: not in the rate or the ETA
            summary = generate(paths, config, mine, backend, shard=shard, on_image=advance, on_skip=skip)
        finally:
            # API backends know their usage and cost only now; keep it with the run even after an error.
            write_manifest(paths, config, graphs.sha256, [p.item_id for p in chosen], backend.info())
    info = backend.info()
    if info.get("usage"):
        console.print(f"backend usage: {info['usage']}", highlight=False)
    if info.get("prompts_over_token_limit"):
        console.print(
            f"note: {info['prompts_over_token_limit']} prompt(s) were longer than the "
            f"{info['text_token_limit']} tokens the text encoder takes; the pipeline cut them (as it does "
            "for everyone)",
            highlight=False,
        )
    console.print(
        f"{out}: {summary.done} image(s) made, {summary.skipped} already done, {len(summary.failed)} failed "
        f"in {summary.seconds:.1f} s"
        + (
            f"; {summary.retried_one_by_one} prompt(s) retried image by image after OOM"
            if summary.retried_one_by_one
            else ""
        )
    )
    for failure in summary.failed[:10]:
        err_console.print(f"[red]failed[/] {escape(f'{failure.item_id}[{failure.index}]: {failure.reason}')}")
    if len(summary.failed) > 10:
        err_console.print(f"... and {len(summary.failed) - 10} more in {paths.images_log(*shard).name}")
    return summary


def combined_shard(shard_text: str | None) -> tuple[int, int]:
    """Job-array shard (--shard i/n) times torchrun/accelerate ranks."""
    index, count = parse_shard(shard_text) if shard_text else (0, 1)
    rank, world = distributed_rank()
    return index * world + rank, count * world


@app.command("score")
def score_cmd(
    run: Annotated[Path | None, typer.Argument(help="run folder made by `dpgbench generate`")] = None,
    judge: Annotated[str, typer.Option(help="judge name (`dpgbench ls judges`)")] = "mplug-large",
    judge_arg: JudgeArgs = None,
    questions: Annotated[
        str | None, typer.Option(help="question graphs: benchmark name or path (default: the run's prompts)")
    ] = None,
    answers: Annotated[
        Path | None,
        typer.Option(
            help="score an answer table made elsewhere (with --questions and --out): columns "
            "item_id,image_index,proposition_id,answer, or DSG's item_id,question_id,answer"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="with --answers: folder for scores.csv, prompt_scores.csv, summary.json"),
    ] = None,
    where: Where = None,
    images_per_call: Annotated[int, typer.Option(help="images per judge call (judges that batch)")] = 4,
    label: Annotated[
        str | None,
        typer.Option(help="eval folder name (default: the judge's), to keep two settings of one judge"),
    ] = None,
    soft_scores: Annotated[
        bool,
        typer.Option(help="also record P(yes) per answer (hf-vqa, openai-vlm): a VQAScore-style soft score"),
    ] = False,
    shard: Annotated[str | None, typer.Option(help="i/n: this job's share, for job arrays")] = None,
) -> None:
    """Ask a judge about every image of a run (cached, resumable) and score it under all protocols.

    Without a run: `dpgbench score --questions Q --answers A.csv --out DIR` scores answers made elsewhere.
    """
    if answers is not None:
        if run is not None:
            raise DpgBenchError(
                f"give a run folder ({run}) or --answers {answers}, not both: --answers scores a table made elsewhere"
            )
        score_answer_table(questions, answers, out, registry.parse_pairs(where or [], "--where"))
        return
    if run is None:
        raise DpgBenchError(
            "give a run folder (`dpgbench score results/NAME`) or --questions Q.csv --answers A.csv --out DIR"
        )
    paths = RunPaths(run)
    if not paths.manifest.exists():
        raise DpgBenchError(f"{run}: no manifest.json here; run `dpgbench generate --out {run}` first")
    manifest = read_json(paths.manifest)
    spec = questions or manifest["config"]["prompts"]
    graphs = load_prompts(spec)
    if not graphs.has_questions:
        raise DpgBenchError(
            f"{spec} has prompts but no questions; pass --questions dpg-bench (or a question CSV)"
        )
    config = EvaluateConfig(
        judge,
        registry.parse_pairs(judge_arg or [], "--judge-arg"),
        spec,
        images_per_call,
        label or "",
        soft_scores,
    )
    n_images = int(manifest["config"].get("images_per_prompt", 4))
    shard_pair = combined_shard(shard)
    plan = evaluate(paths, config, graphs, None, shard=shard_pair, n_images=n_images, plan_only=True)
    judge_obj = None
    if plan.asked:
        judge_obj = registry.create(JUDGES, judge, "judge", config.judge_args)
        write_eval_manifest(paths.eval_dir(config.folder), config, graphs, judge_obj.info())
    with progress_bar(f"judge {judge}", plan.asked, "questions") as advance:
        summary = evaluate(
            paths, config, graphs, judge_obj, shard=shard_pair, n_images=n_images, on_questions=advance
        )
    report_evaluation(paths, config.folder, summary)


def report_evaluation(paths: RunPaths, judge: str, summary: EvaluateSummary) -> None:
    console.print(
        f"{paths.eval_dir(judge)}: {summary.asked} question(s) asked, {summary.cached} from cache, "
        f"{summary.images} image(s) judged in {summary.seconds:.1f} s"
    )
    for problem in summary.problems[:10]:
        err_console.print(
            f"[yellow]image problem[/] {escape(problem.file)}: {escape(problem.reason)} (scored 0 in strict)"
        )
    if len(summary.problems) > 10:
        err_console.print(f"... {len(summary.problems)} image problems in all, listed in summary.json")
    if summary.not_in_questions:
        warn_notes(summary.not_in_questions, "run prompt(s) have no questions in the question file")
    if summary.stats.other:
        warn_notes(summary.stats.examples, f"answer(s) are neither yes nor no ({summary.stats.other} in all)")
    if not summary.complete:
        console.print("[yellow]not all answers are in yet[/] (other shards still running?); rerun to finish")
        return
    print_scores(summary.results)
    if summary.usage:
        console.print(f"judge usage (this call): {describe_usage(summary.usage)}", highlight=False)
    if summary.soft:
        console.print(
            f"soft score (mean P(yes), no dependencies): {fmt(summary.soft['overall'])} over {summary.soft['n']} "
            f"prompts ({summary.soft['images_left_out']} image(s) without P(yes)); per prompt in summary.json"
        )
    console.print(
        f"tables: {paths.eval_dir(judge) / 'scores.csv'}, {paths.eval_dir(judge) / 'prompt_scores.csv'}"
    )


def describe_usage(usage: dict[str, object]) -> str:
    """'26 question(s), 52 request(s), 26 retries, 5,200 + 26 tokens, $0.0133' (unknown cost: 'cost unknown')."""
    cost = usage.get("cost_usd")
    return (
        f"{usage.get('questions', 0)} question(s), {usage.get('requests', 0)} request(s), "
        f"{usage.get('retries', 0)} retries, {usage.get('input_tokens', 0):,} + "
        f"{usage.get('output_tokens', 0):,} tokens, "
        + (f"${cost:.4f}" if isinstance(cost, (int, float)) else "cost unknown")
    )


def score_answer_table(questions: str | None, answers: Path, out: Path | None, where: dict[str, str]) -> None:
    if questions is None or out is None:
        raise DpgBenchError(
            "--answers needs --questions (the question graphs) and --out (a folder for the tables)"
        )
    graphs = load_prompts(questions)
    if not graphs.has_questions:
        raise DpgBenchError(
            f"{questions} has prompts but no questions; pass question graphs (a DSG-format CSV or dpg-bench)"
        )
    table = read_answer_table(answers, graphs, where)
    warn_notes(table.ignored, "answer row(s) ignored")
    warn_notes(table.not_yes_no, "answer(s) are neither yes nor no")
    results = score(graphs.prompts, table.answers, n_images=table.n_images)
    stats = answer_stats(graphs.prompts, table.answers)
    write_score_tables(out, results)
    write_json(
        out / "summary.json",
        {
            "answers": str(answers),
            "questions": {"name": graphs.name, "path": graphs.path, "sha256": graphs.sha256},
            "layout": table.layout,
            "rows_used": table.rows - len(table.ignored),
            "rows_ignored": len(table.ignored),
            "rows_not_selected": table.not_selected,
            "not_yes_no": len(table.not_yes_no),
            "unanswered": stats.unanswered,
            "prompts_without_answers": sum(1 for p in graphs.prompts if p.item_id not in table.answers),
        },
    )
    console.print(
        f"{answers}: {table.rows - len(table.ignored)} answer(s) used, {len(table.ignored)} ignored, "
        + (f"{table.not_selected} not selected by --where, " if where else "")
        + f"{stats.unanswered} question(s) of answered images without an answer",
        highlight=False,
    )
    print_scores(results)
    console.print(f"tables: {out / 'scores.csv'}, {out / 'prompt_scores.csv'}")


@app.command("agree")
def agree_cmd(
    run: Annotated[Path, typer.Argument(help="run folder scored by both judges")],
    judges: Annotated[str, typer.Option(help="two judges, e.g. mplug-large,hf-vqa")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="CSV of the agreement and score deltas")
    ] = None,
) -> None:
    """How far two judges agree on one run: per-question agreement, Cohen's kappa, score deltas."""
    from dpgbench.agreement import compare_judges

    names = [j.strip() for j in judges.split(",") if j.strip()]
    if len(names) != 2:
        raise DpgBenchError(
            f"--judges {judges}: give exactly two judge names, e.g. --judges mplug-large,hf-vqa"
        )
    paths = RunPaths(run)
    manifest = (
        read_json(paths.eval_dir(names[0]) / "manifest.json") if paths.eval_dir(names[0]).exists() else {}
    )
    spec = manifest.get("config", {}).get("questions") or read_json(paths.manifest)["config"]["prompts"]
    result = compare_judges(paths, names[0], names[1], load_prompts(spec))
    a, b = names
    table = Table(title=f"{a} vs {b} on {run}: {result.overall.n} question-image pairs")
    for column in ("category", "n", "agreement", "kappa", f"yes {a}", f"yes {b}"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for name, agreement in [("all", result.overall), *result.by_category.items()]:
        table.add_row(
            name,
            str(agreement.n),
            f"{agreement.agree:.3f}",
            fmt(agreement.kappa),
            f"{agreement.yes_a:.3f}",
            f"{agreement.yes_b:.3f}",
        )
    console.print(table)
    deltas = [d for d in result.score_deltas if d.level != "l2"]
    if deltas:
        scores = Table(title=f"score deltas ({b} - {a}, percent points)")
        for column in ("protocol", "level", "category", a, b, "delta"):
            scores.add_column(column)
        for d in deltas:
            scores.add_row(d.protocol, d.level, d.category, fmt(d.a), fmt(d.b), fmt(d.delta))
        console.print(scores)
    if result.only_a or result.only_b:
        console.print(
            f"[yellow]not compared[/]: {result.only_a} pair(s) only {a} answered, {result.only_b} only {b}"
        )
    if a != b:
        console.print(
            f"[bold]{b} is a different judge from {a}[/]: label its scores as such; "
            "never mix them in one leaderboard"
        )
    if out is not None:
        rows = [
            {"kind": "agreement", "category": name, "n": g.n, "agreement": g.agree, "kappa": g.kappa}
            for name, g in [("all", result.overall), *result.by_category.items()]
        ] + [
            {"kind": f"delta {d.protocol} {d.level}", "category": d.category, "delta": d.delta}
            for d in result.score_deltas
        ]
        write_csv(out, rows, ["kind", "category", "n", "agreement", "kappa", "delta"])
        console.print(f"wrote {out}")


@app.command("lint")
def lint_cmd(
    files: Annotated[list[str], typer.Argument(help="question graph files (.csv/.jsonl) or benchmark names")],
    show: Annotated[int, typer.Option(help="print at most this many findings per file")] = 50,
    warnings: Annotated[bool, typer.Option(help="also print warnings")] = True,
) -> None:
    """Check question graphs: ids, parents, cycles, order, yes/no form, tuple mentions, empty fields."""
    errors = 0
    for spec in files:
        try:
            graphs = catalog.resolve(spec)
        except DpgBenchError as exc:  # one unreadable file must not hide the findings of the others
            if len(files) == 1:
                raise
            err_console.print(f"[red]error[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
            errors += 1
            continue
        findings = [f for f in check_graphs(graphs) if warnings or f.level == "error"]
        n_errors = sum(f.level == "error" for f in findings)
        errors += n_errors
        for finding in findings[:show]:
            style = "red" if finding.level == "error" else "yellow"
            console.print(f"[{style}]{escape(str(finding))}[/]", highlight=False, soft_wrap=True)
        if len(findings) > show:
            console.print(f"... {len(findings) - show} more (use --show)")
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.code] = counts.get(f.code, 0) + 1
        detail = ", ".join(f"{n} {code}" for code, n in sorted(counts.items()))
        console.print(
            f"{graphs.path}: {len(graphs.prompts)} prompts, {graphs.n_questions} questions: "
            f"{n_errors} error(s), {len(findings) - n_errors} warning(s)" + (f" ({detail})" if detail else "")
        )
    if errors:
        raise typer.Exit(1)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="benchmark name, e.g. dpg-bench")],
    csv: Annotated[
        Path | None, typer.Option(help="use a local copy instead of downloading (still verified)")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="download from this mirror instead (still verified)")
    ] = None,
) -> None:
    """Download a benchmark's question file, pinned and verified, into the user cache."""
    path = catalog.fetch(name, csv, url)
    graphs = catalog.resolve(name)
    console.print(f"{name}: {path} ({len(graphs.prompts)} prompts, {graphs.n_questions} questions), verified")


@data_app.command("list")
def data_list() -> None:
    """Known benchmarks, and whether each is available locally."""
    table = Table()
    for column in ("name", "available", "path", "description"):
        table.add_column(column)
    for b in catalog.BENCHMARKS.values():
        path = catalog.local_path(b)
        table.add_row(
            b.name, "yes" if path.exists() else "no (dpgbench data fetch)", str(path), b.description
        )
    console.print(table)


@data_app.command("convert")
def data_convert(
    source: Annotated[str, typer.Argument(help="benchmark name or .csv/.jsonl path")],
    target: Annotated[Path, typer.Argument(help="output .csv (DSG format) or .jsonl")],
) -> None:
    """Write question graphs in the other format (DSG-format CSV <-> our JSONL)."""
    graphs = load_prompts(source)
    save_graphs(graphs.prompts, target)
    console.print(f"{target}: {len(graphs.prompts)} prompts, {graphs.n_questions} questions")


@app.command("ls")
def ls_cmd(
    what: Annotated[str, typer.Argument(help="backends, judges, benchmarks or protocols")] = "backends",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="show every option and its default")
    ] = False,
) -> None:
    """List backends, judges, benchmarks or scoring protocols."""
    if what in ("benchmarks", "data"):
        data_list()
        return
    if what == "protocols":
        for name, text in (
            ("strict", "default: all rows, zeros cascade through the graph, missing images score 0"),
            (
                "official",
                "bit-compatible with upstream compute_dpg_bench.py (quirks kept, see docs/protocols.md)",
            ),
            ("dsg", "DSG's rule: a question scores 0 if a parent's raw answer is not yes; no cascade"),
        ):
            console.print(f"[bold]{name}[/]: {text}")
        return
    tables = {"backends": (BACKENDS, "backend"), "judges": (JUDGES, "judge")}
    if what not in tables:
        raise DpgBenchError(f"unknown list '{what}'; use backends, judges, benchmarks or protocols")
    table_map, kind = tables[what]
    for name, entry in table_map.items():
        extra = f" [dim](pip install 'dpgbench\\[{entry.extra}]')[/]" if entry.extra else ""
        console.print(f"[bold]{name}[/]: {entry.summary}{extra}")
        if verbose:
            try:
                cls = registry.load_class(table_map, name, kind)
            except DpgBenchError as exc:
                console.print(f"    [yellow]{exc}[/]")
                continue
            for option, type_name, default, help_text in registry.describe(cls.Config):  # type: ignore[attr-defined]
                console.print(f"    {option} ({type_name}) = {default}  [dim]{help_text}[/]", highlight=False)


@app.command("import-folder")
def import_folder_cmd(
    src: Annotated[Path, typer.Argument(help="folder of images made elsewhere")],
    out: Annotated[Path, typer.Option(help="run folder to create or complete")],
    prompts: Annotated[
        str, typer.Option(help="benchmark name or path the images were made for")
    ] = "dpg-bench",
    grid_tile: Annotated[
        int | None, typer.Option(help="official 2x2 grids <item_id>.png with tiles of this many pixels")
    ] = None,
    images_per_prompt: Annotated[int, typer.Option(help="images per prompt (per-image files)")] = 4,
) -> None:
    """Import images made elsewhere (<item_id>_<index>.png, or official 2x2 grids) into a run folder."""
    from dpgbench.folders import import_folder

    graphs = load_prompts(prompts)
    report = import_folder(
        src, graphs, out, grid_tile, images_per_prompt=images_per_prompt, prompts_spec=prompts
    )
    console.print(
        f"{out}: {report.imported} image(s) imported, {report.unchanged} unchanged, "
        f"{len(report.problems)} file problem(s), {len(report.missing)} image(s) missing"
    )
    warn_notes([f"{p.file}: {p.problem}" for p in report.problems], "file(s) could not be used", show=10)
    warn_notes([f"{item}[{index}]" for item, index in report.missing], "image(s) missing", show=5)
    if not report.imported + report.unchanged:
        raise DpgBenchError(
            f"{src}: no usable image for the {len(graphs.prompts)} prompts of {prompts} (problems above); "
            "check --prompts, the file names (<item_id>_<index>.png, or <item_id>.png with --grid-tile)"
        )
    console.print(f"next: dpgbench score {out} --judge mplug-large")


@app.command("export-grids")
def export_grids_cmd(
    run: Annotated[Path, typer.Argument(help="run folder made by dpgbench")],
    out: Annotated[Path, typer.Option(help="folder for <item_id>.png grids")],
    tile: Annotated[int | None, typer.Option(help="resize each image to this size (default: keep)")] = None,
) -> None:
    """Write the official 2x2 grid layout, so upstream's compute_dpg_bench.py can score this run too."""
    from dpgbench.folders import export_grids

    report = export_grids(run, out, tile)
    console.print(f"{out}: {report.written} grid(s) written, {len(report.skipped)} prompt(s) skipped")
    warn_notes(
        [f"{p.file}: {p.problem}" for p in report.skipped], "prompt(s) without four good images", show=5
    )


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("results/demo"),
    tiny_diffusers: Annotated[
        bool,
        typer.Option(
            help="generate with a tiny random-weight SD 1.5 pipeline built on the spot (needs torch)"
        ),
    ] = False,
) -> None:
    """Run the whole pipeline offline in seconds: dummy (or tiny diffusers) backend -> dummy judge -> tables."""
    if tiny_diffusers:
        model_dir = out.parent / f".{out.name}-tiny-sd15"
        if not (model_dir / "model_index.json").exists():
            try:
                from dpgbench.tiny_models import save_tiny_sd15
            except ImportError as exc:
                raise DpgBenchError(
                    f"--tiny-diffusers needs {exc.name}: pip install 'dpgbench[generate]'"
                ) from None
            save_tiny_sd15(model_dir)
        args = {"model": str(model_dir), "steps": "2", "width": "64", "height": "64", "device": "cpu"}
        config = GenerateConfig("sd15", args, "demo")
    else:
        config = GenerateConfig("dummy", {}, "demo")
    run_generate(config, out, None)
    graphs = load_prompts("demo")
    eval_config = EvaluateConfig("dummy", {}, "demo")
    paths = RunPaths(out)
    judge_obj = registry.create(JUDGES, "dummy", "judge", {})
    write_eval_manifest(paths.eval_dir("dummy"), eval_config, graphs, judge_obj.info())
    plan = evaluate(paths, eval_config, graphs, None, plan_only=True)
    with progress_bar("judge dummy", plan.asked, "questions") as advance:
        summary = evaluate(paths, eval_config, graphs, judge_obj, on_questions=advance)
    report_evaluation(paths, "dummy", summary)


# Commands owned by other areas live in `dpgbench/cli_<area>.py`, each with `register(app)`; they must stay
# torch-free at import time. Add one line per module to this tuple.
COMMAND_MODULES: tuple[str, ...] = (
    "dpgbench.cli_report",
    "dpgbench.cli_build",
    "dpgbench.cli_ella",
)


def _register_command_modules() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_command_modules()


@app.callback(invoke_without_command=True)
def root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    if version:
        console.print(f"dpgbench {__version__}")
        raise typer.Exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one-line errors, exit code 1, traceback only with DPGBENCH_DEBUG=1."""
    debug = os.environ.get("DPGBENCH_DEBUG", "") not in ("", "0")
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="dpgbench", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except TyperException as exc:  # unknown option, missing argument: one line, not a box
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if not message and ctx is not None:  # a bare group command: its help is the answer
            console.print(ctx.get_help(), highlight=False)
            sys.exit(0)
        command = ctx.command_path if ctx is not None else "dpgbench"
        err_console.print(f"[red]error[/]: {escape(message)} (see `{command} --help`)", highlight=False)
        sys.exit(1)
    except typer.Abort:
        err_console.print("interrupted: finished work is saved; rerun the same command to resume")
        sys.exit(130)
    except DpgBenchError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[red]error[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished work is saved; rerun the same command to resume")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, with how to get the details
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[red]internal error[/]: {type(exc).__name__}: {escape(str(exc))} "
            "(rerun with DPGBENCH_DEBUG=1 for the traceback and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":  # `torchrun -m dpgbench.cli ...` / `accelerate launch -m dpgbench.cli ...`
    main()
