"""Loading, writing and checking question graphs, on real DSG files and on deliberately bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dpgbench.data import CSV_COLUMNS, load_csv, load_graphs, load_jsonl, load_prompt_folder, save_graphs
from dpgbench.errors import DpgBenchError
from dpgbench.graphcheck import check_graphs, is_yes_no_question, mentions_argument

HEADER = ",".join(CSV_COLUMNS)


def test_dsg1k_loads_with_dsg_rule(shared_dir: Path):
    graphs = load_csv(shared_dir / "dsg" / "dsg-1k-anns.csv")
    assert len(graphs.prompts) == 1060 and graphs.n_questions == 8182
    assert graphs.sha256 == "b7ce06ea8a0478ccfd8fba105ecd26d7d301eb99d5c412987546c4cc8e08917a"
    # the ten rows whose dependency holds a word keep their numeric parents, each reported with its line
    ignored = [n for n in graphs.notes if "non-numeric" in n.message]
    assert len(ignored) == 10
    assert str(ignored[0]) == (
        f"{shared_dir / 'dsg' / 'dsg-1k-anns.csv'}:185: dependency '5, right': ignored non-numeric right"
    )
    q9 = next(q for q in graphs.by_id()["posescript_69"].questions if q.proposition_id == 9)
    assert q9.parents == (5,) and q9.l2 == "relation - spatial" and q9.l1 == "relation"
    levels = Counter(q.l1 for _, q in graphs.questions())
    assert levels["entity"] == 2748 + 644 + 3 and levels["global"] == 475


def test_lint_finds_real_defects(shared_dir: Path):
    dsg = Counter(f.code for f in check_graphs(load_csv(shared_dir / "dsg" / "dsg-1k-anns.csv")))
    assert dsg["non-numeric-parent"] == 10
    assert dsg["dangling-parent"] == 8
    assert dsg["cycle"] == 48  # 47 self-parents and one two-question cycle (drawtext_45: 10 -> 11 -> 10)
    tifa = check_graphs(load_csv(shared_dir / "dsg" / "tifa160-dev-anns.csv"))
    codes = Counter(f.code for f in tifa)
    assert codes["duplicate-id"] == 3 and codes["dangling-parent"] == 2
    blank = [f for f in tifa if f.code == "empty-field" and "empty question text" in f.message]
    assert blank and all(f.level == "error" for f in blank)


def test_dpg_prompt_folder(shared_dir: Path):
    graphs = load_prompt_folder(shared_dir / "dpg_bench" / "prompts")
    assert len(graphs.prompts) == 1065 and not graphs.has_questions
    cabbages = graphs.by_id()["0"].text
    assert cabbages.startswith("An expansive field, blanketed by the soft light of morning")


def test_csv_jsonl_round_trip(shared_dir: Path, tmp_path: Path):
    original = load_csv(shared_dir / "dsg" / "tifa160-dev-anns.csv")
    save_graphs(original.prompts, tmp_path / "g.jsonl")
    via_jsonl = load_jsonl(tmp_path / "g.jsonl")
    save_graphs(via_jsonl.prompts, tmp_path / "g.csv")
    back = load_csv(tmp_path / "g.csv")

    def essence(graphs):
        return [
            (
                p.item_id,
                p.text,
                [(q.proposition_id, q.question, q.tuple, q.parents, q.keywords) for q in p.questions],
            )
            for p in graphs.prompts
        ]

    assert essence(back) == essence(original) == essence(via_jsonl)


def write(tmp_path: Path, text: str | bytes, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "bad.csv:1: empty file; expected a header row"),
        (HEADER + "\n\n", "bad.csv:2: no question rows after the header"),
        ("item_id,text\nx,y\n", "bad.csv:1: missing column(s) keywords, proposition_id"),
        (
            HEADER + "\np,t,k,one,0,entity,whole,entity - whole (x),Is there x?\n",
            "bad.csv:2: proposition_id 'one'",
        ),
        (HEADER + "\np,t,k,1,0\n", "bad.csv:2: 5 fields, the header has 9"),
        (HEADER.encode() + b"\np,caf\xe9,k,1,0,e,w,t (x),Is x?\n", "bad.csv:2: not UTF-8 (byte 0xe9)"),
    ],
)
def test_bad_csv_messages(tmp_path: Path, content, message):
    with pytest.raises(DpgBenchError) as info:
        load_csv(write(tmp_path, content))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tsv_is_read_with_tabs(tmp_path: Path):
    rows = [HEADER, "p,t,k,1,0,entity,whole,entity - whole (x),Is there x?"]
    path = write(tmp_path, "\n".join(r.replace(",", "\t") for r in rows) + "\n", "g.tsv")
    graphs = load_graphs(path)
    assert graphs.n_questions == 1 and graphs.prompts[0].questions[0].l2 == "entity - whole"


def test_bad_jsonl_and_paths(tmp_path: Path):
    with pytest.raises(DpgBenchError, match=r"bad.jsonl:2: not valid JSON"):
        load_jsonl(write(tmp_path, '{"item_id": "a", "text": "t"}\n{oops\n', "bad.jsonl"))
    with pytest.raises(DpgBenchError, match="no such file or folder"):
        load_graphs(tmp_path / "missing.csv")
    with pytest.raises(DpgBenchError, match="unknown prompt file type"):
        load_graphs(write(tmp_path, "x", "prompts.xlsx"))


def test_checks_on_small_cases(tmp_path: Path):
    rows = [
        "a,t,k,1,0,entity,whole,entity - whole (cat),Is there a cat?",
        'a,t,k,2,3,attribute,color,"attribute - color (cat, black)",Is the cat black?',  # parent after child
        'a,t,k,3,"2",entity,whole,entity - whole (mat),Is there a mat?',  # cycle 2 <-> 3
        "b,t,k,1,7,entity,whole,entity - whole (dog),What is the dog doing?",  # dangling, not yes/no
        "a,t,k,4,0,entity,whole,entity - whole (sofa),Is there a chair?",  # not contiguous, misses tuple
    ]
    graphs = load_csv(write(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n"))
    found = {(f.line, f.code) for f in check_graphs(graphs)}
    assert (3, "parent-after-child") in found
    assert any(code == "cycle" for _, code in found)
    assert {
        (5, "dangling-parent"),
        (5, "not-yes-no"),
        (6, "not-contiguous"),
        (6, "question-misses-tuple"),
    } <= found


def test_check_helpers():
    assert is_yes_no_question("Am I holding the Universe?")
    assert not is_yes_no_question("What colour is the cat?")
    assert mentions_argument("Are there two deer?", ["deer", "2"])
    assert mentions_argument("Are the boulders mossy?", ["boulder"])
    assert not mentions_argument("Is there a chair?", ["sofa"])
    assert mentions_argument("Is this a photo?", [])
