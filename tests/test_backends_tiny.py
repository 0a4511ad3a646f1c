"""The tiny-model builders of dpgbench/tiny_models.py: tokenizers, T5, and four diffusers pipelines reloaded from disk."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from dpgbench import tiny_models as tiny  # noqa: E402


def weights_sha(model) -> str:
    """sha256 over (name, shape, float32 bytes) of every tensor, in name order: a seeded build is stable."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_clip_tokenizer_vocab_and_ids(tiny_clip_tokenizer_dir):
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny_clip_tokenizer_dir)
    # 256 byte symbols + 256 with </w> + 31 merge results + 2 specials.
    assert len(tokenizer) == 545
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.model_max_length) == (543, 544, 77)
    ids = tokenizer("a red cat on the blue chair, 4k!").input_ids
    assert ids == [543, 320, 515, 517, 527, 513, 520, 538, 267, 275, 330, 256, 544]
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "red</w>", "cat</w>"]


def test_t5_tokenizer_is_reproducible_and_slow_equals_fast(tiny_t5_dir, tmp_path):
    spiece = (tiny_t5_dir / "spiece.model").read_bytes()
    assert hashlib.sha256(spiece).hexdigest()[:16] == "930ad315ac251e39"
    again = tiny.t5_tokenizer(tmp_path / "again")
    assert (again / "spiece.model").read_bytes() == spiece
    text = "a red cat sitting on a blue chair"
    golden = [5, 75, 7, 48, 34, 31, 60, 63, 22, 3, 32, 5, 49, 105, 48, 69, 15, 100, 1]
    fast = transformers.AutoTokenizer.from_pretrained(tiny_t5_dir)
    slow = transformers.T5Tokenizer.from_pretrained(tiny_t5_dir)
    assert type(fast).__name__ == "T5TokenizerFast"
    assert fast(text).input_ids == slow(text).input_ids == golden
    assert (fast.pad_token_id, fast.eos_token_id, fast.unk_token_id, fast.bos_token_id) == (0, 1, 2, None)
    assert len(fast) == 113


def test_t5_encoder_loads_with_seeded_weights(tiny_t5_dir):
    encoder = transformers.T5EncoderModel.from_pretrained(tiny_t5_dir)
    assert weights_sha(encoder) == weights_sha(tiny.tiny_t5_encoder(d_model=32, vocab_size=113))
    tokens = transformers.AutoTokenizer.from_pretrained(tiny_t5_dir)(["a red cat"], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state
    assert tuple(hidden.shape) == (1, tokens.input_ids.shape[1], 32)


PIPELINES = {
    # fixture name: (pipeline class, scheduler class, denoiser attribute, extra call kwargs)
    "tiny_sd15_dir": ("StableDiffusionPipeline", "PNDMScheduler", "unet", {}),
    "tiny_sd21_dir": ("StableDiffusionPipeline", "DDIMScheduler", "unet", {}),
    "tiny_sdxl_dir": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "unet", {}),
    "tiny_sd3_dir": ("StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", "transformer", {}),
    "tiny_pixart_sigma_dir": (
        "PixArtSigmaPipeline",
        "DPMSolverMultistepScheduler",
        "transformer",
        {"use_resolution_binning": False},
    ),
    "tiny_pixart_dir": (
        "PixArtAlphaPipeline",
        "DPMSolverMultistepScheduler",
        "transformer",
        {"use_resolution_binning": False},
    ),
}


@pytest.mark.parametrize("fixture", list(PIPELINES))
def test_tiny_pipeline_reloads_and_generates_fast_and_deterministically(fixture, request):
    pipeline_class, scheduler_class, denoiser, kwargs = PIPELINES[fixture]
    folder = request.getfixturevalue(fixture)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == pipeline_class
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == pipeline_class
    assert type(pipe.scheduler).__name__ == scheduler_class
    assert sum(p.numel() for p in getattr(pipe, denoiser).parameters()) < 300_000

    def four_images():
        generators = [torch.Generator().manual_seed(seed) for seed in (1, 2, 3, 4)]
        out = pipe(
            "a red cat",
            num_images_per_prompt=4,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=generators,
            **kwargs,
        )
        return [hashlib.sha256(image.tobytes()).hexdigest() for image in out.images], out.images

    first, images = four_images()  # the first call also pays one-off kernel set-up
    assert [image.size for image in images] == [(64, 64)] * 4
    assert len(set(first)) == 4  # different seeds, different pictures
    timings = []
    for _ in range(3):  # best of three: robust to a machine shared with other jobs
        start = time.perf_counter()
        assert four_images()[0] == first  # same seeds, same bytes
        timings.append(time.perf_counter() - start)
    # ~0.05 s on an idle 2-core machine.
    assert min(timings) < 2.0, f"4 tiny images took {min(timings):.2f}s at best"
