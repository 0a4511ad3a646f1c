"""Benchmark statistics per prompt set, as in the paper's Table 2, plus what a benchmark builder checks.

Words (whitespace-separated), CLIP tokens (start/end included), nouns (NN*), adjectives+adverbs (JJ*/RB*)
and prepositions (IN) by NLTK's Penn Treebank tagger, distinct nouns, the share of prompts past CLIP's
77-token window, questions per prompt, category histogram, graph depth. Pure functions over loaded GraphSets; `cli_build` prints and plots.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgbench.build.clip_tokens import CONTEXT_LENGTH, ClipTokenizer
from dpgbench.data import GraphSet, Prompt
from dpgbench.errors import DpgBenchError

NLTK_PACKAGES = ("punkt_tab", "averaged_perceptron_tagger_eng")
NLTK_RESOURCES = ("tokenizers/punkt_tab/english/", "taggers/averaged_perceptron_tagger_eng/")
NLTK_HINT = f"python -m nltk.downloader {' '.join(NLTK_PACKAGES)}"

Tagger = Callable[[str], list[tuple[str, str]]]


def nltk_tagger() -> Tagger:
    """word_tokenize + the averaged perceptron (Penn Treebank tags), loaded once; a clear error without data."""
    try:
        import nltk
        from nltk.tag import PerceptronTagger
    except ImportError:
        raise DpgBenchError("stats needs nltk: pip install 'dpgbench[build]' (or use --no-pos)") from None
    for package, resource in zip(NLTK_PACKAGES, NLTK_RESOURCES):
        try:
            nltk.data.find(resource)
        except LookupError:
            raise DpgBenchError(
                f"NLTK data '{package}' is missing; download it once with: {NLTK_HINT} (or use --no-pos)"
            ) from None
    tagger = PerceptronTagger(lang="eng")  # what nltk.pos_tag builds on every call; here once

    def tag(text: str) -> list[tuple[str, str]]:
        return tagger.tag(nltk.word_tokenize(text))

    return tag


@dataclass
class PromptSetStats:
    name: str
    path: str
    prompts: int
    words: float
    clip_tokens: float  # start and end tokens included
    over_clip_window: float  # percent of prompts with more than 77 tokens (start/end included)
    nouns: float | None = None  # None: tagging was skipped (--no-pos)
    adjectives_adverbs: float | None = None
    prepositions: float | None = None
    distinct_nouns: int | None = None
    questions_per_prompt: float | None = None  # None: a prompt set without question graphs
    depth_mean: float | None = None
    depth_max: int | None = None
    categories: dict[str, int] = field(default_factory=dict)  # level-1 category -> questions
    categories_l2: dict[str, int] = field(default_factory=dict)
    word_counts: list[int] = field(default_factory=list, repr=False)  # per prompt, for the plot
    token_counts: list[int] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        """One flat CSV row (categories as `l1:<name>` columns)."""
        out = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("categories", "categories_l2", "word_counts", "token_counts")
        }
        out.update({f"l1:{k}": v for k, v in sorted(self.categories.items())})
        return out


def graph_depth(prompt: Prompt) -> int:
    """Questions on the longest parent chain (a root alone is 1); parents that do not exist or loop are cut."""
    parents = {
        q.proposition_id: [p for p in q.parents if p not in (0, q.proposition_id)] for q in prompt.questions
    }
    memo: dict[int, int] = {}

    def depth(node: int, seen: frozenset[int]) -> int:
        if node in memo:
            return memo[node]
        below = [depth(p, seen | {node}) for p in parents.get(node, []) if p in parents and p not in seen]
        memo[node] = 1 + max(below, default=0)
        return memo[node]

    return max((depth(q.proposition_id, frozenset()) for q in prompt.questions), default=0)


def prompt_set_stats(graphs: GraphSet, tokenizer: ClipTokenizer, tagger: Tagger | None) -> PromptSetStats:
    texts = [p.text for p in graphs.prompts]
    if not texts:
        raise DpgBenchError(f"{graphs.path}: no prompts to measure")
    words = [len(t.split()) for t in texts]
    # With the start and end tokens: the positions a prompt takes in CLIP's 77-token window, and what the
    # paper's Table 2 counts (DSG-1k: 22.56 both there and here).
    tokens = [tokenizer.count(t) + 2 for t in texts]
    # A folder of .txt is usually called `prompts`; its parent says which benchmark it is.
    folder = Path(graphs.path)
    name = f"{folder.parent.name}/{folder.name}" if folder.is_dir() else graphs.name
    stats = PromptSetStats(
        name=name,
        path=graphs.path,
        prompts=len(texts),
        words=statistics.fmean(words),
        clip_tokens=statistics.fmean(tokens),
        over_clip_window=100.0 * sum(n > CONTEXT_LENGTH for n in tokens) / len(tokens),
        word_counts=words,
        token_counts=tokens,
    )
    if tagger is not None:
        counts: Counter[str] = Counter()
        nouns: set[str] = set()
        for text in texts:
            for word, tag in tagger(text):
                if tag.startswith("NN"):
                    counts["noun"] += 1
                    nouns.add(word.lower())
                elif tag.startswith(("JJ", "RB")):
                    counts["adjadv"] += 1
                elif tag == "IN":
                    counts["prep"] += 1
        stats.nouns = counts["noun"] / len(texts)
        stats.adjectives_adverbs = counts["adjadv"] / len(texts)
        stats.prepositions = counts["prep"] / len(texts)
        stats.distinct_nouns = len(nouns)
    if graphs.has_questions and graphs.n_questions:
        stats.questions_per_prompt = graphs.n_questions / len(texts)
        depths = [graph_depth(p) for p in graphs.prompts]
        stats.depth_mean = statistics.fmean(depths)
        stats.depth_max = max(depths)
        stats.categories = dict(Counter(q.l1 for _, q in graphs.questions()).most_common())
        stats.categories_l2 = dict(Counter(q.l2 for _, q in graphs.questions()).most_common())
    return stats


def plot_lengths(all_stats: Sequence[PromptSetStats], path: Path) -> None:
    """Histograms of words and CLIP tokens per prompt, one colour per set, CLIP's window marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DpgBenchError(
            "the length plot needs matplotlib: pip install 'dpgbench[build]' (or --no-plot)"
        ) from None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, attribute, label in (
        (axes[0], "word_counts", "words"),
        (axes[1], "token_counts", "CLIP tokens"),
    ):
        values = [getattr(s, attribute) for s in all_stats]
        top = max(max(v) for v in values)
        bins = range(0, top + 6, 5)
        for s, v in zip(all_stats, values):
            axis.hist(v, bins=bins, alpha=0.55, label=f"{s.name} (mean {sum(v) / len(v):.1f})")
        axis.set_xlabel(f"{label} per prompt")
        axis.set_ylabel("prompts")
        axis.legend(fontsize=8, loc="upper right")
    axes[1].axvline(CONTEXT_LENGTH, color="black", linestyle="--", linewidth=1)
    # Half way up, below the legend box.
    axes[1].text(CONTEXT_LENGTH + 1, axes[1].get_ylim()[1] * 0.5, "CLIP window (77)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
