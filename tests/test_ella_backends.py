"""Backends ella-sd15, ella-sdxl and llm4gen-sd15 end to end on tiny real models built here."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from cli_runner import invoke  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from dpgbench import tiny_models as tiny  # noqa: E402
from dpgbench.backends import BACKENDS  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402
from dpgbench.registry import create  # noqa: E402
from ella import ELLA, LLM4GENAdapter, RankGenEmbedder, RankGenT5Encoder  # noqa: E402

PROMPT = "a red cat sitting on a blue chair"
FAST = {"steps": "2", "width": "64", "height": "64", "batch_size": "2", "heads": "4"}


def seeded_tsc(**kwargs):
    torch.manual_seed(0)
    model = ELLA(
        time_channel=16, time_embed_dim=24, width=32, layers=2, heads=4, num_latents=8, input_dim=32, **kwargs
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def tsc_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tsc") / "ella-tiny.safetensors"
    save_file(seeded_tsc().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def sdxl_tsc_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tsc_xl") / "tsc"
    seeded_tsc(output_dim=64, pooled_dim=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ella_sd15(tiny_sd15_dir, tiny_t5_dir, tsc_file):
    args = FAST | {"model": str(tiny_sd15_dir), "checkpoint": str(tsc_file), "text_encoder": str(tiny_t5_dir)}
    return create(BACKENDS, "ella-sd15", "backend", args | {"text_length": "32"})


def pixels(images):
    return np.stack([np.asarray(image) for image in images])


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_ella_sd15_images_t5_once_and_provenance(ella_sd15, tsc_file):
    calls, handle = count_calls(ella_sd15.embedder.model)
    try:
        three = ella_sd15.generate(PROMPT, [1, 2, 3])
        alone = ella_sd15.generate(PROMPT, [3])
    finally:
        handle.remove()
    assert len(calls) == 2  # one T5 call per generate(prompt, seeds), prompt and negative together
    assert [image.size for image in three] == [(64, 64)] * 3
    # Padded fixed-shape batches: the seed-3 image is the same bytes alone or after two others.
    assert np.array_equal(pixels(three)[2], pixels(alone)[0])
    assert not np.array_equal(pixels(three)[0], pixels(three)[1])
    info = ella_sd15.info()
    assert info["pipeline"] == "StableDiffusionPipeline" and info["components"]["unet"] == "ELLAProxyUNet"
    assert info["components"].get("text_encoder") is None  # CLIP is not loaded
    assert (
        info["tsc"]["sha256"] == hashlib.sha256(b"ella-tiny.safetensors" + tsc_file.read_bytes()).hexdigest()
    )
    assert info["tsc"]["config"]["num_latents"] == 8 and info["tsc"]["config"]["heads"] == 4
    assert info["text_encoder"]["length"] == 32 and info["text_encoder_calls_per_prompt"] == 1
    assert info["scheduler"] == "DPMSolverMultistepScheduler" and info["guidance"] == 12.0


def test_model_card_defaults():
    from dpgbench.backends.ella import EllaSD15Config, EllaSDXLConfig
    from dpgbench.backends.llm4gen import LLM4GENConfig

    sd15 = EllaSD15Config()
    assert (sd15.model, sd15.checkpoint, sd15.checkpoint_file) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "QQGYLab/ELLA",
        "ella-sd1.5-tsc-t5xl.safetensors",
    )
    assert (sd15.scheduler, sd15.steps, sd15.guidance, sd15.width, sd15.text_length) == (
        "DPMSolverMultistepScheduler",
        50,
        12.0,
        512,
        128,
    )
    assert (sd15.text_encoder, EllaSDXLConfig().checkpoint, EllaSDXLConfig().width) == (
        "google/flan-t5-xl",
        "",
        1024,
    )
    llm4gen = LLM4GENConfig()
    assert (llm4gen.unet, llm4gen.unet_subfolder, llm4gen.adapter_file, llm4gen.llm, llm4gen.llm_tokens) == (
        "Shui-VL/LLM4GEN-models",
        "unet",
        "projector.pth",
        "kalpeshk2011/rankgen-t5-xl-all",
        256,
    )


def test_flexible_length_changes_the_images(ella_sd15, tiny_sd15_dir, tiny_t5_dir, tsc_file):
    args = FAST | {"model": str(tiny_sd15_dir), "checkpoint": str(tsc_file), "text_encoder": str(tiny_t5_dir)}
    flexible = create(BACKENDS, "ella-sd15", "backend", args | {"text_length": "none"})
    assert flexible.info()["text_encoder"]["length"] == "flexible"
    assert not np.array_equal(pixels(flexible.generate(PROMPT, [4])), pixels(ella_sd15.generate(PROMPT, [4])))


def test_ella_sdxl_with_a_user_tsc(tiny_sdxl_dir, tiny_t5_dir, sdxl_tsc_dir):
    args = FAST | {
        "model": str(tiny_sdxl_dir),
        "checkpoint": str(sdxl_tsc_dir),
        "text_encoder": str(tiny_t5_dir),
    }
    backend = create(BACKENDS, "ella-sdxl", "backend", args)
    seen = []
    handle = backend.pipe.unet.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["text_embeds"]), with_kwargs=True
    )
    try:
        images = backend.generate(PROMPT, [1, 2])
    finally:
        handle.remove()
    assert [image.size for image in images] == [(64, 64)] * 2
    assert seen[0].shape == (4, 32) and seen[0].abs().sum() > 0  # the TSC's pooled output, not the zeros
    assert backend.info()["tsc"]["config"]["pooled_dim"] == 32


def test_bad_setups_name_the_fix(tiny_sd15_dir, tiny_sdxl_dir, tiny_t5_dir, tsc_file, tmp_path):
    base = FAST | {"text_encoder": str(tiny_t5_dir)}
    with pytest.raises(DpgBenchError, match="needs a TSC: --backend-arg checkpoint="):
        create(BACKENDS, "ella-sdxl", "backend", base | {"model": str(tiny_sdxl_dir)})
    with pytest.raises(DpgBenchError, match="32-wide tokens but an SDXL UNet's cross_attention_dim is 64"):
        create(
            BACKENDS,
            "ella-sdxl",
            "backend",
            base | {"model": str(tiny_sdxl_dir), "checkpoint": str(tsc_file)},
        )
    with pytest.raises(
        DpgBenchError, match="expects a StableDiffusionPipeline, but .* is a StableDiffusionXLPipeline"
    ):
        create(
            BACKENDS,
            "ella-sd15",
            "backend",
            base | {"model": str(tiny_sdxl_dir), "checkpoint": str(tsc_file)},
        )
    state = seeded_tsc().state_dict()
    state["connector.extra"] = state.pop("connector.latents")
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(
        DpgBenchError, match=r"missing keys 1 \(connector.latents\); unexpected keys 1 \(connector.extra\)"
    ):
        create(
            BACKENDS,
            "ella-sd15",
            "backend",
            base | {"model": str(tiny_sd15_dir), "checkpoint": str(tmp_path / "broken.safetensors")},
        )
    with pytest.raises(DpgBenchError, match="cannot load the T5 encoder"):
        create(
            BACKENDS,
            "ella-sd15",
            "backend",
            FAST | {"model": str(tiny_sd15_dir), "checkpoint": str(tsc_file), "text_encoder": str(tmp_path)},
        )


def test_a_t5_of_the_wrong_width_is_refused_before_any_image(tiny_sd15_dir, tsc_file, tmp_path):
    narrow = tiny.save_tiny_t5(tmp_path / "t5-24", d_model=24)  # a real T5 folder, but 24 wide, TSC takes 32
    args = FAST | {"model": str(tiny_sd15_dir), "checkpoint": str(tsc_file), "text_encoder": str(narrow)}
    with pytest.raises(DpgBenchError) as error:
        create(BACKENDS, "ella-sd15", "backend", args)
    assert str(error.value) == (
        f"backend 'ella-sd15': the text encoder {narrow} makes 24-wide features but the TSC takes 32: use the "
        "T5 the TSC was trained with (google/flan-t5-xl, 2048, for the released ELLA); "
        "--backend-arg text_encoder=DIR"
    )


def run_cli(args, capsys):
    code, _, err = invoke(args, capsys)
    return code, err


def test_generate_command_refuses_bad_checkpoints_and_bases_in_one_line(
    tiny_sd15_dir, tiny_sdxl_dir, tiny_t5_dir, tsc_file, tmp_path, capsys
):
    """`dpgbench generate` as a user runs it: exit code 1 and one `error:` line naming the keys or the base."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "p1.txt").write_text(PROMPT + "\n")
    state = seeded_tsc().state_dict()
    state["connector.extra"] = state.pop("connector.latents")
    del state["connector.proj_in.bias"]
    save_file(state, tmp_path / "broken.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"junk")

    def generate(backend, model, checkpoint):
        args = ["generate", "--backend", backend, "--prompts", str(prompts), "--out", str(tmp_path / "run")]
        options = FAST | {
            "model": str(model),
            "checkpoint": str(checkpoint),
            "text_encoder": str(tiny_t5_dir),
        }
        for key, value in options.items():
            args += ["--backend-arg", f"{key}={value}"]
        return run_cli(args, capsys)

    cases = [
        (
            ("ella-sd15", tiny_sd15_dir, tmp_path / "broken.safetensors"),
            "missing keys 2 (connector.latents, connector.proj_in.bias); unexpected keys 1 (connector.extra)",
        ),
        (("ella-sd15", tiny_sd15_dir, tmp_path / "junk.pth"), "junk.pth is not a readable torch checkpoint"),
        (
            ("ella-sdxl", tiny_sdxl_dir, tsc_file),
            "the TSC makes 32-wide tokens but an SDXL UNet's cross_attention_dim is 64",
        ),
        (("ella-sd15", tiny_sdxl_dir, tsc_file), "expects a StableDiffusionPipeline"),
    ]
    for (backend, model, checkpoint), message in cases:
        code, err = generate(backend, model, checkpoint)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1, err
        assert len(errors) == 1 and message in errors[0], err
        assert "Traceback" not in err
    assert not list((tmp_path / "run").glob("**/*.png"))


# ------------------------------------------------------------------------------------------ LLM4GEN


@pytest.fixture(scope="module")
def rankgen_dir(tiny_t5_dir, tmp_path_factory):
    """A RankGen-layout encoder (t5_encoder.* + projection) of width 24, with the tiny T5 tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("rankgen")
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    config = tiny.tiny_t5_encoder(d_model=24, vocab_size=len(tokenizer)).config
    torch.manual_seed(0)
    RankGenT5Encoder(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def projector_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm4gen")
    torch.manual_seed(0)
    adapter = LLM4GENAdapter(clip_dim=32, llm_dim=24, heads=4)
    torch.save(adapter.state_dict(), folder / "projector.pth")
    return folder


def test_rankgen_encoder_tokens_and_round_trip(rankgen_dir):
    embedder = RankGenEmbedder.from_pretrained(rankgen_dir, max_length=256)
    assert set(embedder.model.state_dict()) >= {"t5_encoder.shared.weight", "projection.weight"}
    ids, mask = embedder.token_ids([PROMPT, ""])
    assert ids.shape == mask.shape == (2, 256)
    expected = embedder.tokenizer("pre " + PROMPT).input_ids
    assert ids[0, : len(expected)].tolist() == expected and expected[-1] == 1  # ends with </s>
    assert int(mask[0].sum()) == len(expected) and ids[0, len(expected) :].eq(0).all()
    # Longer than max_length: cut without re-adding </s>, as the release does.
    short = RankGenEmbedder(embedder.model, embedder.tokenizer, max_length=5)
    assert short.token_ids([PROMPT])[0][0].tolist() == expected[:5]
    features = embedder([PROMPT])
    assert features.shape == (1, 256, 24)
    again = RankGenT5Encoder.from_pretrained(rankgen_dir)  # tied embeddings restored from the saved folder
    with torch.no_grad():
        assert torch.equal(again(ids[:1], mask[:1]), features)


def test_rankgen_uses_the_slow_tokenizer_of_the_release(rankgen_dir):
    from transformers import T5Tokenizer

    embedder = RankGenEmbedder.from_pretrained(rankgen_dir)
    assert type(embedder.tokenizer) is T5Tokenizer  # the release tokenizes with T5Tokenizer (sentencepiece)
    prompt = "\nGround view of the Great Pyramids, on the moon.\n"  # the release's example starts with \n
    reference = T5Tokenizer.from_pretrained(rankgen_dir, legacy=True)("pre " + prompt).input_ids
    ids, mask = embedder.token_ids([prompt])
    assert ids[0, : len(reference)].tolist() == reference and int(mask.sum()) == len(reference)


def test_text_encoders_without_their_weights_are_refused(tiny_t5_dir, rankgen_dir):
    """A folder of the other layout would load with random layers (transformers only warns): refused."""
    from ella import CheckpointError
    from ella.text_encoder import T5TextEmbedder

    with pytest.raises(CheckpointError) as error:
        T5TextEmbedder.from_pretrained(rankgen_dir, device="cpu")
    message = str(error.value)
    assert message.startswith(
        f"{rankgen_dir} lacks weights of T5EncoderModel: missing keys 22 (encoder.block.0."
    )
    assert message.endswith("...); is it a T5EncoderModel folder?") and "\n" not in message
    with pytest.raises(
        CheckpointError, match=r"lacks weights of RankGenT5Encoder \(t5_encoder\.\*\): missing keys 22"
    ):
        RankGenEmbedder.from_pretrained(tiny_t5_dir)


def test_llm4gen_refuses_an_encoder_of_the_wrong_width(tiny_sd15_dir, tiny_t5_dir, projector_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    wide = tmp_path / "rankgen-32"
    RankGenT5Encoder(tiny.tiny_t5_encoder(d_model=32, vocab_size=len(tokenizer)).config).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    args = FAST | {"model": str(tiny_sd15_dir), "unet": str(tiny_sd15_dir), "adapter": str(projector_dir)}
    with pytest.raises(DpgBenchError) as error:
        create(BACKENDS, "llm4gen-sd15", "backend", args | {"llm": str(wide)})
    assert str(error.value) == (
        f"backend 'llm4gen-sd15': the encoder '{wide}' makes 32-wide features but the CAM's llm_proj takes 24: "
        "use the RankGen-T5-XL the adapter was trained with (--backend-arg llm=DIR)"
    )


def test_llm4gen_end_to_end(tiny_sd15_dir, rankgen_dir, projector_dir):
    args = FAST | {
        "model": str(tiny_sd15_dir),
        "unet": str(tiny_sd15_dir),  # stands in for LLM4GEN's fine-tuned UNet (same architecture)
        "adapter": str(projector_dir),
        "llm": str(rankgen_dir),
    }
    backend = create(BACKENDS, "llm4gen-sd15", "backend", args)
    seen = []
    handle = backend.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    calls, llm_handle = count_calls(backend.llm.model)
    clip_calls, clip_handle = count_calls(backend.pipe.text_encoder)
    try:
        images = backend.generate(PROMPT, [1, 2, 3])
        alone = backend.generate(PROMPT, [3])
    finally:
        handle.remove()
        llm_handle.remove()
        clip_handle.remove()
    assert len(calls) == 2 and len(clip_calls) == 2  # once per generate call each
    assert [image.size for image in images] == [(64, 64)] * 3
    assert np.array_equal(pixels(images)[2], pixels(alone)[0])
    states = seen[0]["encoder_hidden_states"]
    assert states.shape == (4, 77 + 256, 32)  # 2 images x CFG halves; CLIP tokens then refined LLM tokens
    # Recomputed by hand: negative half first (diffusers' order), CAM(CLIP last hidden state, RankGen("pre ...")).
    pipe = backend.pipe
    with torch.no_grad():
        for row, text in ((0, ""), (2, PROMPT)):
            ids = pipe.tokenizer(
                text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            )
            clip = pipe.text_encoder(ids.input_ids)[0]
            llm_ids, llm_mask = backend.llm.token_ids([text])
            released = backend.llm.tokenizer("pre " + text).input_ids  # the "pre " prefix, then </s>, zeros
            assert llm_ids[0].tolist() == released + [0] * (256 - len(released))
            llm = backend.llm.model(llm_ids, attention_mask=llm_mask)
            expected = backend.adapter(clip, llm)[0]
            torch.testing.assert_close(states[row], expected, rtol=0, atol=1e-5)
            assert torch.equal(states[row, :77], clip[0])  # CLIP tokens pass through untouched
    info = backend.info()
    assert info["adapter"]["config"] == {
        "clip_dim": 32,
        "llm_dim": 24,
        "heads": 4,
        "depth": 1,
        "mlp_ratio": 4,
    }
    assert info["llm"]["tokens"] == 256 and info["llm"]["prefix"] == "pre "
    assert (
        info["adapter"]["sha256"]
        == hashlib.sha256(b"projector.pth" + (projector_dir / "projector.pth").read_bytes()).hexdigest()
    )


def test_llm4gen_refuses_a_non_sd15_base(tiny_sdxl_dir, tiny_sd15_dir, rankgen_dir, projector_dir):
    args = FAST | {
        "model": str(tiny_sdxl_dir),
        "unet": str(tiny_sd15_dir),
        "adapter": str(projector_dir),
        "llm": str(rankgen_dir),
    }
    with pytest.raises(DpgBenchError, match="expects a StableDiffusionPipeline"):
        create(BACKENDS, "llm4gen-sd15", "backend", args)
