"""Judge agreement: Cohen's kappa against a hand computation, and `dpgbench agree` on a demo run."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from cli_runner import invoke

from dpgbench.agreement import cohen_kappa


def test_kappa_by_hand():
    # 10 pairs: both yes 4, both no 3, A yes/B no 2, A no/B yes 1.
    pairs = [(True, True)] * 4 + [(False, False)] * 3 + [(True, False)] * 2 + [(False, True)]
    got = cohen_kappa(pairs)
    # p_o = 0.7; A yes 0.6, B yes 0.5; p_e = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7-0.5)/(1-0.5) = 0.4
    assert (got.n, got.agree, got.yes_a, got.yes_b) == (10, 0.7, 0.6, 0.5)
    assert got.kappa == pytest.approx(0.4)
    assert math.isnan(cohen_kappa([(True, True)] * 3).kappa)  # p_e = 1: undefined, not 1 or 0
    assert cohen_kappa([]).n == 0


def paired_answers(a: Path, b: Path) -> list[tuple[str, str]]:
    def load(folder: Path) -> dict[tuple[str, str], str]:
        with open(folder / "answers.jsonl") as f:
            return {(r["image"], r["question"]): r["answer"] for r in map(json.loads, f)}

    answers_a, answers_b = load(a), load(b)
    assert answers_a.keys() == answers_b.keys()
    return [(answers_a[k], answers_b[k]) for k in answers_a]


def strict_overall(folder: Path) -> float:
    with open(folder / "scores.csv") as f:
        rows = csv.DictReader(f)
        return next(float(r["score"]) for r in rows if (r["protocol"], r["level"]) == ("strict", "overall"))


run = invoke


def test_agree_command(tmp_path: Path, capsys):
    demo = tmp_path / "demo"
    assert run(["demo", "--out", str(demo)], capsys)[0] == 0
    assert (
        run(["score", str(demo), "--judge", "dummy", "--judge-arg", "salt=x", "--label", "salted"], capsys)[0]
        == 0
    )
    code, out, err = run(
        ["agree", str(demo), "--judges", "dummy,dummy", "--out", str(tmp_path / "self.csv")], capsys
    )
    assert code == 0, err
    assert "different judge" not in out  # one folder against itself
    with open(tmp_path / "self.csv") as f:
        rows = {(r["kind"], r["category"]): r for r in csv.DictReader(f)}
    assert rows[("agreement", "all")]["n"] == "588" and float(rows[("agreement", "all")]["agreement"]) == 1.0
    assert float(rows[("delta strict overall", "all")]["delta"]) == 0.0
    code, out, err = run(
        ["agree", str(demo), "--judges", "dummy,salted", "--out", str(tmp_path / "salted.csv")], capsys
    )
    assert code == 0 and "588 question-image pairs" in out and "salted is a different judge" in out
    # Golden numbers of the demo run (dummy answers are a hash of pixels and question, so they are fixed).
    # The 2x2 table, counted here from the raw logs: both yes 337, dummy-only yes 111, salted-only 104,
    # both no 36. p_o = 373/588; p_e = (448*441 + 140*147)/588^2; kappa = (p_o - p_e)/(1 - p_e) = 2/217.
    table = Counter(
        (verdict_a == "yes", verdict_b == "yes")
        for verdict_a, verdict_b in paired_answers(demo / "eval" / "dummy", demo / "eval" / "salted")
    )
    assert table == {(True, True): 337, (True, False): 111, (False, True): 104, (False, False): 36}
    with open(tmp_path / "salted.csv") as f:
        rows = {(r["kind"], r["category"]): r for r in csv.DictReader(f)}
    overall = rows[("agreement", "all")]
    assert (overall["n"], float(overall["agreement"])) == ("588", pytest.approx(373 / 588))
    assert float(overall["kappa"]) == pytest.approx(2 / 217)
    texture = rows[("agreement", "attribute - texture")]  # 24 pairs, 20 agree: kappa 47/95
    assert (texture["n"], float(texture["kappa"])) == ("24", pytest.approx(47 / 95))
    assert sum(int(r["n"]) for (kind, c), r in rows.items() if kind == "agreement" and c != "all") == 588
    # score deltas are B - A of the two judges' own tables
    strict = rows[("delta strict overall", "all")]
    assert float(strict["delta"]) == pytest.approx(
        strict_overall(demo / "eval" / "salted") - strict_overall(demo / "eval" / "dummy")
    )
    code, _, err = run(["agree", str(demo), "--judges", "dummy,hf-vqa"], capsys)
    assert code == 1 and "not scored by 'hf-vqa'" in err
    code, _, err = run(["agree", str(demo), "--judges", "dummy"], capsys)
    assert code == 1 and "exactly two judge names" in err
