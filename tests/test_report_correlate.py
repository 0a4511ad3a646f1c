"""Agreement with human ratings: Spearman and Kendall tau-b equal scipy's and a hand-written tau-b, golden
numbers for a fixed rating file, rater averaging, and one-line errors for bad input."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import pytest
from scipy import stats
from typer.testing import CliRunner

from dpgbench.cli import app
from dpgbench.correlate import correlations, pair_up, read_human, read_prompt_scores
from dpgbench.errors import DpgBenchError


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b from its definition: (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y))."""
    concordant = discordant = ties_x = ties_y = 0
    for (x1, y1), (x2, y2) in itertools.combinations(zip(x, y), 2):
        dx, dy = x1 - x2, y1 - y2
        if dx == 0:
            ties_x += 1
        if dy == 0:
            ties_y += 1
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    n0 = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def write_ratings(path: Path, report_runs: dict[str, Path]) -> None:
    """Three raters per prompt of runs a and b; ratings 1-5 that roughly follow the strict score."""
    rows = [("model", "item_id", "rating", "rater")]
    for model in ("a", "b"):
        scores = read_prompt_scores(
            str(report_runs[model] / "eval" / "dummy" / "prompt_scores.csv"), "strict"
        )
        for k, (item_id, value) in enumerate(sorted(scores.items())):
            for rater in range(3):
                rating = min(5, max(1, round(value / 20) + (k + rater) % 3 - 1))
                rows.append((model, item_id, str(rating), f"r{rater}"))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture()
def ratings(report_runs, tmp_path) -> Path:
    path = tmp_path / "human.csv"
    write_ratings(path, report_runs)
    return path


def test_correlations_equal_scipy_and_a_hand_written_tau_b(report_runs, ratings):
    human = read_human(ratings)
    assert len(human) == 24  # 2 models x 12 prompts, 3 raters each averaged
    first = next(iter(sorted(human)))
    with open(ratings) as f:
        raw = [float(r["rating"]) for r in csv.DictReader(f) if (r["model"], r["item_id"]) == first]
    assert human[first] == sum(raw) / 3
    scores = {
        m: read_prompt_scores(str(report_runs[m] / "eval" / "dummy" / "prompt_scores.csv"), "strict")
        for m in "ab"
    }
    pairs = pair_up(scores, human)
    results = correlations(pairs)
    assert [(r.scope, r.n) for r in results] == [("all", 24), ("a", 12), ("b", 12)]
    for result in results:
        rows = (
            [row for rows in pairs.values() for row in rows] if result.scope == "all" else pairs[result.scope]
        )
        x, y = [s for _, s, _ in rows], [r for _, _, r in rows]
        rho, tau = stats.spearmanr(x, y), stats.kendalltau(x, y)
        assert (result.spearman, result.spearman_p) == (rho.statistic, rho.pvalue)
        assert (result.kendall_tau_b, result.kendall_p) == (tau.statistic, tau.pvalue)
        assert result.kendall_tau_b == pytest.approx(tau_b(x, y), abs=1e-12)
    pooled = results[0]
    assert (pooled.spearman, pooled.spearman_p, pooled.kendall_tau_b, pooled.kendall_p) == pytest.approx(
        (0.902081530629313, 1.7279263981072757e-09, 0.7899921463159465, 2.1555604882401173e-06), rel=1e-9
    )


def test_correlate_command(report_runs, ratings, tmp_path):
    out = tmp_path / "agreement.csv"
    args = ["correlate", "--human", str(ratings), "--out", str(out)]
    args += ["--scores", f"a={report_runs['a']}", "--scores", f"b={report_runs['b'] / 'eval' / 'dummy'}"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "Agreement with human ratings (strict)" in result.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["scope"], r["n"]) for r in rows] == [("all", "24"), ("a", "12"), ("b", "12")]
    assert float(rows[0]["kendall_tau_b"]) == pytest.approx(0.7899921463159465, abs=1e-12)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_agreement_scatter_draws_every_pair():
    from dpgbench import plots

    pairs = {"a": [("1", 50.0, 3.0), ("2", 75.0, 4.5)], "b": [("1", 20.0, 1.0)]}
    figure = plots.agreement_scatter(pairs, "t")
    offsets = [collection.get_offsets().tolist() for collection in figure.axes[0].collections]
    assert offsets == [[[50.0, 3.0], [75.0, 4.5]], [[20.0, 1.0]]]


def test_too_few_pairs_or_a_constant_side_give_nan():
    pairs = {"m": [("1", 50.0, 3.0), ("2", 60.0, 3.0), ("3", 70.0, 3.0)], "n": [("1", 10.0, 1.0)]}
    pooled, m, n = correlations(pairs)
    assert pooled.n == 4 and not math.isnan(pooled.spearman)
    assert m.n == 3 and math.isnan(m.spearman) and math.isnan(m.kendall_p)  # every rating is 3
    assert n.n == 1 and math.isnan(n.kendall_tau_b)


def test_bad_input_gets_one_line_errors(report_runs, tmp_path):
    scores = f"a={report_runs['a']}"
    bad = tmp_path / "bad.csv"
    bad.write_text("model,item,rating\na,demo_fox,3\n")
    result = invoke(["correlate", "--scores", scores, "--human", str(bad)])
    assert result.exit_code == 1 and str(result.exception) == (
        f"{bad}:1: missing column(s) item_id; expected model,item_id,rating"
    )
    bad.write_text("model,item_id,rating\na,demo_fox,3\na,demo_cafe,good\n")
    result = invoke(["correlate", "--scores", scores, "--human", str(bad)])
    assert result.exit_code == 1 and str(result.exception) == f"{bad}:3: rating 'good' is not a number"
    bad.write_text("model,item_id,rating\nsdxl,demo_fox,3\n")
    result = invoke(["correlate", "--scores", scores, "--human", str(bad)])
    assert result.exit_code == 1 and "human ratings name models sdxl; --scores names a" in str(
        result.exception
    )
    result = invoke(["correlate", "--scores", str(report_runs["a"]), "--human", str(bad)])
    assert result.exit_code == 1 and "write NAME=PATH" in str(result.exception)
    with pytest.raises(DpgBenchError, match="no official rows|choose one of"):
        read_prompt_scores(str(report_runs["a"]), "nope")
