"""Checkpoint comparison: golden paired-bootstrap numbers (fixed seed), checked against a plain-Python
bootstrap; per-question detail that adds up to scores.csv; `dpgbench compare` end to end and its refusals."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpgbench.cli import app
from dpgbench.compare import compare, curves, paired_bootstrap, resample_weights
from dpgbench.errors import DpgBenchError
from dpgbench.scored import load_detail, load_scored, read_scores_csv


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), written out."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def naive_bootstrap(a_t, a_n, b_t, b_n, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """Resample prompts with the same draws, one resample at a time, in plain Python."""
    n = len(a_t)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n)).tolist()
    deltas = []
    for picks in draws:
        a = sum(a_t[i] for i in picks) / sum(a_n[i] for i in picks) * 100
        b = sum(b_t[i] for i in picks) / sum(b_n[i] for i in picks) * 100
        deltas.append(b - a)
    p = min(
        1.0, 2 * min(sum(d <= 0 for d in deltas) / len(deltas), sum(d >= 0 for d in deltas) / len(deltas))
    )
    return percentile(deltas, 2.5), percentile(deltas, 97.5), p


A_TOTALS = [[3, 1], [2, 0], [4, 2], [1, 1], [0, 2], [3, 3]]
COUNTS = [[4, 2], [4, 2], [4, 2], [4, 2], [4, 2], [4, 4]]
B_TOTALS = [[4, 2], [2, 1], [4, 2], [3, 1], [1, 2], [4, 3]]


def test_resample_weights_golden():
    weights = resample_weights(5, 3, seed=0)
    assert weights.tolist() == [[0, 2, 1, 1, 1], [4, 0, 0, 0, 1], [0, 0, 1, 2, 2]]
    assert weights.sum(axis=1).tolist() == [5, 5, 5]  # each resample has n prompts


def test_paired_bootstrap_golden_and_equal_to_a_plain_loop():
    at, n, bt = (np.array(x, dtype=float) for x in (A_TOTALS, COUNTS, B_TOTALS))
    a, b, low, high, p = paired_bootstrap(at, n, bt, n, resample_weights(6, 1000, seed=7))
    # golden: the pooled ratios themselves, then the seeded interval and p-value
    assert a.tolist() == [13 / 24 * 100, 9 / 14 * 100]
    assert b.tolist() == [75.0, 11 / 14 * 100]
    assert low.tolist() == pytest.approx([8.333333333333314, 0.0], abs=1e-12)
    assert high.tolist() == pytest.approx([33.33333333333333, 33.33333333333334], abs=1e-12)
    assert p.tolist() == [0.002, 0.166]
    for k in range(2):
        column = [[row[k] for row in table] for table in (A_TOTALS, COUNTS, B_TOTALS)]
        expected = naive_bootstrap(column[0], column[1], column[2], column[1], 1000, 7)
        assert (low[k], high[k], p[k]) == pytest.approx(expected, abs=1e-9)


def test_a_category_in_one_prompt_gets_no_interval():
    at = np.array([[1.0], [0.0], [0.0]])
    counts = np.array([[2.0], [0.0], [0.0]])
    _, _, low, high, p = paired_bootstrap(at, counts, at, counts, resample_weights(3, 200, seed=0))
    assert math.isnan(low[0]) and math.isnan(high[0]) and math.isnan(p[0])


@pytest.fixture(scope="module")
def details(report_runs: dict[str, Path]) -> dict[str, object]:
    return {name: load_detail(load_scored(str(report_runs[name]))[0]) for name in ("a", "b", "c", "half")}


def prompt_scores(run: Path, protocol: str) -> dict[str, float]:
    with open(run / "eval" / "dummy" / "prompt_scores.csv") as f:
        return {r["item_id"]: float(r["score"]) for r in csv.DictReader(f) if r["protocol"] == protocol}


def test_detail_adds_up_to_the_score_tables(report_runs, details):
    detail = details["a"]
    table = read_scores_csv(report_runs["a"] / "eval" / "dummy" / "scores.csv")
    for protocol in ("strict", "dsg", "official"):
        assert detail.results[protocol].overall == table[protocol].overall
        expected = prompt_scores(report_runs["a"], protocol)
        got = {d.prompt.item_id: d.scores[protocol] for d in detail.prompts if d.scores[protocol] is not None}
        assert got == expected
        for d in detail.prompts:
            if d.scores[protocol] is None:
                continue
            # a prompt score is the mean over images of the mean final question score
            per_image = [[v for v in image if v is not None] for image in d.finals[protocol]]
            recomputed = sum(sum(v) / len(v) for v in per_image) / len(per_image) * 100
            assert recomputed == pytest.approx(d.scores[protocol], abs=1e-9)
    lighthouse = detail.by_id()["demo_lighthouse"]
    # upstream drops this prompt (its first CSV row is skipped, question 6 loses parent 1)
    assert lighthouse.scores["official"] is None and "KeyError upstream" in lighthouse.excluded["official"]
    assert all(v is None for image in lighthouse.finals["official"] for v in image)
    # strict: question 10 depends on 1 and 2; image 0 answered yes to 1 but no to 2, so 10 is zeroed
    q10 = [q.proposition_id for q in lighthouse.prompt.questions].index(10)
    assert lighthouse.answers[0]["Is the lighthouse on the cliff?"] == "yes"
    assert lighthouse.finals["strict"][0][q10] == 0.0


def test_compare_two_runs_golden(report_runs, details):
    c = compare(details["a"], details["b"], "strict", resamples=2000, seed=0)
    table_a = read_scores_csv(report_runs["a"] / "eval" / "dummy" / "scores.csv")["strict"]
    table_b = read_scores_csv(report_runs["b"] / "eval" / "dummy" / "scores.csv")["strict"]
    assert c.prompts == 12 and c.dropped == {"a": 0, "b": 0}
    overall = c.deltas[0]
    assert (overall.level, overall.category) == ("overall", "all")
    assert overall.a == pytest.approx(table_a.overall, abs=1e-9)
    assert overall.b == pytest.approx(table_b.overall, abs=1e-9)
    # golden interval for seed 0, 2000 resamples
    assert (overall.delta, overall.low, overall.high, overall.p_value) == pytest.approx(
        (-3.869567932067909, -12.557139041514032, 5.0383860930735995, 0.403), abs=1e-9
    )
    assert overall.verdict == "no significant change"
    # the same interval from a plain loop over the prompt scores
    sa, sb = prompt_scores(report_runs["a"], "strict"), prompt_scores(report_runs["b"], "strict")
    ids = [d.prompt.item_id for d in details["a"].prompts]
    fa, fb = [sa[i] / 100 for i in ids], [sb[i] / 100 for i in ids]
    expected = naive_bootstrap(fa, [1] * 12, fb, [1] * 12, 2000, 0)
    assert (overall.low, overall.high, overall.p_value) == pytest.approx(expected, abs=1e-9)
    by = {(d.level, d.category): d for d in c.deltas}
    for level in ("l1", "l2"):
        for category, score in getattr(table_a, level).items():
            assert by[(level, category)].a == pytest.approx(score.score, abs=1e-9)
            assert by[(level, category)].b == pytest.approx(getattr(table_b, level)[category].score, abs=1e-9)
            assert by[(level, category)].n_pairs == score.n
    assert by[("l1", "other")].delta == pytest.approx(-20.0, abs=1e-9)
    assert math.isnan(by[("l2", "attribute - size")].low)  # in one prompt only: no interval
    assert by[("l2", "attribute - size")].verdict == "too few prompts"
    # changes: sorted from most regressed, and equal to B - A of prompt_scores.csv
    deltas = [p.delta for p in c.prompt_changes]
    assert deltas == sorted(deltas)
    assert {p.item_id: p.delta for p in c.prompt_changes} == pytest.approx({i: sb[i] - sa[i] for i in ids})
    assert (c.prompt_changes[0].item_id, c.prompt_changes[-1].item_id) == ("demo_castle", "demo_market")
    worst = c.question_changes[0]
    assert (worst.item_id, worst.proposition_id, worst.a, worst.b) == ("demo_castle", 5, 100.0, 0.0)


def test_a_run_against_itself_changes_nothing(details):
    c = compare(details["a"], details["a"], "dsg", resamples=500, seed=3)
    for d in c.deltas:
        assert d.delta == 0.0
        if not math.isnan(d.low):
            assert (d.low, d.high, d.verdict) == (0.0, 0.0, "no significant change")


def test_only_prompts_both_scored_are_compared(details):
    c = compare(details["a"], details["half"], "strict", resamples=200, seed=0)
    assert c.prompts == 6 and c.dropped == {"a": 6, "half": 0}
    first_six = [d.prompt.item_id for d in details["a"].prompts[:6]]
    assert sorted(p.item_id for p in c.prompt_changes) == sorted(first_six)


def test_curves_follow_the_checkpoints(details):
    curve = curves([details["a"], details["b"], details["c"]], "strict")
    assert curve.labels == ["a", "b", "c"] and curve.prompts == 12
    assert curve.scores[("overall", "all")] == pytest.approx(
        [details[n].results["strict"].overall for n in ("a", "b", "c")], abs=1e-9
    )
    assert curve.scores[("l1", "entity")] == pytest.approx(
        [details[n].results["strict"].l1["entity"].score for n in ("a", "b", "c")], abs=1e-9
    )
    from dpgbench import plots

    lines = plots.curve_plot(curve, "l2").axes[0].get_lines()
    assert len(lines) == 13 + 1 and lines[-1].get_label() == "overall"
    assert [line.get_linestyle() for line in lines[:13]] == ["-"] * 10 + ["--"] * 3  # 10 colours, then dashed
    assert list(lines[0].get_ydata()) == curve.scores[("l2", "global -")]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def test_compare_command_writes_csv_and_plot(report_runs, tmp_path):
    out = tmp_path / "cmp.csv"
    result = invoke(
        ["compare", str(report_runs["a"]), str(report_runs["b"]), "--out", str(out), "--top", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "b vs a (strict): 12 prompts in common" in result.output
    assert "demo_castle #5 [entity - whole] Is there a hot air balloon?" in result.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + 5 + 13
    assert rows[0]["category"] == "all" and float(rows[0]["ci_low"]) == pytest.approx(-12.557139041514032)
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "cmp.prompts.csv") as f:
        prompts = list(csv.DictReader(f))
    assert len(prompts) == 12 and prompts[0]["item_id"] == "demo_castle"
    assert float(prompts[0]["delta"]) == pytest.approx(-31.25, abs=1e-9)
    with open(tmp_path / "cmp.questions.csv") as f:
        questions = list(csv.DictReader(f))
    assert len(questions) == 147  # every question of the 12 prompts: strict counts them all


def test_compare_three_checkpoints_draws_curves(report_runs, tmp_path):
    out = tmp_path / "many.csv"
    args = ["compare", f"step1={report_runs['a']}", f"step2={report_runs['b']}", f"step3={report_runs['c']}"]
    result = invoke([*args, "--out", str(out), "--resamples", "300"])
    assert result.exit_code == 0, result.output
    assert "Scores per checkpoint" in result.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["a"], r["b"]) for r in rows if r["level"] == "overall"] == [
        ("step1", "step2"),
        ("step1", "step3"),
    ]
    assert out.with_suffix(".png").exists() and (tmp_path / "many.l2.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "many.curves.csv") as f:
        curve = {(r["level"], r["category"]): r for r in csv.DictReader(f)}
    assert list(curve[("overall", "all")])[2:] == ["step1", "step2", "step3"]
    table = read_scores_csv(report_runs["c"] / "eval" / "dummy" / "scores.csv")["strict"]
    assert float(curve[("l1", "relation")]["step3"]) == pytest.approx(table.l1["relation"].score, abs=1e-9)


def test_compare_refuses_mixed_judges_and_odd_input(report_runs):
    result = invoke(["compare", str(report_runs["a"]), str(report_runs["salted"])])
    assert result.exit_code == 1
    message = str(result.exception)
    assert "\n" not in message and "judged by 'dummy salt=other'" in message and "--judge NAME" in message
    result = invoke(["compare", str(report_runs["a"])])
    assert result.exit_code == 1 and "at least two runs" in str(result.exception)
    result = invoke(["compare", str(report_runs["a"]), str(report_runs["unscored"])])
    assert result.exit_code == 1 and "no judge has scored this run yet" in str(result.exception)
    result = invoke(["compare", str(report_runs["a"]), str(report_runs["b"]), "--resamples", "10"])
    assert result.exit_code == 1 and "--resamples 10" in str(result.exception)


def test_a_stale_score_table_is_named(report_runs, tmp_path):
    run = shutil.copytree(report_runs["a"], tmp_path / "a")
    scores = run / "eval" / "dummy" / "scores.csv"
    lines = scores.read_text().splitlines()
    lines[1] = "strict,overall,all,50.0,12"
    scores.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DpgBenchError, match=r"strict score is 50.0000 over 12 prompts, .* rerun `dpgbench score"
    ):
        load_detail(load_scored(str(run))[0])


def test_an_image_replaced_on_disk_is_read_even_when_the_overall_score_stays(report_runs, tmp_path):
    """images.jsonl still names the old sha256; re-scoring keyed the answers by the new bytes. Here the
    overall strict score happens to stay the same, so only the category sums show the old answers are stale."""
    import hashlib

    from PIL import Image

    run = shutil.copytree(report_runs["a"], tmp_path / "a", ignore=shutil.ignore_patterns("thumbnails"))
    before = read_scores_csv(run / "eval" / "dummy" / "scores.csv")["strict"]
    fox = run / "images" / "demo_fox_0.png"
    with Image.open(fox) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(fox)
    assert invoke(["score", str(run), "--judge", "dummy"]).exit_code == 0
    after = read_scores_csv(run / "eval" / "dummy" / "scores.csv")["strict"]
    assert after.overall == before.overall and after.l1["attribute"].score != before.l1["attribute"].score
    detail = load_detail(load_scored(str(run))[0])
    assert detail.by_id()["demo_fox"].images[0].sha256 == hashlib.sha256(fox.read_bytes()).hexdigest()
    assert detail.results["strict"].l1["attribute"].score == after.l1["attribute"].score


def test_a_deleted_image_counts_as_missing_like_evaluate(report_runs, tmp_path):
    run = shutil.copytree(report_runs["a"], tmp_path / "a")
    (run / "images" / "demo_fox_2.png").unlink()
    assert invoke(["score", str(run), "--judge", "dummy"]).exit_code == 0
    detail = load_detail(load_scored(str(run))[0])
    fox = detail.by_id()["demo_fox"]
    assert fox.images[2].problem == "file is missing" and fox.answers[2] is None
    assert set(fox.finals["strict"][2]) == {0.0}
    assert (
        fox.scores["official"] is None and fox.excluded["official"] == "incomplete grid (an image is missing)"
    )
