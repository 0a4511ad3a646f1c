"""`stats` and CLIP token counts: a small NLTK data folder built here (no download), the real CLIP vocabulary
from the installed open_clip_torch (found, never imported), and golden values from the real prompt sets."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dpgbench.build.clip_tokens import VOCAB_SIZE, ClipTokenizer, find_vocab
from dpgbench.build.stats import graph_depth, nltk_tagger, prompt_set_stats
from dpgbench.data import Prompt, Question, load_graphs, load_jsonl
from dpgbench.errors import DpgBenchError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Hand-tagged (Penn Treebank) sentences; the tiny tagger is trained on them until it reproduces them.
TAGGED = [
    "A/DT black/JJ cat/NN sleeps/VBZ quietly/RB on/IN a/DT red/JJ mat/NN ./.",
    "Two/CD brown/JJ horses/NNS graze/VBP beside/IN an/DT old/JJ fence/NN ./.",
    "A/DT small/JJ boat/NN floats/VBZ slowly/RB on/IN a/DT calm/JJ lake/NN under/IN the/DT moon/NN ./.",
]


def clip_vocab_or_skip() -> bytes:
    try:
        return find_vocab()
    except DpgBenchError as exc:
        pytest.skip(f"no CLIP vocabulary offline ({exc})")


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer(clip_vocab_or_skip())


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """punkt_tab with empty parameters plus a perceptron tagger trained on TAGGED, registered with nltk."""
    import nltk
    from nltk.tag import PerceptronTagger

    root = tmp_path_factory.mktemp("nltk_data")
    punkt = root / "tokenizers" / "punkt_tab" / "english"
    punkt.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (punkt / name).write_text("")
    nltk.data.path.insert(0, str(root))  # nltk >= 3.10 reads data only from registered folders
    tagger = PerceptronTagger(load=False)
    random.seed(0)  # training shuffles the sentences
    # 20 copies make every word frequent and unambiguous, so the tagger's word->tag table covers them all.
    tagger.train([[tuple(t.rsplit("/", 1)) for t in s.split()] for s in TAGGED] * 20, nr_iter=5)
    tagger.save_to_json(lang="eng", loc=str(root / "taggers" / "averaged_perceptron_tagger_eng"))
    yield root
    nltk.data.path.remove(str(root))


def test_clip_tokens_match_clip_golden_ids(tokenizer: ClipTokenizer) -> None:
    # From OpenAI CLIP's README: clip.tokenize("a diagram") == [49406, 320, 22697, 49407].
    assert len(tokenizer.ids) == VOCAB_SIZE == 49408
    assert tokenizer.encode("a diagram") == [320, 22697]
    assert tokenizer.encode("a dog") == [320, 1929]
    assert tokenizer.encode("<|startoftext|>a cat<|endoftext|>") == [49406, 320, 2368, 49407]
    # Lower-casing, HTML entities and whitespace are normalised as in CLIP.
    assert tokenizer.encode("A  DIAGRAM &amp;") == tokenizer.encode("a diagram &")


def test_clip_vocab_is_read_without_importing_open_clip_or_torch() -> None:
    clip_vocab_or_skip()
    code = (
        "import sys; from dpgbench.build.clip_tokens import ClipTokenizer; ClipTokenizer.load(); "
        "print('open_clip' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_clip_vocab_from_a_wheel_or_missing(tmp_path: Path) -> None:
    data = clip_vocab_or_skip()
    wheel = tmp_path / "open_clip_torch-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", data)
    assert find_vocab(wheel) == data
    with pytest.raises(
        DpgBenchError, match="no such file; CLIP's BPE vocabulary was not found: pip install open_clip_torch"
    ):
        find_vocab(tmp_path / "missing.txt.gz")
    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(b"#version\na b\nnot a merge\n"))
    with pytest.raises(DpgBenchError, match="1 well-formed merges, 48894 expected"):
        ClipTokenizer.load(tmp_path / "bad.txt.gz")


def test_pos_counts_with_a_tiny_tagger(nltk_data: Path, tokenizer: ClipTokenizer, tmp_path: Path) -> None:
    tag = nltk_tagger()
    plain = [" ".join(t.rsplit("/", 1)[0] for t in s.split()).replace(" .", ".") for s in TAGGED]
    assert [tag(s) for s in plain] == [[tuple(t.rsplit("/", 1)) for t in s.split()] for s in TAGGED]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(f'{{"item_id": "p{i}", "text": "{s}"}}\n' for i, s in enumerate(plain)))
    stats = prompt_set_stats(load_jsonl(path), tokenizer, tag)
    # Nouns NN*: 2, 2, 3; adjectives+adverbs JJ*/RB*: 3, 2, 3; prepositions IN: 1, 1, 2 (from TAGGED).
    assert (stats.nouns, stats.adjectives_adverbs, stats.prepositions) == (7 / 3, 8 / 3, 4 / 3)
    assert stats.distinct_nouns == 7
    assert stats.word_counts == [9, 8, 12]
    assert stats.token_counts == [tokenizer.count(s) + 2 for s in plain] == [12, 12, 15]
    assert stats.questions_per_prompt is None and stats.over_clip_window == 0.0


def test_missing_nltk_data_names_the_download_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(DpgBenchError) as info:
        nltk_tagger()
    assert str(info.value) == (
        "NLTK data 'punkt_tab' is missing; download it once with: "
        "python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng (or use --no-pos)"
    )


def test_graph_depth_cuts_cycles_and_dangling_parents() -> None:
    def q(pid: int, *parents: int) -> Question:
        return Question(pid, "Is it?", "entity - whole (x)", parents or (0,))

    assert graph_depth(Prompt("a", "x", [q(1), q(2, 1), q(3, 2), q(4, 1)])) == 3
    assert graph_depth(Prompt("b", "x", [q(1, 2), q(2, 1), q(3, 9)])) == 2
    assert graph_depth(Prompt("c", "x", [])) == 0


def test_real_prompt_sets_against_the_papers_table_2(tokenizer: ClipTokenizer) -> None:
    if not (SHARED / "dsg" / "dsg-1k-anns.csv").exists():
        pytest.skip(f"{SHARED} with the DPG-Bench prompts and DSG-1k is not available")
    dpg = prompt_set_stats(load_graphs(SHARED / "dpg_bench" / "prompts"), tokenizer, None)
    dsg = prompt_set_stats(load_graphs(SHARED / "dsg" / "dsg-1k-anns.csv"), tokenizer, None)
    # Paper: DPG-Bench 67.12 words / 83.91 tokens; DSG-1k 17.13 / 22.56 (README explains the gaps).
    assert (dpg.prompts, sum(dpg.word_counts), sum(dpg.token_counts)) == (1065, 71491, 89384)
    assert (dsg.prompts, sum(dsg.word_counts), sum(dsg.token_counts)) == (1060, 18131, 23915)
    assert round(dpg.words, 2) == 67.13 and round(dsg.clip_tokens, 2) == 22.56
    assert sum(n > 77 for n in dpg.token_counts) == 640 and dsg.over_clip_window == 0.0
    assert (dsg.questions_per_prompt, dsg.depth_max) == (8182 / 1060, 5)
    assert dsg.categories == {
        "entity": 3395,
        "relation": 2069,
        "attribute": 1950,
        "global": 475,
        "other": 293,
    }
