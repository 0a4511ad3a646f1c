"""The `dpgbench ella` commands: tools around the ELLA model package (`ella/`).

`ella attention` draws the paper's Figure 8 for a prompt and a TSC checkpoint. Thin shells over
`ella.attention`; torch, transformers and matplotlib are imported only when a command runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dpgbench.errors import DpgBenchError
from dpgbench.terminal import err_console

if TYPE_CHECKING:
    from ella import ELLA
    from ella.text_encoder import T5TextEmbedder

ella_app = typer.Typer(
    help="ELLA's Timestep-Aware Semantic Connector: train it, look inside it.", no_args_is_help=True
)

# The same defaults as `ella.checkpoint` / `ella.text_encoder` / `ella.attention` (a test checks they agree);
# spelled out here so that `dpgbench --help` does not import torch.
ELLA_REPO = "QQGYLab/ELLA"
ELLA_SD15_FILE = "ella-sd1.5-tsc-t5xl.safetensors"
FLAN_T5_XL = "google/flan-t5-xl"
DEFAULT_TIMESTEPS = "999,800,600,400,200,1"
NUM_TRAIN_TIMESTEPS = 1000  # Stable Diffusion's schedule: timesteps 0..999
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def parse_timesteps(text: str) -> list[int]:
    """'999,800,1' -> [999, 800, 1]; one line naming the bad item otherwise."""
    steps = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) >= NUM_TRAIN_TIMESTEPS:
            raise DpgBenchError(
                f"--timesteps {text}: '{item}' is not a timestep; give integers 0..{NUM_TRAIN_TIMESTEPS - 1} "
                "separated by commas, e.g. 999,800,600,400,200,1"
            )
        steps.append(int(item))
    return steps


def parse_block(text: str) -> int | str:
    if text in ("last", "mean"):
        return text
    try:
        return int(text)
    except ValueError:
        raise DpgBenchError(f"--block {text}: use last, mean, or a block index (0 = first)") from None


def parse_text_length(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise DpgBenchError(f"--text-length {text}: use 128 (as released) or none (as long as the prompt)")
    return int(text)


def parse_device(text: str) -> Any:
    """'cpu', 'cuda', 'cuda:1', 'mps' -> a torch.device that exists here; one line otherwise."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise DpgBenchError(f"--device {text}: not a device name; use cpu, cuda or cuda:N") from None
    usable = {
        "cpu": True,
        "cuda": torch.cuda.is_available()
        and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not usable:
        raise DpgBenchError(f"--device {text}: no such device on this machine; use --device cpu")
    return device


def load_models(
    checkpoint: str,
    checkpoint_file: str,
    revision: str,
    heads: int,
    t5: str,
    t5_revision: str,
    text_length: int | None,
    device: str | None,
) -> tuple[ELLA, T5TextEmbedder]:
    """The TSC (strict keys) and the T5 encoder, with one-line errors naming the option to fix."""
    from ella import CheckpointError, load_tsc
    from ella.text_encoder import T5TextEmbedder, default_device, default_dtype

    target = default_device() if device is None else parse_device(device)
    dtype = default_dtype(target)
    try:
        tsc = load_tsc(
            checkpoint, checkpoint_file, heads=heads, revision=revision, device=target, dtype=dtype
        )
    except CheckpointError as exc:
        raise DpgBenchError(f"--checkpoint: {exc}") from exc
    try:
        embedder = T5TextEmbedder.from_pretrained(
            t5, max_length=text_length, device=target, dtype=dtype, revision=t5_revision
        )
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DpgBenchError(
            f"--t5 {t5}: cannot load the T5 encoder ({reason}); download it and pass the folder"
        ) from exc
    return tsc, embedder


# ------------------------------------------------------------------------------------------- attention


@ella_app.command("attention")
def attention_cmd(
    prompt: Annotated[str, typer.Argument(help="the prompt, quoted")],
    checkpoint: Annotated[
        str,
        typer.Option(help="TSC: hub repo id (with --checkpoint-file), a .safetensors/.pth file, or a folder"),
    ] = ELLA_REPO,
    checkpoint_file: Annotated[str, typer.Option(help="file inside the hub repo")] = ELLA_SD15_FILE,
    checkpoint_revision: Annotated[str, typer.Option(help="hub branch, tag or commit of the TSC")] = "main",
    heads: Annotated[int, typer.Option(help="TSC attention heads (single files do not record it)")] = 8,
    t5: Annotated[
        str, typer.Option(help="T5 encoder: hub id or local folder (weights + tokenizer)")
    ] = FLAN_T5_XL,
    t5_revision: Annotated[str, typer.Option(help="hub branch, tag or commit of the T5")] = "main",
    text_length: Annotated[
        str,
        typer.Option(help="T5 tokens: 128 as the released TSC was trained, or none = the prompt's length"),
    ] = "128",
    timesteps: Annotated[
        str, typer.Option(help="comma-separated, one heatmap row each (0..999, high noise first)")
    ] = DEFAULT_TIMESTEPS,
    block: Annotated[
        str, typer.Option(help="whose attention: last, mean (over blocks), or an index")
    ] = "last",
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available)")] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="heatmap (.png, .pdf or .svg); the CSV goes beside it")
    ] = Path("ella-attention.png"),
) -> None:
    """Attention of the TSC's queries to each prompt word across timesteps (ELLA paper, Figure 8).

    Runs only the TSC (no UNet): T5 once, then the TSC at every timestep. Attention is summed over queries and heads, subword pieces are merged into words, and each word is divided by its maximum over the timesteps, so every column of the heatmap peaks at 1.
    """
    # 1. Check every option before loading anything large.
    steps = parse_timesteps(timesteps)
    which = parse_block(block)
    length = parse_text_length(text_length)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise DpgBenchError(
            f"-o {out}: the heatmap is written by suffix; use one of {', '.join(FIGURE_SUFFIXES)}"
        )
    if not prompt.strip():
        raise DpgBenchError("PROMPT is empty: pass the prompt in quotes")
    for module, extra in (("torch", "generate"), ("transformers", "generate"), ("matplotlib", "report")):
        if importlib.util.find_spec(module) is None:
            raise DpgBenchError(f"`dpgbench ella attention` needs {module}: pip install 'dpgbench[{extra}]'")
    if device is not None:
        parse_device(device)  # before loading anything
    # 2. Models, then the attention (one-line errors for a block out of range or a mismatched T5).
    from ella import CheckpointError
    from ella.attention import attention_over_timesteps, resolve_block, save_heatmap, write_csv

    err_console.print(f"loading the TSC ({checkpoint}) and T5 ({t5})", highlight=False)
    tsc, embedder = load_models(
        checkpoint, checkpoint_file, checkpoint_revision, heads, t5, t5_revision, length, device
    )
    num_blocks = len(tsc.connector.perceiver_blocks)
    try:
        resolve_block(which, num_blocks)
    except ValueError:
        raise DpgBenchError(
            f"--block {block}: this TSC has {num_blocks} blocks; use 0..{num_blocks - 1}, last or mean"
        ) from None
    try:
        result = attention_over_timesteps(tsc, embedder, prompt, steps, which)
    except CheckpointError as exc:  # the T5 width does not fit the TSC
        raise DpgBenchError(f"--t5 {t5}: {exc}") from exc
    if result.truncated:
        err_console.print(
            f"[yellow]warning[/]: the prompt is longer than {length} T5 tokens; the TSC sees (and the "
            "figure shows) only the first ones. --text-length none shows all of it",
            highlight=False,
        )
    # 3. Heatmap and its numbers.
    try:
        save_heatmap(result, out)
        table = write_csv(result, out.with_suffix(".csv"))
    except OSError as exc:
        raise DpgBenchError(
            f"-o {out}: cannot write there ({exc.strerror or exc}); choose another path"
        ) from None
    err_console.print(
        f"wrote {out} and {table}: {len(result.timesteps)} timesteps x {len(result.words)} words, {result.block}",
        highlight=False,
    )


# ------------------------------------------------------------------------------------------- train


def parse_train_flags(args: list[str]) -> dict[str, str]:
    """['--max-steps', '10', '--resume=latest'] -> {'max_steps': '10', 'resume': 'latest'}."""
    pairs: dict[str, str] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--"):
            raise DpgBenchError(f"ella train: '{flag}' is not an option; write options as --name value")
        name, sep, value = flag[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise DpgBenchError(f"ella train: --{name} needs a value, e.g. --{name} VALUE")
            value = args[i + 1]
            i += 1
        pairs[name.replace("-", "_")] = value
        i += 1
    return pairs


@ella_app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train_cmd(ctx: typer.Context) -> None:
    """Train an ELLA TSC (frozen UNet, VAE, T5). Options: those of `python -m ella.train --help`
    (required: --base, --data, --output-dir); several GPUs: `accelerate launch -m ella.train ...`."""
    if not ctx.args or ctx.args[0] in ("--help", "-h"):
        from ella.train import parser

        parser().print_help()
        return
    from dpgbench import registry

    try:
        from ella.train import TrainConfig, train
    except ImportError as exc:
        raise DpgBenchError(f"ella train needs {exc.name}: pip install 'dpgbench[generate]'") from None
    values = parse_train_flags(list(ctx.args))
    missing = [name for name in ("base", "data", "output_dir") if name not in values]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise DpgBenchError(f"ella train: {flags} required (see `dpgbench ella train --help`)")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean --{close[0].replace('_', '-')}?" if close else ""
            flag = name.replace("_", "-")
            raise DpgBenchError(f"ella train has no option --{flag}.{hint} See `dpgbench ella train --help`")
    config = registry.parse_config(TrainConfig, values, kind="ella train", name="train")
    from dpgbench.terminal import progress_bar

    with progress_bar("train TSC", config.max_steps, "steps") as advance:
        try:
            final = train(config, on_step=lambda step, loss: advance(1))
        except ValueError as exc:  # TrainDataError, CheckpointError: one line with the fix
            raise DpgBenchError(str(exc)) from None
    err_console.print(f"saved {final}; the step log is in {Path(config.output_dir) / 'train_log.jsonl'}")


def register(app: typer.Typer) -> None:
    app.add_typer(ella_app, name="ella")
