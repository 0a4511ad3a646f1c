"""Golden scores, computed by hand, for the three protocols on one small graph set (see the comments)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from dpgbench.data import CSV_COLUMNS, load_csv
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


SECOND_CSV = "\n".join(
    [
        GOLDEN_CSV.splitlines()[0],
        "s,A sun.,sun,1,0,entity,whole,entity - whole (sun),Is there a sun?",
        "m,A cat on a red mat.,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?",
        "m,A cat on a red mat.,mat,2,0,entity,whole,entity - whole (mat),Is there a mat?",
        'm,A cat on a red mat.,"cat, mat",3,"1,2",relation,spatial,"relation - spatial (cat, mat, on)",'
        "Is the cat on the mat?",
        'm,A cat on a red mat.,"mat, red",4,3,attribute,color,"attribute - color (mat, red)",Is the mat red?',
        "r,A big dog.,dog,1,0,entity,whole,entity - whole (dog),Is there a dog?",
        'r,A big dog.,dog,2,1,attribute,color,"attribute - color (dog, brown)",Is the dog brown?',
        'r,A big dog.,dog,2,0,attribute,size,"attribute - size (dog, big)",Is the dog big?',
        "i,A tall tree.,tree,1,0,entity,whole,entity - whole (tree),Is there a tree?",
        "j,A bird.,bird,1,0,entity,whole,entity - whole (bird),Is there a bird?",
        'i,A tall tree.,tree,2,0,attribute,size,"attribute - size (tree, tall)",Is the tree tall?',
    ]
)
M = ["Is there a cat?", "Is there a mat?", "Is the cat on the mat?", "Is the mat red?"]
SECOND_ANSWERS = {
    "s": [{"Is there a sun?": Y}] * 4,
    "m": [
        image(M, [Y, Y, Y, Y]),  # 1
        image(M, [Y, N, Y, Y]),  # q3 has parents 1 and 2, 2 fails -> q3 0 -> its child q4 0: 1/4
        image(M, [N, Y, Y, N]),  # q3 falls with q1: [0,1,0,0] = 1/4
        image(M, [Y, Y, N, Y]),  # q4 falls with q3: [1,1,0,0] = 1/2
    ],
    "r": [{"Is there a dog?": Y, "Is the dog brown?": N, "Is the dog big?": Y}] * 4,
    "i": [{"Is there a tree?": N, "Is the tree tall?": Y}] * 4,
    "j": [{"Is there a bird?": Y}] * 4,
}


def test_official_golden_multi_parent_repeated_id_interrupted_item(tmp_path: Path):
    """Hand-computed: a two-parent question with a grandchild, a repeated id, an interrupted item."""
    path = tmp_path / "second.csv"
    path.write_text(SECOND_CSV + "\n")
    graphs = load_csv(path)
    view = official_view(graphs.prompts)
    assert "s" not in view  # its only row is the skipped first row
    assert [q.question for q in view["r"].values()] == [
        "Is there a dog?",
        "Is the dog big?",
    ]  # id 2 overwritten
    assert [q.question for q in view["i"].values()] == ["Is the tree tall?"]  # item restarted after j
    results = score(graphs.prompts, SECOND_ANSWERS)
    official = results["official"]
    # m: (1 + 1/4 + 1/4 + 1/2) / 4 = 1/2; r: dog, big = 1; i: tall = 1; j: 1
    assert official.prompts == {"m": 50.0, "r": 100.0, "i": 100.0, "j": 100.0}
    assert official.overall == 87.5 and official.n == 4
    assert official.excluded == {"s": "no questions left after upstream skips the first CSV row"}
    # categories: raw answers of the last image of each counted prompt (m's q4 counts as yes, raw)
    assert {k: (v.score, v.n) for k, v in official.l2.items()} == {
        "attribute - color": (100.0, 1),
        "attribute - size": (100.0, 2),
        "entity - whole": (100.0, 4),
        "relation - spatial": (0.0, 1),
    }
    assert {k: (v.score, v.n) for k, v in official.l1.items()} == {
        "attribute": (100.0, 3),
        "entity": (100.0, 4),
        "relation": (0.0, 1),
    }
    strict, dsg = results["strict"], results["dsg"]
    # strict keeps every row: s 1; m as official (rows in graph order); r: dog 1, brown 0, big 1 = 2/3;
    # i: tree 0, tall 1 = 1/2; j 1
    assert strict.prompts == pytest.approx({"s": 100.0, "m": 50.0, "r": 200 / 3, "i": 50.0, "j": 100.0})
    # dsg: m's q4 only needs its parent's raw yes: image 1 [1,0,0,1] = 1/2, image 3 [1,1,0,0] = 1/2
    # -> (1 + 1/2 + 1/4 + 1/2) / 4 = 56.25
    assert dsg.prompts == pytest.approx({"s": 100.0, "m": 56.25, "r": 200 / 3, "i": 50.0, "j": 100.0})
    assert strict.l2["entity - whole"].n == 4 * 6  # s, cat, mat, dog, tree, bird on 4 images


def test_empty_answers_give_nan_official_and_zero_strict(golden):
    r = score(golden.prompts, {})
    assert math.isnan(r["official"].overall) and r["official"].n == 0
    assert r["strict"].overall == 0.0 and r["dsg"].overall == 0.0


@pytest.mark.parametrize(
    ("raw", "norm"), [("Yes.", "yes"), (" NO ", "no"), ("yes!", "yes"), ("maybe", "maybe"), (None, "")]
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


# ------------------------------------------------------------------------------------------------------
# Randomized parity of `official` with an independent re-implementation of upstream's arithmetic
# (compute_dpg_bench.py: pandas read, prepare_dpg_data, compute_dpg_one_sample, the per-file try/except,
# np.mean), reading the same CSV bytes with pandas as upstream does.


def upstream_oracle(csv_path: Path, answers: dict, order: list[str]):
    """(overall percent, {item: percent}, {l1: (percent, n)}, {l2: (percent, n)}) as upstream computes."""
    import numpy as np
    import pandas as pd

    graphs: dict = {}
    previous = ""
    for i, line in pd.read_csv(csv_path).iterrows():
        if i == 0:
            continue
        qid = int(line.proposition_id)
        parents = [int(d.strip()) for d in line.dependency.split(",")]
        if line.item_id != previous:
            graphs[line.item_id] = {"tuple": {}, "dep": {}, "question": {}}
        g = graphs[line.item_id]
        g["tuple"][qid], g["dep"][qid], g["question"][qid] = (
            line.tuple,
            parents,
            line.question_natural_language,
        )
        previous = line.item_id
    scores, by_l2 = [], {}
    for item in order:  # one 2x2 grid per item whose four images all exist
        try:
            g = graphs.get(item)
            qid2scores: dict = {}
            per_image = []
            for image in answers[item]:
                for qid, question in g["question"].items():
                    qid2scores[qid] = float(image.get(question) == "yes")
                orig = qid2scores.copy()
                for qid, parents in g["dep"].items():
                    for p in parents:
                        if p == 0:
                            continue
                        if qid2scores[p] == 0:
                            qid2scores[qid] = 0
                            break
                per_image.append(sum(qid2scores.values()) / len(qid2scores))
            scores.append((item, sum(per_image) / len(per_image)))
            for qid in g["tuple"]:
                by_l2.setdefault(g["tuple"][qid].split("(")[0].strip(), []).append(orig[qid])
        except Exception:  # upstream: print('Failed filename:', ...); continue
            continue
    by_l1: dict = {}
    for category, values in by_l2.items():
        by_l1.setdefault(category.split("-")[0].strip(), []).extend(values)
    overall = np.mean([s for _, s in scores]) * 100 if scores else math.nan
    return (
        overall,
        {item: s * 100 for item, s in scores},
        {c: (np.mean(v) * 100, len(v)) for c, v in by_l1.items()},
        {c: (np.mean(v) * 100, len(v)) for c, v in by_l2.items()},
    )


L2_NAMES = ["entity - whole", "attribute - color", "relation - spatial", "global -", "other - count"]


def random_graph_rows(rng) -> list[list[str]]:
    """Rows of a DSG-format CSV with every defect upstream has to survive: repeated ids, an item whose rows
    are interrupted, parents that do not exist (or come later, or are the question itself), empty tuples,
    and a first item that may consist of the skipped first row alone."""
    rows = []
    items = [f"it{k}" for k in range(rng.randint(2, 7))]
    runs = [(items[0], 1 if rng.random() < 0.3 else rng.randint(2, 6))]
    runs += [(item, rng.randint(1, 7)) for item in items[1:]]
    for _ in range(rng.randint(0, 2)):  # an item seen again after another one
        runs.insert(rng.randint(1, len(runs)), (rng.choice(items), rng.randint(1, 3)))
    for item, n in runs:
        for _ in range(n):
            pid = rng.randint(1, 8)  # small range: repeated ids are common
            parents = (
                ["0"] if rng.random() < 0.4 else [str(rng.randint(1, 9)) for _ in range(rng.randint(1, 3))]
            )
            category = rng.choice(L2_NAMES)
            tuple_text = "" if rng.random() < 0.08 else f"{category} (x{pid})"
            question = f"Is q{rng.randint(1, 10)} true?"  # shared texts: answers are keyed by text
            rows.append(
                [item, f"prompt {item}", "k", str(pid), ", ".join(parents), "c", "d", tuple_text, question]
            )
    return rows


def random_answers(rng, rows: list[list[str]]) -> dict:
    texts: dict[str, list[str]] = {}
    for row in rows:
        texts.setdefault(row[0], []).append(row[8])
    answers: dict = {}
    for item, questions in texts.items():
        if rng.random() < 0.15:
            continue  # no images
        images: list = []
        for _ in range(4):
            choices = ["yes", "yes", "no", "Yes", "yes."]
            images.append({q: rng.choice(choices) for q in questions if rng.random() > 0.05})
        if rng.random() < 0.1:
            images[rng.randrange(4)] = None  # a missing image: no complete grid
        answers[item] = images
    return answers


def test_official_parity_with_upstream_arithmetic(tmp_path: Path):
    """300 random graphs and answer sets: our official scores equal the oracle's exactly, bit for bit."""
    import csv as csv_module
    import random

    seen: Counter[str] = Counter()
    for seed in range(300):
        rng = random.Random(seed)
        rows = random_graph_rows(rng)
        path = tmp_path / f"g{seed}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv_module.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        graphs = load_csv(path)
        answers = random_answers(rng, rows)
        got = score(graphs.prompts, answers, protocols=["official"])["official"]
        # upstream sees one grid per item with four images, and we only count items with answers
        order = [
            p.item_id
            for p in graphs.prompts
            if p.item_id in answers
            and all(image is not None for image in answers[p.item_id])
            and any(answers[p.item_id])
        ]
        overall, prompts, l1, l2 = upstream_oracle(path, answers, order)
        where = f"seed {seed}"
        assert got.prompts == prompts, where
        assert got.n == len(prompts), where
        assert got.overall == overall or (math.isnan(got.overall) and math.isnan(overall)), where
        assert {c: (s.score, s.n) for c, s in got.l2.items()} == l2, where
        assert {c: (s.score, s.n) for c, s in got.l1.items()} == l1, where
        assert set(got.excluded) == {p.item_id for p in graphs.prompts} - set(prompts), where
        for why in got.excluded.values():
            seen[why.split(":")[0]] += 1
        first = graphs.prompts[0]
        seen["first item was only the first row"] += len(first.questions) == 1
        seen["repeated id"] += any(
            len({q.proposition_id for q in p.questions}) < len(p.questions) for p in graphs.prompts
        )
        seen["interrupted item"] += any(
            [q.row for q in p.questions]
            != list(range(p.questions[0].row, p.questions[0].row + len(p.questions)))
            for p in graphs.prompts
        )
        seen["empty tuple in a scored prompt"] += any(
            not q.tuple for p in graphs.prompts if p.item_id in prompts for q in p.questions
        )
    # every quirk the oracle models was exercised many times
    assert seen["dropped as upstream does"] > 100
    assert seen["no questions left after upstream skips the first CSV row"] > 30
    assert seen["incomplete grid (an image is missing)"] > 30
    assert seen["no images"] > 30
    for case in (
        "first item was only the first row",
        "repeated id",
        "interrupted item",
        "empty tuple in a scored prompt",
    ):
        assert seen[case] > 30, (case, seen)
