"""Commands for what people look at after scoring: `leaderboard`, `compare`, `correlate`, `report`.

Thin shells over leaderboard.py, compare.py, correlate.py and html_report.py; tables go to the terminal
through `dpgbench.terminal`, files next to `--out`. Nothing heavy is imported before a command runs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dpgbench.errors import DpgBenchError
from dpgbench.scoring import PROTOCOLS
from dpgbench.terminal import console, err_console, fmt, progress_bar, warn_notes

Protocol = Annotated[str, typer.Option(help=f"scoring protocol: {', '.join(PROTOCOLS)}")]
Judge = Annotated[str | None, typer.Option(help="use this judge's scores when a run has several")]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise DpgBenchError(f"--protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")


# ------------------------------------------------------------------------------------- leaderboard


def leaderboard_cmd(
    runs: Annotated[
        list[str] | None, typer.Argument(help="run folders (or LABEL=FOLDER), eval folders")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the table here (.csv or .md)")
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="csv or markdown (default: by --out suffix)")
    ] = None,
    protocol: Protocol = "strict",
    judge: Judge = None,
    reference: Annotated[
        bool, typer.Option(help="add published results (self-reported, with sources)")
    ] = False,
    reference_file: Annotated[
        Path | None,
        typer.Option(help="reference table (default: the ELLA paper's Table 4 shipped with dpgbench)"),
    ] = None,
    mixed: Annotated[
        bool, typer.Option(help="allow different judges or question sets, flagged per row")
    ] = False,
    plots: Annotated[bool, typer.Option(help="save a category bar chart as PNG next to --out")] = True,
) -> None:
    """One row per run and judge: scores (3 protocols, 5 L1, 13 L2), coverage, backend, sampling, provenance."""
    from dpgbench.leaderboard import leaderboard, load_reference, to_csv, to_markdown
    from dpgbench.scored import load_many

    _check_protocol(protocol)
    chosen = format or (
        "markdown" if out is not None and out.suffix.lower() in (".md", ".markdown") else "csv"
    )
    if chosen not in ("csv", "markdown"):
        raise DpgBenchError(f"--format {chosen}: choose csv or markdown")
    scored = load_many(runs or [], judge)
    refs = load_reference(reference_file) if reference or reference_file else []
    columns, rows = leaderboard(scored, protocol, refs, mixed)
    text = to_markdown(columns, rows) if chosen == "markdown" else to_csv(columns, rows)
    if out is None and format is not None:
        sys.stdout.write(text)  # machine-readable: no wrapping, no colour
        return
    _print_leaderboard(columns, rows, protocol)
    if out is None:
        return
    from dpgbench.data import write_atomic

    write_atomic(out, text)
    console.print(f"{out}: {len(rows)} row(s), {len(columns)} columns ({chosen})")
    if plots and scored:
        from dpgbench import plots as figures
        from dpgbench.scored import category_order

        l1 = category_order({c[3:] for c in columns if c.startswith("l1:")})
        # Runs only: the reference rows use another judge and protocol, they are not drawn beside them.
        bars = {str(row["run"]): {c: row.get(f"l1:{c}", math.nan) for c in l1} for row in rows[: len(scored)]}
        png = out.with_suffix(".png")
        figures.save_png(figures.category_bars(bars, l1, f"L1 categories ({protocol})"), png)
        console.print(f"{png}: L1 category bars")


def _print_leaderboard(columns: list[str], rows: list[dict], protocol: str) -> None:
    """A narrow view for the terminal; the file has every column."""
    judges = {row.get("judge") for row in rows}
    table = Table(title=f"Leaderboard (L1 columns: {protocol})", title_justify="left")
    shown = ["run"] + (["judge"] if len(judges) > 1 else []) + list(PROTOCOLS)
    shown += [c for c in columns if c.startswith("l1:")] + ["prompts", "flags"]
    for c in shown:
        left = c in ("run", "judge", "flags")
        table.add_column(c.removeprefix("l1:")[:6], justify="left" if left else "right", overflow="fold")
    for row in rows:
        cells = []
        for c in shown:
            if c == "prompts":
                cells.append(
                    f"{row['prompts_scored']}/{row['prompts']}"
                    if row.get("prompts") != "" and "prompts" in row
                    else ""
                )
            else:
                v = row.get(c, "")
                cells.append(fmt(v) if isinstance(v, float) else escape(str(v)))
        table.add_row(*cells)
    console.print(table)


# ----------------------------------------------------------------------------------------- compare


def compare_cmd(
    runs: Annotated[
        list[str], typer.Argument(help="RUN_A RUN_B [RUN_C ...]: baseline first (LABEL=FOLDER ok)")
    ],
    protocol: Protocol = "strict",
    judge: Judge = None,
    resamples: Annotated[int, typer.Option(help="paired bootstrap resamples over prompts")] = 2000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    top: Annotated[int, typer.Option(help="how many prompts/questions that changed most to list")] = 10,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the deltas as CSV (plots beside it)")
    ] = None,
    questions: Annotated[
        str | None, typer.Option(help="the question file, if it moved since scoring")
    ] = None,
    plots: Annotated[bool, typer.Option(help="save PNG plots next to --out")] = True,
) -> None:
    """Checkpoints on the prompts all scored: per-category deltas, paired bootstrap 95% CIs, verdicts."""
    from dpgbench.compare import (
        COMPARISON_COLUMNS,
        change_rows,
        common_prompts,
        compare,
        comparison_rows,
        curves,
    )
    from dpgbench.scored import check_same_setup, load_detail, load_many

    _check_protocol(protocol)
    if len(runs) < 2:
        raise DpgBenchError("compare needs at least two runs: dpgbench compare RUN_A RUN_B")
    scored = load_many(runs, judge)
    if len(scored) != len(runs):
        raise DpgBenchError("a run was scored by several judges; choose one with --judge NAME")
    check_same_setup(scored, "compare")
    details = [load_detail(r, questions) for r in scored]
    # With several checkpoints every delta uses the prompts all of them scored, like the curves.
    items = common_prompts(details, protocol) if len(details) > 2 else None
    comparisons = []
    with progress_bar("bootstrap", len(details) - 1, "comparisons") as advance:
        for other in details[1:]:
            comparisons.append(compare(details[0], other, protocol, resamples, seed, items))
            advance(1)
    for c in comparisons:
        _print_comparison(c, top if len(details) == 2 else 0)
    curve = curves(details, protocol) if len(details) > 2 else None
    if curve is not None:
        _print_curve(curve)
    if out is None:
        return
    from dpgbench.runs import write_csv

    write_csv(out, comparison_rows(comparisons), COMPARISON_COLUMNS)
    console.print(f"{out}: {len(comparisons)} comparison(s) with bootstrap intervals")
    changes = out.with_name(f"{out.stem}.prompts.csv")
    write_csv(
        changes, change_rows(comparisons, "prompts"), ["a", "b", "item_id", "score_a", "score_b", "delta"]
    )
    columns = ["a", "b", "item_id", "proposition_id", "category", "question", "score_a", "score_b", "delta"]
    write_csv(out.with_name(f"{out.stem}.questions.csv"), change_rows(comparisons, "questions"), columns)
    console.print(f"{changes} and {out.stem}.questions.csv: every prompt and question, most regressed first")
    if curve is not None:
        table = out.with_name(f"{out.stem}.curves.csv")
        rows = [
            {"level": level, "category": category, **dict(zip(curve.labels, values))}
            for (level, category), values in curve.scores.items()
        ]
        write_csv(table, rows, ["level", "category", *curve.labels])
        console.print(f"{table}: score per category and checkpoint")
    if plots:
        from dpgbench import plots as figures

        figure = figures.curve_plot(curve) if curve else figures.delta_bars(comparisons[0])
        png = out.with_suffix(".png")
        figures.save_png(figure, png)
        console.print(f"{png}: {'curves per L1 category' if curve else 'deltas with 95% intervals'}")
        if curve is not None:
            png = out.with_name(f"{out.stem}.l2.png")
            figures.save_png(figures.curve_plot(curve, "l2"), png)
            console.print(f"{png}: curves per L2 category")


def _print_comparison(c: object, top: int) -> None:
    from dpgbench.compare import Comparison

    assert isinstance(c, Comparison)
    dropped = ", ".join(f"{label}: {n}" for label, n in c.dropped.items() if n)
    console.print(
        f"[bold]{escape(c.b)}[/] vs [bold]{escape(c.a)}[/] ({c.protocol}): {c.prompts} prompts in common"
        + (f" (not in both, left out: {escape(dropped)})" if dropped else "")
        + f"; {c.resamples} paired resamples, seed {c.seed}",
        highlight=False,
    )
    table = Table()
    for name in ("category", escape(c.a), escape(c.b), "delta", "95% CI", "p", "verdict"):
        table.add_column(name, justify="left" if name in ("category", "verdict") else "right")
    for d in c.deltas:
        colour = {"improved": "green", "regressed": "red"}.get(d.verdict, "")
        name = "OVERALL" if d.level == "overall" else ("  " + d.category if d.level == "l2" else d.category)
        verdict = f"[{colour}]{d.verdict}[/]" if colour else d.verdict
        table.add_row(
            name,
            fmt(d.a),
            fmt(d.b),
            f"{d.delta:+.2f}",
            f"[{fmt(d.low)}, {fmt(d.high)}]",
            _p(d.p_value),
            verdict,
        )
    console.print(table)
    if top <= 0:
        return
    for title, items in (
        ("regressed most", c.prompt_changes[:top]),
        ("improved most", c.prompt_changes[::-1][:top]),
    ):
        items = [p for p in items if (p.delta < 0 if title.startswith("regressed") else p.delta > 0)]
        if items:
            console.print(f"prompts that {title}:")
            for p in items:
                console.print(escape(f"  {p.delta:+7.2f}  {p.item_id}: {p.text[:90]}"), highlight=False)
    for title, qs in (
        ("regressed most", c.question_changes[:top]),
        ("improved most", c.question_changes[::-1][:top]),
    ):
        qs = [q for q in qs if (q.delta < 0 if title.startswith("regressed") else q.delta > 0)]
        if qs:
            console.print(f"questions that {title} (share of images answered yes after dependencies):")
            for q in qs:
                console.print(
                    escape(f"  {q.delta:+7.2f}  {q.item_id} #{q.proposition_id} [{q.category}] {q.question}"),
                    highlight=False,
                )


def _p(value: float) -> str:
    return "-" if math.isnan(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _print_curve(curve: object) -> None:
    from dpgbench.compare import Curve

    assert isinstance(curve, Curve)
    table = Table(title=f"Scores per checkpoint ({curve.protocol}, {curve.prompts} common prompts)")
    table.add_column("category")
    for label in curve.labels:
        table.add_column(escape(label), justify="right")
    for (level, category), values in curve.scores.items():
        if level != "l2":
            table.add_row("OVERALL" if level == "overall" else category, *[fmt(v) for v in values])
    console.print(table)


# --------------------------------------------------------------------------------------- correlate


def correlate_cmd(
    scores: Annotated[
        list[str], typer.Option("--scores", help="NAME=prompt_scores.csv (or NAME=RUN), repeatable")
    ],
    human: Annotated[Path, typer.Option("--human", help="CSV with columns model,item_id,rating")],
    protocol: Protocol = "strict",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the agreement table as CSV")] = None,
    plots: Annotated[bool, typer.Option(help="save a score-vs-rating scatter as PNG next to --out")] = True,
) -> None:
    """Agreement of per-prompt scores with human ratings: Spearman and Kendall tau-b, p-values, n."""
    from dpgbench.correlate import (
        AGREEMENT_COLUMNS,
        correlations,
        pair_up,
        parse_named,
        read_human,
        read_prompt_scores,
    )

    _check_protocol(protocol)
    named = parse_named(scores)
    ratings = read_human(human)
    tables = {name: read_prompt_scores(path, protocol) for name, path in named.items()}
    pairs = pair_up(tables, ratings)
    unmatched = sorted({m for m, _ in ratings} - set(named))
    if unmatched:
        warn_notes(unmatched, f"model name(s) in {human} have no --scores table")
    for name, rows in pairs.items():
        if len(rows) < len(tables[name]):
            err_console.print(
                f"[yellow]{escape(name)}[/]: {len(tables[name]) - len(rows)} scored prompt(s) have no rating"
            )
    results = correlations(pairs)
    table = Table(title=f"Agreement with human ratings ({protocol})")
    for c in AGREEMENT_COLUMNS:
        table.add_column(c, justify="left" if c == "scope" else "right")
    for a in results:
        table.add_row(
            escape(a.scope), str(a.n), _r(a.spearman), _p(a.spearman_p), _r(a.kendall_tau_b), _p(a.kendall_p)
        )
    console.print(table)
    if out is not None:
        from dataclasses import asdict

        from dpgbench.runs import write_csv

        write_csv(out, [asdict(a) for a in results], AGREEMENT_COLUMNS)
        console.print(f"{out}: {len(results)} row(s)")
        if plots:
            from dpgbench import plots as figures

            pooled = results[0]
            title = f"{protocol}: Spearman {_r(pooled.spearman)}, Kendall tau-b {_r(pooled.kendall_tau_b)}, n {pooled.n}"
            png = out.with_suffix(".png")
            figures.save_png(figures.agreement_scatter(pairs, title), png)
            console.print(f"{png}: prompt scores against human ratings")


def _r(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


# ------------------------------------------------------------------------------------------ report


def report_cmd(
    run: Annotated[str, typer.Argument(help="run folder (or LABEL=FOLDER)")],
    run_b: Annotated[str | None, typer.Argument(help="a second run, shown side by side")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file (default RUN/report.html)")
    ] = None,
    protocol: Protocol = "strict",
    judge: Judge = None,
    thumb_size: Annotated[int, typer.Option(help="thumbnail size in pixels (longest side)")] = 128,
    page_size: Annotated[int, typer.Option(help="prompts per page")] = 25,
    questions: Annotated[
        str | None, typer.Option(help="the question file, if it moved since scoring")
    ] = None,
    plots: Annotated[bool, typer.Option(help="category bars and score distributions (matplotlib)")] = True,
    thumb_cache: Annotated[
        bool, typer.Option(help="keep thumbnails in RUN/thumbnails/ for the next report of the run")
    ] = True,
) -> None:
    """A self-contained HTML page: summary, plots, and per prompt its images, question tree and answers."""
    from dpgbench.html_report import ReportConfig, build_report
    from dpgbench.scored import load_detail, load_scored

    _check_protocol(protocol)
    if not 16 <= thumb_size <= 1024:
        raise DpgBenchError(f"--thumb-size {thumb_size}: choose between 16 and 1024 pixels")
    if page_size < 1:
        raise DpgBenchError(f"--page-size {page_size}: show at least 1 prompt per page")
    if out is not None and out.suffix.lower() not in (".html", ".htm"):
        raise DpgBenchError(f"--out {out}: name the report file with .html")  # before any work is done
    scored = []
    for spec in [run] + ([run_b] if run_b else []):
        found = load_scored(spec, judge)
        if len(found) > 1:
            names = ", ".join(r.judge for r in found)
            raise DpgBenchError(f"{spec}: scored by several judges ({names}); choose one with --judge NAME")
        scored.append(found[0])
    if len(scored) == 2 and scored[0].label == scored[1].label:
        scored[1].label += " (B)"
    details = [load_detail(r, questions) for r in scored]
    if out is None:
        root = scored[0].run_root or scored[0].eval_dir
        out = root / ("report.html" if len(scored) == 1 else f"report_vs_{Path(scored[1].label).name}.html")
    config = ReportConfig(
        protocol=protocol, thumb_size=thumb_size, page_size=page_size, plots=plots, cache=thumb_cache
    )
    total = sum(1 for d in details for p in d.prompts for image in p.images if image.problem is None)
    with progress_bar("thumbnails", total, "images") as advance:
        summary = build_report(details, out, config, on_image=advance)
    for note in summary.notes:
        err_console.print(f"[yellow]warning[/]: {escape(note)}")
    console.print(
        f"{summary.path}: {summary.prompts} prompts, {summary.images} images, {summary.missing_images} missing, "
        f"{summary.invalidated[protocol]} answer(s) invalidated by a failed parent ({protocol}); "
        f"{summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s"
        + (f" ({summary.thumbnails_reused} thumbnails reused)" if summary.thumbnails_reused else "")
    )
    for path in summary.plots:
        console.print(f"{path}: plot")


def register(app: typer.Typer) -> None:
    app.command("leaderboard")(leaderboard_cmd)
    app.command("compare")(compare_cmd)
    app.command("correlate")(correlate_cmd)
    app.command("report")(report_cmd)
