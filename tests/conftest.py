"""Shared pytest fixtures. Each section names its owner; add yours as a new section.

Fixtures that build models import torch lazily, so tests of the torch-free core never pay for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------------------
# Tiny real models (owner: generation backends, issue 3). Built once per session, a few MB each, from
# the builders in dpgbench/tiny_models.py; pass the folder wherever a hub id or local checkpoint is accepted.


@pytest.fixture(scope="session")
def tiny_clip_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """T5 tokenizer + T5EncoderModel (d_model 32) in one folder."""
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_t5(tmp_path_factory.mktemp("t5"), d_model=32)


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_sd15(tmp_path_factory.mktemp("sd15"))


@pytest.fixture(scope="session")
def tiny_sd21_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_sd21(tmp_path_factory.mktemp("sd21"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="session")
def tiny_pixart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_pixart(tmp_path_factory.mktemp("pixart"))


@pytest.fixture(scope="session")
def tiny_pixart_sigma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_pixart_sigma(tmp_path_factory.mktemp("pixart_sigma"))


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpgbench import tiny_models as tiny

    return tiny.save_tiny_sd3(tmp_path_factory.mktemp("sd3"))


# --------------------------------------------------------------------------------------------------
# Core (owner: core toolkit, issue 2): the shared data folder beside the checkout.

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "dsg").is_dir():
        pytest.skip(f"{SHARED} is absent: the real DSG/DPG-Bench data lives beside the checkout (CI has it)")
    return SHARED


# --------------------------------------------------------------------------------------------------
# Tiny mPLUG VQA folders (owner: judges, issue 5), built by tests/tiny_mplug.py in modelscope's layout
# (~16 MB each). "free": unbiased, multi-word answers; "yes"/"no": always that word; "yesno": one of the
# two, decided by image and question. Pass the folder as `--judge-arg model=DIR` to the mplug-large judge.


@pytest.fixture(scope="session")
def tiny_mplug_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import tiny_mplug

    root = tmp_path_factory.mktemp("mplug")
    prefer = {"free": (), "yes": ("yes",), "no": ("no",), "yesno": ("yes", "no")}
    return {name: tiny_mplug.build_mplug(root / name, prefer=words) for name, words in prefer.items()}


# --------------------------------------------------------------------------------------------------
# Scored run folders for the report commands (owner: reports, issue 6): the dummy backend and judge on the
# shipped demo prompts, made through the real CLI in about a second. Tests must not modify them (copy
# one with shutil.copytree first). "a": default drawings; "b"/"c": fewer shapes (other images, so other
# answers from the same judge); "salted": A's images judged by another judge setting; "half": the first 6
# prompts only; "unscored": images but no judge yet.


def _report_cli(args: list[str]) -> None:
    from typer.testing import CliRunner

    from dpgbench.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_runs")
    specs: dict[str, tuple[list[str], list[str] | None]] = {
        "a": ([], []),
        "b": (["--backend-arg", "shapes=3"], []),
        "c": (["--backend-arg", "shapes=2"], []),
        "salted": ([], ["--judge-arg", "salt=other"]),
        "half": (["--limit", "6"], []),
        "unscored": ([], None),
    }
    runs = {}
    for name, (generate_args, judge_args) in specs.items():
        out = root / name
        _report_cli(
            ["generate", "--backend", "dummy", "--prompts", "demo", "--out", str(out), *generate_args]
        )
        if judge_args is not None:
            _report_cli(["score", str(out), "--judge", "dummy", *judge_args])
        runs[name] = out
    return runs
