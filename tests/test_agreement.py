"""Judge agreement: Cohen's kappa against a hand computation, and `dpgbench agree` on a demo run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from dpgbench.agreement import cohen_kappa
from dpgbench.cli import main


def test_kappa_by_hand():
    # 10 pairs: both yes 4, both no 3, A yes/B no 2, A no/B yes 1.
    pairs = [(True, True)] * 4 + [(False, False)] * 3 + [(True, False)] * 2 + [(False, True)]
    got = cohen_kappa(pairs)
    # p_o = 0.7; A yes 0.6, B yes 0.5; p_e = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7-0.5)/(1-0.5) = 0.4
    assert (got.n, got.agree, got.yes_a, got.yes_b) == (10, 0.7, 0.6, 0.5)
    assert got.kappa == pytest.approx(0.4)
    assert math.isnan(cohen_kappa([(True, True)] * 3).kappa)  # p_e = 1: undefined, not 1 or 0
    assert cohen_kappa([]).n == 0


def run(args, capsys):
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0), *capsys.readouterr()
    return 0, *capsys.readouterr()


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
    with open(tmp_path / "self.csv") as f:
        rows = {(r["kind"], r["category"]): r for r in csv.DictReader(f)}
    assert rows[("agreement", "all")]["n"] == "588" and float(rows[("agreement", "all")]["agreement"]) == 1.0
    assert float(rows[("delta strict overall", "all")]["delta"]) == 0.0
    code, out, err = run(["agree", str(demo), "--judges", "dummy,salted"], capsys)
    assert code == 0 and "588 question-image pairs" in out and "salted is a different judge" in out
    code, _, err = run(["agree", str(demo), "--judges", "dummy,hf-vqa"], capsys)
    assert code == 1 and "not scored by 'hf-vqa'" in err
    code, _, err = run(["agree", str(demo), "--judges", "dummy"], capsys)
    assert code == 1 and "exactly two judge names" in err
