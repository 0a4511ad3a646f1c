"""Golden scores, computed by hand, for the three protocols on one small graph set (see the comments)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpgbench.data import load_csv
from dpgbench.scoring import normalize_answer, official_view, score

# p1: cat/mat with a two-parent question; as the first prompt it loses row 0 (q1) in the official view.
# p2: a dog chain q1 -> q2 -> q3 where cascading matters; p3: a chain listed child first (q3, q2, q1);
# p4: a prompt that never got images.
GOLDEN_CSV = """item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language
p1,A black cat on a mat.,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?
p1,A black cat on a mat.,"cat, black",2,1,attribute,color,"attribute - color (cat, black)",Is the cat black?
p1,A black cat on a mat.,mat,3,0,entity,whole,entity - whole (mat),Is there a mat?
p1,A black cat on a mat.,"cat, mat",4,"1,3",relation,spatial,"relation - spatial (cat, mat, on)",Is the cat on the mat?
p2,A brown dog with a red collar.,dog,1,0,entity,whole,entity - whole (dog),Is there a dog?
p2,A brown dog with a red collar.,"dog, brown",2,1,attribute,color,"attribute - color (dog, brown)",Is the dog brown?
p2,A brown dog with a red collar.,"collar, red",3,2,attribute,color,"attribute - color (collar, red)",Is the brown dog's collar red?
p2,A brown dog with a red collar.,photo,4,0,global,,global - (photo),Is this a photo?
p3,A shiny red ball.,"ball, shiny",3,2,attribute,texture,"attribute - texture (ball, shiny)",Is the red ball shiny?
p3,A shiny red ball.,"ball, red",2,1,attribute,color,"attribute - color (ball, red)",Is the ball red?
p3,A shiny red ball.,ball,1,0,entity,whole,entity - whole (ball),Is there a ball?
p4,A tree.,tree,1,0,entity,whole,entity - whole (tree),Is there a tree?
"""

Y, N = "yes", "no"


def image(questions: list[str], answers: list[str]) -> dict[str, str]:
    return dict(zip(questions, answers, strict=True))


P1 = ["Is there a cat?", "Is the cat black?", "Is there a mat?", "Is the cat on the mat?"]
P2 = ["Is there a dog?", "Is the dog brown?", "Is the brown dog's collar red?", "Is this a photo?"]
P3 = ["Is the red ball shiny?", "Is the ball red?", "Is there a ball?"]

ANSWERS = {
    "p1": [
        image(P1, [Y, Y, Y, Y]),  # 1
        image(P1, [N, Y, Y, Y]),  # no cat: q2 and q4 fall -> [0,0,1,0] = 0.25
        image(P1, [N, N, N, N]),  # 0
        image(P1, [Y, Y, N, Y]),  # no mat: q4 falls -> 0.5
    ],
    "p2": [
        image(P2, [Y, N, Y, Y]),  # q3's parent q2 is no: all protocols [1,0,0,1] = 0.5
        image(P2, [N, Y, Y, Y]),  # cascade: [0,0,0,1] = 0.25; dsg (raw parent q2 yes): [0,0,1,1] = 0.5
        image(P2, [Y, Y, Y, Y]),  # 1
        image(P2, ["Yes", Y, Y, Y]),  # exact match: like image 1; strict normalises "Yes" -> 1
    ],
    "p3": [
        image(P3, [Y, Y, N]),  # rows q3,q2,q1; no ball. strict cascades through the graph: 0;
        #                        dsg keeps q3 (raw parent q2 is yes): 1/3
        image(P3, [Y, Y, Y]),  # 1
        None,  # missing image: official drops the prompt (no grid); strict and dsg score it 0
        image(P3, [N, N, N]),
    ],
}


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("golden")) / "golden.csv"
    path.write_text(GOLDEN_CSV, encoding="utf-8")
    return load_csv(path)


def test_strict_golden(golden):
    r = score(golden.prompts, ANSWERS)["strict"]
    assert r.prompts == {"p1": 43.75, "p2": 68.75, "p3": 25.0, "p4": 0.0}
    assert r.overall == pytest.approx((43.75 + 68.75 + 25.0 + 0.0) / 4) and r.n == 4
    assert r.missing_images == [("p3", 2), ("p4", 0), ("p4", 1), ("p4", 2), ("p4", 3)]
    # entity - whole pools every image: p1 cat+mat 4/8, p2 dog 3/4, p3 ball 1/4, p4 tree 0/4
    assert r.l2["entity - whole"].score == pytest.approx(40.0) and r.l2["entity - whole"].n == 20
    assert r.l1["entity"].score == pytest.approx(40.0)


def test_dsg_golden(golden):
    r = score(golden.prompts, ANSWERS)["dsg"]
    assert r.prompts["p1"] == 43.75
    assert r.prompts["p2"] == 62.5
    assert r.prompts["p3"] == pytest.approx((1 / 3 + 1 + 0 + 0) / 4 * 100)
    assert r.prompts["p4"] == 0.0
    assert r.overall == pytest.approx((43.75 + 62.5 + 100 / 3 + 0) / 4)


def test_official_golden(golden):
    r = score(golden.prompts, ANSWERS)["official"]
    # p1 loses row 0 (q1) and then raises KeyError on parent 1; p3 has no complete grid; p4 no images.
    assert r.prompts == {"p2": 50.0}
    assert r.overall == 50.0 and r.n == 1
    assert set(r.excluded) == {"p1", "p3", "p4"}
    assert "KeyError" in r.excluded["p1"] and r.excluded["p4"] == "no images"
    # categories: raw answers of p2's last image only ("Yes" is not "yes" upstream)
    assert {k: (v.score, v.n) for k, v in r.l2.items()} == {
        "attribute - color": (100.0, 2),
        "entity - whole": (0.0, 1),
        "global -": (100.0, 1),
    }
    assert {k: (v.score, v.n) for k, v in r.l1.items()} == {
        "attribute": (100.0, 2),
        "entity": (0.0, 1),
        "global": (100.0, 1),
    }


def test_official_row_order_cascade(golden):
    """With p3 complete, official visits the child before its parent falls: 1/3 where strict says 0."""
    answers = dict(ANSWERS)
    answers["p3"] = [image(P3, [Y, Y, N])] * 4
    results = score(golden.prompts, answers)
    assert results["official"].prompts["p3"] == pytest.approx(100 / 3)
    assert results["strict"].prompts["p3"] == 0.0
    assert results["dsg"].prompts["p3"] == pytest.approx(100 / 3)


def test_official_first_row_skip_only_hits_first_prompt(golden):
    view = official_view(golden.prompts)
    assert list(view["p1"]) == [2, 3, 4]
    assert list(view["p3"]) == [3, 2, 1]


def test_missing_parent_break_before_keyerror(tmp_path):
    """Upstream breaks at the first failed parent, so a missing parent listed after it raises nothing."""
    csv_text = (
        GOLDEN_CSV.splitlines()[0]
        + "\n"
        + "\n".join(
            [
                "skip,first row,x,1,0,entity,whole,entity - whole (x),Is there an x?",
                "q,A cat.,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?",
                'q,A cat.,cat,2,"1,9",attribute,color,"attribute - color (cat, black)",Is the cat black?',
            ]
        )
    )
    path = tmp_path / "g.csv"
    path.write_text(csv_text + "\n")
    graphs = load_csv(path)
    q = ["Is there a cat?", "Is the cat black?"]
    no_cat = {"q": [image(q, [N, Y])] * 4}
    assert score(graphs.prompts, no_cat)["official"].prompts == {"q": 0.0}
    with_cat = {"q": [image(q, [Y, Y])] * 3 + [image(q, [N, Y])]}
    assert "KeyError" in score(graphs.prompts, with_cat)["official"].excluded["q"]
    # strict and dsg: the missing parent 9 counts as "not yes"
    r = score(graphs.prompts, with_cat)
    assert r["strict"].prompts["q"] == pytest.approx((0.5 * 3 + 0) / 4 * 100)
    assert r["dsg"].prompts["q"] == pytest.approx((0.5 * 3 + 0) / 4 * 100)


def test_official_matches_reference_formula_on_random_answers(golden):
    """Parity with a line-by-line transcription of upstream's per-image loop on random answers."""
    import random

    rng = random.Random(7)
    view = official_view(golden.prompts)
    for _ in range(50):
        answers = {
            "p2": [image(P2, [rng.choice([Y, N]) for _ in P2]) for _ in range(4)],
        }
        expected_scores = []
        for img in answers["p2"]:
            qid2scores = {pid: float(img[q.question] == "yes") for pid, q in view["p2"].items()}
            for pid, q in view["p2"].items():
                for parent in q.parents:
                    if parent == 0:
                        continue
                    if qid2scores[parent] == 0:
                        qid2scores[pid] = 0
                        break
            expected_scores.append(sum(qid2scores.values()) / len(qid2scores))
        expected = sum(expected_scores) / len(expected_scores)
        got = score(golden.prompts, answers, protocols=["official"])["official"]
        assert got.prompts["p2"] == expected * 100
        assert got.overall == expected * 100


def test_empty_answers_give_nan_official_and_zero_strict(golden):
    r = score(golden.prompts, {})
    assert math.isnan(r["official"].overall) and r["official"].n == 0
    assert r["strict"].overall == 0.0 and r["dsg"].overall == 0.0


@pytest.mark.parametrize(
    ("raw", "norm"), [("Yes.", "yes"), (" NO ", "no"), ("yes!", "yes"), ("maybe", "maybe"), (None, "")]
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm
