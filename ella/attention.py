"""Where the TSC looks as denoising goes on: the ELLA paper's Figure 8 for any prompt and checkpoint.

Owns `attention_over_timesteps` (the TSC alone, no UNet: attention from the learned queries to each prompt
word at each timestep, normalised per word by its maximum over timesteps), the subword-to-word merge, and
the CSV and heatmap writers (matplotlib is imported only when drawing).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ella.checkpoint import check_text_width
from ella.model import ELLA
from ella.text_encoder import T5TextEmbedder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# High noise first, as the paper's figure reads top to bottom; SD's schedule has timesteps 0..999.
DEFAULT_TIMESTEPS = (999, 800, 600, 400, 200, 1)
# sentencepiece marks the start of a whitespace-separated word with this character (U+2581).
WORD_START = "\u2581"


@dataclass
class TimestepAttention:
    """One prompt's attention over timesteps. Rows follow `timesteps`, columns follow `words`.

    `mass[t, w]`: attention from all queries and heads to word w's pieces at timestep t (each query's
    weights over latents + text sum to 1, so a row of `mass` sums to at most heads x queries).
    `scores`: `mass` divided by each column's maximum over timesteps, so every column peaks at exactly 1.
    `outputs`: the TSC's tokens for the UNet from the same call (capture leaves them bit-identical).
    """

    prompt: str
    timesteps: list[int]
    words: list[str]
    pieces: list[list[str]]
    mass: torch.Tensor
    scores: torch.Tensor
    block: str
    truncated: bool
    outputs: torch.Tensor


def resolve_block(block: int | str, num_blocks: int) -> tuple[list[int], str]:
    """'last', 'mean' or a block index (negative counts from the end) -> (block indices, label)."""
    if block == "last":
        return [num_blocks - 1], f"last block ({num_blocks - 1})"
    if block == "mean":
        return list(range(num_blocks)), f"mean of {num_blocks} blocks"
    try:
        index = int(block)
    except ValueError:
        raise ValueError(f"block {block!r}: use last, mean or an index 0..{num_blocks - 1}") from None
    if not -num_blocks <= index < num_blocks:
        raise ValueError(
            f"block {index}: this TSC has {num_blocks} blocks, use 0..{num_blocks - 1}, last or mean"
        )
    index %= num_blocks
    return [index], f"block {index}"


def group_pieces(pieces: Sequence[str]) -> list[list[int]]:
    """Indices of the sentencepiece pieces that make up each word: a piece starting with '▁' opens one.

    A bare '▁' piece (before a character the vocabulary cannot glue to it, like a digit) opens the word
    that the following pieces spell.
    """
    groups: list[list[int]] = []
    for index, piece in enumerate(pieces):
        if piece.startswith(WORD_START) or not groups:
            groups.append([index])
        else:
            groups[-1].append(index)
    return groups


def word_labels(prompt: str, pieces: Sequence[str], groups: Sequence[Sequence[int]], tokenizer) -> list[str]:
    """The prompt's own words when every word got a group (keeps case and characters the vocabulary
    maps to <unk>); otherwise (a truncated prompt) each group's pieces decoded by the tokenizer."""
    words = prompt.split()
    if len(words) == len(groups):
        return words
    labels = []
    for group in groups:
        spelled = [pieces[i] for i in group]
        # A lone '▁' (its word cut off by truncation) decodes to nothing: show the piece itself. A copy
        # goes to the tokenizer: T5Tokenizer.convert_tokens_to_string strips the first piece in place.
        labels.append(tokenizer.convert_tokens_to_string(list(spelled)).strip() or "".join(spelled))
    return labels


def normalise_over_timesteps(mass: torch.Tensor) -> torch.Tensor:
    """Each column divided by its maximum over the rows (x / x is exactly 1); an all-zero column stays 0."""
    peak = mass.amax(dim=0, keepdim=True)
    # The clamp only touches zero columns (0 / tiny = 0); a positive peak divides itself to exactly 1.
    return mass / peak.clamp_min(torch.finfo(mass.dtype).tiny)


@torch.no_grad()
def attention_over_timesteps(
    tsc: ELLA,
    embedder: T5TextEmbedder,
    prompt: str,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    block: int | str = "last",
) -> TimestepAttention:
    """Run the TSC once per timestep (one batch) on the prompt's T5 features and read its attention.

    The T5 features are made exactly as for generation (the embedder's fixed or flexible length), so
    the TSC sees what it sees inside a pipeline; only the prompt's own tokens become columns (padding and
    the end-of-text token do not), subword pieces summed into their word.
    """
    steps = [int(t) for t in timesteps]
    if not steps:
        raise ValueError("no timesteps given: pass at least one, e.g. 999,500,1")
    blocks, block_label = resolve_block(block, len(tsc.connector.perceiver_blocks))
    check_text_width(tsc, embedder.hidden_size)
    # 1. T5 once, with the tokens it saw (same tokenizer call as inside `encode`).
    tokens = embedder.tokenize([prompt], embedder.max_length)
    features = embedder.encode([prompt])
    # 2. The TSC once, one batch row per timestep, with every block's attention recorded on the side.
    device = tsc.time_embedding.linear_1.weight.device
    hidden = features.hidden.to(device).expand(len(steps), -1, -1)
    mask = None if features.mask is None else features.mask.to(device).expand(len(steps), -1)
    with tsc.capture_attention() as capture:
        outputs = tsc(hidden, torch.tensor(steps, device=device), text_mask=mask)
    # 3. Per text token: sum over heads and queries (float64 so sums do not depend on order much),
    #    averaged over the chosen blocks -> (timesteps, text tokens).
    per_token = torch.stack(
        [capture.text_attention(call=0, block=b).double().sum(dim=(1, 2)) for b in blocks]
    ).mean(dim=0)
    # 4. Keep the prompt's pieces (not padding nor </s>; <unk> stays, it stands for real characters).
    ids = tokens["input_ids"][0].tolist()
    attended = tokens["attention_mask"][0].tolist()
    eos = embedder.tokenizer.eos_token_id
    kept = [i for i, (token, real) in enumerate(zip(ids, attended, strict=True)) if real and token != eos]
    pieces = embedder.tokenizer.convert_ids_to_tokens([ids[i] for i in kept])
    groups = group_pieces(pieces)
    # 5. Merge pieces into words by summing their attention, then normalise each word over timesteps.
    per_token = per_token.cpu()
    mass = torch.stack([per_token[:, [kept[i] for i in group]].sum(dim=1) for group in groups], dim=1)
    whole = len(embedder.tokenizer(prompt)["input_ids"])
    return TimestepAttention(
        prompt=prompt,
        timesteps=steps,
        words=word_labels(prompt, pieces, groups, embedder.tokenizer),
        pieces=[[pieces[i] for i in group] for group in groups],
        mass=mass,
        scores=normalise_over_timesteps(mass),
        block=block_label,
        truncated=embedder.max_length is not None and whole > embedder.max_length,
        outputs=outputs,
    )


# ------------------------------------------------------------------------------------------- files


def csv_text(result: TimestepAttention) -> str:
    """Header `timestep,<word>,...`; one row per timestep of normalised scores, written with repr so
    reading them back as floats gives the same numbers exactly."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["timestep", *result.words])
    for step, row in zip(result.timesteps, result.scores.tolist(), strict=True):
        writer.writerow([step, *(repr(value) for value in row)])
    return out.getvalue()


def write_csv(result: TimestepAttention, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(result), encoding="utf-8")
    return path


# Figure geometry in inches: fixed per cell, so the image size follows from the matrix shape alone.
CELL_WIDTH, CELL_HEIGHT, MARGIN_WIDTH, MARGIN_HEIGHT, DPI = 0.32, 0.32, 2.2, 2.2, 100


def figure_size(timesteps: int, words: int) -> tuple[float, float]:
    return max(5.0, MARGIN_WIDTH + CELL_WIDTH * words), MARGIN_HEIGHT + CELL_HEIGHT * max(timesteps, 4)


def draw_heatmap(result: TimestepAttention, title: str | None = None) -> Figure:
    """Timesteps (rows, as given) x words (columns), viridis from 0 to 1, on an Agg canvas (no pyplot)."""
    from matplotlib.figure import Figure

    rows, cols = result.scores.shape
    figure = Figure(figsize=figure_size(rows, cols), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(
        result.scores.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    ax.set_xticks(range(cols), result.words, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(rows), [str(t) for t in result.timesteps], fontsize=8)
    ax.set_ylabel("timestep")
    shown = result.prompt if len(result.prompt) <= 70 else result.prompt[:67] + "..."
    ax.set_title(title or f"TSC attention to each word, {result.block}\n{shown}", fontsize=9)
    figure.colorbar(image, ax=ax, label="attention / its max over timesteps", shrink=0.9)
    return figure


def save_heatmap(result: TimestepAttention, path: str | Path, title: str | None = None) -> Path:
    """The heatmap as PNG (or PDF/SVG by suffix); the fixed Software tag keeps PNG bytes reproducible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_heatmap(result, title).savefig(
        path, metadata={"Software": "ella"} if path.suffix == ".png" else None
    )
    return path
