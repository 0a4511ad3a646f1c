"""`ella.attention` and `dpgbench ella attention` on a tiny TSC and the tiny T5 built here.

Checked against torch's own MultiheadAttention weights, with exact normalisation, merged word labels,
a PNG whose cells have the colours of their numbers, a CSV with the same numbers, and one-line errors.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dpgbench import cli_ella  # noqa: E402
from dpgbench.cli import app  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402
from ella import ELLA, CheckpointError, load_tsc  # noqa: E402
from ella.attention import (  # noqa: E402
    DEFAULT_TIMESTEPS,
    DPI,
    attention_over_timesteps,
    draw_heatmap,
    figure_size,
    group_pieces,
    save_heatmap,
    word_labels,
    write_csv,
)
from ella.text_encoder import T5TextEmbedder  # noqa: E402

# Words the tiny sentencepiece model splits into several pieces ("red" -> "▁re" "d"), a comma glued to a
# word, a digit after a bare "▁", and characters it only knows as <unk>.
PROMPT = "a red zebra, giraffe and 4k boxes QUICKLY @home"
STEPS = [999, 500, 1]


def seeded_tsc(input_dim: int = 32) -> ELLA:
    """Three blocks so that 'last', an index and 'mean' differ; every tensor noised (AdaLN starts at 0)."""
    torch.manual_seed(0)
    model = ELLA(
        time_channel=16, time_embed_dim=24, width=32, layers=3, heads=4, num_latents=8, input_dim=input_dim
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tsc_files(tmp_path_factory) -> dict[str, Path]:
    """The same TSC as a released-style single file (heads not recorded) and as a save_pretrained folder."""
    root = tmp_path_factory.mktemp("tsc")
    model = seeded_tsc()
    save_file(model.state_dict(), root / "ella-tiny.safetensors")
    model.save_pretrained(root / "folder")
    return {"file": root / "ella-tiny.safetensors", "folder": root / "folder"}


@pytest.fixture(scope="module")
def tsc(tsc_files) -> ELLA:
    return load_tsc(tsc_files["file"], heads=4)


@pytest.fixture(scope="module")
def embedder(tiny_t5_dir) -> T5TextEmbedder:
    return T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu")  # fixed length 128, as released


@pytest.fixture(scope="module")
def result(tsc, embedder):
    return attention_over_timesteps(tsc, embedder, PROMPT, STEPS)


def reference_mass(tsc: ELLA, embedder: T5TextEmbedder, prompt: str, block: int) -> torch.Tensor:
    """Independent of ella.attention: torch's per-head weights, one timestep per call, words by counting
    the pieces of each whitespace word tokenized alone."""
    module = tsc.connector.perceiver_blocks[block]
    seen: dict = {}
    handle = module.register_forward_pre_hook(lambda m, args: seen.update(args=args))
    features = embedder.encode([prompt])
    rows = []
    try:
        for step in STEPS:
            with torch.no_grad():
                tsc(features.hidden, step)
                text, latents, time_embedding, _ = seen["args"]
                queries = module.ln_1(latents, time_embedding)
                keys = torch.cat([queries, module.ln_2(text, time_embedding)], dim=1)
                _, weights = module.attn(queries, keys, keys, need_weights=True, average_attn_weights=False)
            rows.append(weights[0, :, :, tsc.config["num_latents"] :].double().sum(dim=(0, 1)))
    finally:
        handle.remove()
    per_token = torch.stack(rows)
    columns, start = [], 0
    for word in prompt.split():
        count = len(embedder.tokenizer.tokenize(word))
        columns.append(per_token[:, start : start + count].sum(dim=1))
        start += count
    return torch.stack(columns, dim=1)


# ------------------------------------------------------------------------------------------- library


def test_pieces_group_into_words(embedder):
    pieces = ["▁a", "▁re", "d", "▁", "4", "k", ",", "▁box", "es"]
    assert group_pieces(pieces) == [[0], [1, 2], [3, 4, 5, 6], [7, 8]]
    assert group_pieces(["d", "▁a"]) == [[0], [1]]  # a continuation piece first still makes a word
    # The prompt's own words when the counts agree; decoded pieces when they do not (a truncated prompt).
    assert word_labels("a red 4k, boxes", pieces, group_pieces(pieces), embedder.tokenizer) == [
        "a",
        "red",
        "4k,",
        "boxes",
    ]
    assert word_labels("a red 4k, boxes ok", pieces, group_pieces(pieces), embedder.tokenizer) == [
        "a",
        "red",
        "4k,",
        "boxes",
    ]


def test_matrix_shape_labels_and_numbers(result, tsc, embedder):
    words = PROMPT.split()
    assert result.words == words and result.timesteps == STEPS and result.block == "last block (2)"
    assert result.mass.shape == result.scores.shape == (3, 9) and result.mass.dtype == torch.float64
    assert not result.truncated
    # Merged subwords: each word's pieces spell it (<unk> aside) and several words have more than one.
    for word, pieces in zip(words, result.pieces, strict=True):
        if "<unk>" not in pieces:
            assert "".join(pieces).removeprefix("▁") == word
    assert result.pieces[1] == ["▁re", "d"] and sum(len(p) > 1 for p in result.pieces) >= 6
    assert ["▁", "<unk>"] in result.pieces  # QUICKLY: unknown to the tiny vocabulary, still a column
    # The same numbers as torch's own attention weights, computed one timestep at a time.
    torch.testing.assert_close(result.mass, reference_mass(tsc, embedder, PROMPT, -1), rtol=1e-5, atol=1e-7)


def test_every_column_peaks_at_exactly_one(result):
    assert torch.equal(result.scores.amax(dim=0), torch.ones(9, dtype=torch.float64))
    assert torch.equal(result.scores, result.mass / result.mass.amax(dim=0))
    assert result.scores.min() > 0
    # The timestep matters: no word has the same attention at every timestep.
    assert (result.scores.amin(dim=0) < 0.99).all()


def test_outputs_bit_identical_with_and_without_capture(result, tsc, embedder):
    features = embedder.encode([PROMPT])
    with torch.no_grad():
        plain = tsc(features.hidden.expand(3, -1, -1), torch.tensor(STEPS))
    assert torch.equal(result.outputs, plain)
    assert all(block.attention_sink is None for block in tsc.connector.perceiver_blocks)


def test_block_choice(tsc, embedder, result):
    by_index = [attention_over_timesteps(tsc, embedder, PROMPT, STEPS, block=i) for i in range(3)]
    assert torch.equal(by_index[2].mass, result.mass) and by_index[0].block == "block 0"
    assert torch.equal(
        attention_over_timesteps(tsc, embedder, PROMPT, STEPS, block=-3).mass, by_index[0].mass
    )
    torch.testing.assert_close(
        by_index[0].mass, reference_mass(tsc, embedder, PROMPT, 0), rtol=1e-5, atol=1e-7
    )
    assert (by_index[0].mass - by_index[2].mass).abs().max() > 1e-2
    mean = attention_over_timesteps(tsc, embedder, PROMPT, STEPS, block="mean")
    assert mean.block == "mean of 3 blocks"
    torch.testing.assert_close(mean.mass, sum(r.mass for r in by_index) / 3, rtol=1e-12, atol=0)
    assert torch.equal(mean.scores.amax(dim=0), torch.ones(9, dtype=torch.float64))
    for bad, message in [
        (3, "block 3: this TSC has 3 blocks, use 0..2, last or mean"),
        ("first", "block 'first': use last, mean or an index 0..2"),
    ]:
        with pytest.raises(ValueError) as caught:
            attention_over_timesteps(tsc, embedder, PROMPT, STEPS, block=bad)
        assert str(caught.value) == message


def test_flexible_length_hides_the_padding(tsc, tiny_t5_dir, result):
    flexible = T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu", max_length=None)
    masked = attention_over_timesteps(tsc, flexible, PROMPT, STEPS)
    assert masked.words == result.words
    # One prompt at flexible length has no padding at all: torch's weights on the bare tokens agree.
    torch.testing.assert_close(masked.mass, reference_mass(tsc, flexible, PROMPT, -1), rtol=1e-5, atol=1e-7)
    # At 128 tokens the released model also attends to 100-odd padding features, which changes the numbers.
    assert (masked.mass - result.mass).abs().max() > 0.1
    assert torch.equal(masked.scores.amax(dim=0), torch.ones(9, dtype=torch.float64))


def test_truncated_prompt_is_flagged_and_labelled_from_pieces(tsc, tiny_t5_dir):
    short = T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu", max_length=6)
    cut = attention_over_timesteps(tsc, short, PROMPT, STEPS)
    # 6 tokens = 5 pieces + </s>: "▁a" "▁re" "d" "▁" "z" -> the TSC only saw "a", "red" and "z".
    assert cut.truncated and cut.words == ["a", "red", "z"] and cut.scores.shape == (3, 3)
    # Cut right after a bare "▁": the piece itself labels the column rather than an empty string.
    shorter = T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu", max_length=5)
    assert attention_over_timesteps(tsc, shorter, PROMPT, STEPS).words == ["a", "red", "▁"]


def test_text_width_must_fit_the_tsc(embedder):
    with pytest.raises(CheckpointError) as caught:
        attention_over_timesteps(seeded_tsc(input_dim=20), embedder, PROMPT, STEPS)
    assert str(caught.value) == (
        "the text encoder makes 32-wide features but the TSC takes 20: use the T5 the TSC was trained with "
        "(google/flan-t5-xl, 2048, for the released ELLA)"
    )


def test_csv_holds_the_same_numbers(result, tmp_path):
    path = write_csv(result, tmp_path / "numbers.csv")
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows[0] == ["timestep", *PROMPT.split()]  # "zebra," is quoted and reads back whole
    assert [int(row[0]) for row in rows[1:]] == STEPS
    assert [[float(x) for x in row[1:]] for row in rows[1:]] == result.scores.tolist()


def test_heatmap_png_cells_have_the_colours_of_their_numbers(result, tmp_path):
    from matplotlib import colormaps

    path = save_heatmap(result, tmp_path / "fig.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = image.convert("RGB")
    width, height = figure_size(3, 9)
    assert pixels.size == (round(width * DPI), round(height * DPI))
    # Where matplotlib puts each cell: data (column, row) -> display pixels (origin bottom left).
    figure = draw_heatmap(result)
    figure.savefig(io.BytesIO(), format="png")  # lays the figure out exactly as save_heatmap did
    ax = figure.axes[0]
    viridis = colormaps["viridis"]
    for row in range(3):
        for col in range(9):
            x, y = ax.transData.transform((col, row))
            seen = pixels.getpixel((int(x), pixels.size[1] - 1 - int(y)))
            expected = [round(255 * c) for c in viridis(float(result.scores[row, col]))[:3]]
            assert max(abs(a - b) for a, b in zip(seen, expected, strict=True)) <= 2, (
                row,
                col,
                seen,
                expected,
            )


# ------------------------------------------------------------------------------------------- command


def run(args: list[str]):
    return CliRunner().invoke(app, ["ella", "attention", *args])


def read_csv_numbers(path: Path) -> tuple[list[str], list[int], list[list[float]]]:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return rows[0][1:], [int(r[0]) for r in rows[1:]], [[float(x) for x in r[1:]] for r in rows[1:]]


def test_command_with_a_single_file_checkpoint(tsc_files, tiny_t5_dir, tsc, embedder, tmp_path):
    out = tmp_path / "figs" / "fig.png"
    args = [PROMPT, "--checkpoint", str(tsc_files["file"]), "--heads", "4", "--t5", str(tiny_t5_dir)]
    outcome = run([*args, "--timesteps", "999, 500,1", "-o", str(out)])
    assert outcome.exit_code == 0, (outcome.output, outcome.exception)
    assert (
        f"wrote {out} and {out.with_suffix('.csv')}: 3 timesteps x 9 words, last block (2)" in outcome.output
    )
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == tuple(round(side * DPI) for side in figure_size(3, 9))
    words, steps, numbers = read_csv_numbers(out.with_suffix(".csv"))
    expected = attention_over_timesteps(tsc, embedder, PROMPT, STEPS)
    assert words == PROMPT.split() and steps == STEPS and numbers == expected.scores.tolist()


def test_command_with_a_folder_checkpoint_mean_and_flexible_length(tsc_files, tiny_t5_dir, tsc, tmp_path):
    out = tmp_path / "fig.png"
    outcome = run(
        [PROMPT, "--checkpoint", str(tsc_files["folder"]), "--t5", str(tiny_t5_dir), "--block", "mean"]
        + ["--text-length", "none", "-o", str(out)]
    )
    assert outcome.exit_code == 0, (outcome.output, outcome.exception)
    words, steps, numbers = read_csv_numbers(out.with_suffix(".csv"))
    flexible = T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu", max_length=None)
    expected = attention_over_timesteps(tsc, flexible, PROMPT, list(DEFAULT_TIMESTEPS), block="mean")
    assert (
        words == PROMPT.split() and steps == list(DEFAULT_TIMESTEPS) and numbers == expected.scores.tolist()
    )
    assert all(max(column) == 1.0 for column in zip(*numbers, strict=True))


def test_command_warns_about_a_truncated_prompt(tsc_files, tiny_t5_dir, tmp_path):
    outcome = run(
        [PROMPT, "--checkpoint", str(tsc_files["folder"]), "--t5", str(tiny_t5_dir), "--text-length", "6"]
        + ["--timesteps", "999,1", "-o", str(tmp_path / "cut.svg")]
    )
    assert outcome.exit_code == 0, (outcome.output, outcome.exception)
    assert "the prompt is longer than 6 T5 tokens" in outcome.output
    assert (tmp_path / "cut.svg").read_text().startswith("<?xml")
    assert read_csv_numbers(tmp_path / "cut.csv")[0] == ["a", "red", "z"]


def test_command_errors_are_one_line_with_the_fix(tsc_files, tiny_t5_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # No hub here: fail at once instead of five retries (the user's machine would download).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    file, folder, t5, png = (
        str(tsc_files["file"]),
        str(tsc_files["folder"]),
        str(tiny_t5_dir),
        str(tmp_path / "f.png"),
    )
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    blocker = tmp_path / "a-file"  # -o inside a regular file: the folder cannot be made
    blocker.write_text("x")
    not_t5 = tmp_path / "not-t5"  # a T5-configured folder whose weights are another model's (random layers)
    from transformers import AutoTokenizer, T5EncoderModel

    from ella.llm4gen import RankGenT5Encoder

    RankGenT5Encoder(T5EncoderModel.from_pretrained(t5).config).save_pretrained(not_t5)
    AutoTokenizer.from_pretrained(t5).save_pretrained(not_t5)
    cases = [
        (
            ["--timesteps", "999,abc", "-o", png],
            "--timesteps 999,abc: 'abc' is not a timestep; give integers 0..999 separated by commas, "
            "e.g. 999,800,600,400,200,1",
        ),
        (["--timesteps", "1000", "-o", png], "--timesteps 1000: '1000' is not a timestep;"),
        (["--block", "first", "-o", png], "--block first: use last, mean, or a block index (0 = first)"),
        (["--text-length", "0", "-o", png], "--text-length 0: use 128 (as released) or none"),
        (["-o", str(tmp_path / "f.jpg")], f"-o {tmp_path / 'f.jpg'}: the heatmap is written by suffix;"),
        (
            ["--checkpoint", folder, "--t5", t5, "--block", "5", "-o", png],
            "--block 5: this TSC has 3 blocks; use 0..2, last or mean",
        ),
        (
            ["--checkpoint", file, "--heads", "3", "--t5", t5, "-o", png],
            f"--checkpoint: {file}: cannot build ELLA from its config (TSC width 32 is not divisible by heads=3)",
        ),
        (
            ["--checkpoint", str(tmp_path / "nope.safetensors"), "-o", png],
            f"--checkpoint: checkpoint '{tmp_path / 'nope.safetensors'}' not found",
        ),
        (
            ["-o", png],
            "--checkpoint: could not fetch ella-sd1.5-tsc-t5xl.safetensors from the hub repo QQGYLab/ELLA "
            "(LocalEntryNotFoundError); download it and pass the local path instead",
        ),
        (
            ["--checkpoint", folder, "--t5", str(tmp_path), "-o", png],
            f"--t5 {tmp_path}: cannot load the T5 encoder",
        ),
        (["--device", "gpu", "-o", png], "--device gpu: not a device name; use cpu, cuda or cuda:N"),
        (
            ["--device", "cuda:7", "-o", png],
            "--device cuda:7: no such device on this machine; use --device cpu",
        ),
        (
            ["--checkpoint", str(junk), "-o", png],
            f"--checkpoint: {junk} is not a readable torch checkpoint (",
        ),
        (
            ["--checkpoint", folder, "--t5", str(not_t5), "-o", png],
            f"--t5 {not_t5}: cannot load the T5 encoder ({not_t5} lacks weights of T5EncoderModel: missing keys",
        ),
        (
            ["--checkpoint", folder, "--t5", t5, "-o", str(blocker / "f.png")],
            f"-o {blocker / 'f.png'}: cannot write there (",
        ),
    ]
    for args, message in cases:
        outcome = run([PROMPT, *args])
        assert outcome.exit_code == 1 and isinstance(outcome.exception, DpgBenchError), (args, outcome.output)
        assert str(outcome.exception).startswith(message), (args, str(outcome.exception))
        assert "\n" not in str(outcome.exception)
    outcome = CliRunner().invoke(app, ["ella", "attention", "  ", "-o", png])
    assert outcome.exit_code == 1 and str(outcome.exception) == "PROMPT is empty: pass the prompt in quotes"
    assert not (tmp_path / "f.png").exists()
    # A T5 whose width does not fit the TSC: named, with the fix.
    narrow = tmp_path / "narrow"
    seeded_tsc(input_dim=20).save_pretrained(narrow)
    outcome = run([PROMPT, "--checkpoint", str(narrow), "--t5", t5, "-o", png])
    assert outcome.exit_code == 1
    assert str(outcome.exception).startswith(
        f"--t5 {t5}: the text encoder makes 32-wide features but the TSC takes 20"
    )


def test_missing_matplotlib_is_named_with_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    outcome = run([PROMPT, "-o", str(tmp_path / "f.png")])
    assert outcome.exit_code == 1
    assert (
        str(outcome.exception) == "`dpgbench ella attention` needs matplotlib: pip install 'dpgbench[report]'"
    )


def test_cli_defaults_agree_with_the_ella_package():
    from ella.checkpoint import ELLA_REPO, ELLA_SD15_FILE
    from ella.text_encoder import FLAN_T5_XL

    assert (cli_ella.ELLA_REPO, cli_ella.ELLA_SD15_FILE, cli_ella.FLAN_T5_XL) == (
        ELLA_REPO,
        ELLA_SD15_FILE,
        FLAN_T5_XL,
    )
    assert cli_ella.parse_timesteps(cli_ella.DEFAULT_TIMESTEPS) == list(DEFAULT_TIMESTEPS)


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from dpgbench.cli import main\n"
        "for args in (['ella', '--help'], ['ella', 'attention', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (args, exc.code)\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout and "--timesteps" in result.stdout
