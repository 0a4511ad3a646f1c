"""CLIP token counts with the real CLIP BPE vocabulary (49,408 tokens), without torch or open_clip's import.

The vocabulary is the `bpe_simple_vocab_16e6.txt.gz` that OpenAI's CLIP and the `open_clip_torch` wheel ship.
It is found, in order, at --clip-vocab (the .gz, or a downloaded open_clip_torch .whl), $DPGBENCH_CLIP_VOCAB,
or an installed open_clip package (located with importlib, never imported). Counts exclude start/end tokens.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from dpgbench.errors import DpgBenchError

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
WHEEL_MEMBER = f"open_clip/{VOCAB_NAME}"
# CLIP's vocabulary: 256 byte symbols, the same with an end-of-word mark, 48,894 merges, start and end tokens
# (the merge count is 49152 - 256 - 2 in OpenAI's clip/simple_tokenizer.py; the file's first line is a header).
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + N_MERGES + 2
CONTEXT_LENGTH = 77  # text positions of CLIP's encoder, start and end tokens included
START, END = "<|startoftext|>", "<|endoftext|>"
# Pre-tokenisation of CLIP: the special tokens, English clitics, letter runs, single digits, other symbol runs.
PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
INSTALL_HINT = (
    "CLIP's BPE vocabulary was not found: pip install open_clip_torch (or `pip download open_clip_torch "
    "--no-deps` and pass --clip-vocab path/to/open_clip_torch-*.whl)"
)


def byte_alphabet() -> dict[int, str]:
    """One printable character per byte value: printable Latin-1 bytes stand for themselves, the other 68
    bytes take the code points from 256 up (GPT-2's reversible byte-level alphabet). The dict's order is the
    vocabulary's order: printable bytes first, then the others, which is why 'a</w>' has id 320."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet: dict[int, str] = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in alphabet]
    alphabet.update({b: chr(256 + n) for n, b in enumerate(others)})
    return alphabet


def find_vocab(explicit: str | Path | None = None) -> bytes:
    """The gzip-compressed vocabulary file's bytes, from the first place that has it (see module docstring)."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    elif os.environ.get("DPGBENCH_CLIP_VOCAB"):
        candidates.append(Path(os.environ["DPGBENCH_CLIP_VOCAB"]))
    else:
        spec = importlib.util.find_spec("open_clip")  # finds the folder; does not run open_clip's imports
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(Path(folder) / VOCAB_NAME)
    for path in candidates:
        if path.suffix == ".whl":
            try:
                with zipfile.ZipFile(path) as wheel:
                    return wheel.read(WHEEL_MEMBER)
            except FileNotFoundError:
                raise DpgBenchError(f"{path}: no such file; {INSTALL_HINT}") from None
            except (KeyError, zipfile.BadZipFile):
                raise DpgBenchError(f"{path}: not an open_clip_torch wheel with {WHEEL_MEMBER}") from None
        if path.is_file():
            return path.read_bytes()
        if explicit is not None or os.environ.get("DPGBENCH_CLIP_VOCAB"):
            raise DpgBenchError(f"{path}: no such file; {INSTALL_HINT}")
    raise DpgBenchError(INSTALL_HINT)


class ClipTokenizer:
    """CLIP's byte-level BPE: `encode(text)` gives the ids CLIP's text encoder sees, minus start/end."""

    def __init__(self, vocab_gz: bytes) -> None:
        import regex  # the \p{L} classes of CLIP's pattern; a dependency of the [build] extra

        try:
            lines = gzip.decompress(vocab_gz).decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            raise DpgBenchError(f"the CLIP vocabulary is not a gzip text file like {VOCAB_NAME}") from None
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1] if line.strip()]
        well_formed = sum(len(m) == 2 for m in merges)
        if well_formed != N_MERGES or len(merges) != N_MERGES:
            raise DpgBenchError(
                f"the CLIP vocabulary has {well_formed} well-formed merges, {N_MERGES} expected"
            )
        alphabet = byte_alphabet()
        self._byte_symbol = [alphabet[b] for b in range(256)]
        base = list(alphabet.values())
        symbols = [*base, *(s + "</w>" for s in base), *("".join(m) for m in merges)]
        symbols += [START, END]
        self.ids = {symbol: index for index, symbol in enumerate(symbols)}
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._pattern = regex.compile(PATTERN, regex.IGNORECASE)
        try:
            import ftfy  # CLIP repairs mojibake first; without ftfy clean UTF-8 text counts the same

            self._fix_text: Callable[[str], str] = ftfy.fix_text
            self.uses_ftfy = True
        except ImportError:
            self._fix_text = str
            self.uses_ftfy = False

    @classmethod
    def load(cls, explicit: str | Path | None = None) -> ClipTokenizer:
        return cls(find_vocab(explicit))

    def normalize(self, text: str) -> str:
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self._pattern.findall(self.normalize(text)):
            if piece in (START, END):
                out.append(self.ids[piece])
                continue
            symbols = "".join(self._byte_symbol[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[s] for s in self._merge(symbols))
        return out

    def count(self, text: str) -> int:
        return len(self.encode(text))

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one tokenizer per process; words repeat a lot
    def _merge(self, word: str) -> tuple[str, ...]:
        """Apply the merges in rank order: always the best-ranked adjacent pair, all its occurrences at once."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self._ranks.get(pair, N_MERGES))
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)
