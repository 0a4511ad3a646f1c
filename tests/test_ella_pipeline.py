"""ELLA inference on tiny real pipelines: T5 embedder, the UNet proxy (CFG halves, timesteps), SD 1.5 and SDXL."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from ella import ELLA, CheckpointError  # noqa: E402
from ella.pipeline import attach, detach, generate, load_pipeline, pipeline_inputs  # noqa: E402
from ella.text_encoder import T5TextEmbedder, TextFeatures  # noqa: E402
from ella.unet_proxy import ELLAProxyUNet  # noqa: E402

PROMPT = "a red cat sitting on a blue chair"


def tiny_tsc(output_dim=None, pooled_dim=None, seed=0):
    torch.manual_seed(seed)
    model = ELLA(
        time_channel=16,
        time_embed_dim=24,
        width=32,
        layers=2,
        heads=4,
        num_latents=8,
        input_dim=32,
        output_dim=output_dim,
        pooled_dim=pooled_dim,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # nonzero AdaLN so the timestep matters
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def embedder(tiny_t5_dir):
    return T5TextEmbedder.from_pretrained(tiny_t5_dir, max_length=32, device="cpu")


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir):
    pipe = load_pipeline(tiny_sd15_dir, tiny_tsc())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    pipe = load_pipeline(tiny_sdxl_dir, tiny_tsc(output_dim=64, pooled_dim=32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, embedder, seeds, **kwargs):
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    options = dict(num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=5.0)
    return np.stack(generate(pipe, embedder, PROMPT, generators, **(options | kwargs)))


def test_fixed_and_flexible_t5_features(embedder):
    tokenizer = embedder.tokenizer
    fixed = embedder.encode([PROMPT, ""])
    assert fixed.hidden.shape == (2, 32, 32) and fixed.mask is None
    embedder.max_length = None
    try:
        flexible = embedder.encode([PROMPT, ""])
    finally:
        embedder.max_length = 32
    length = len(tokenizer(PROMPT).input_ids)
    assert flexible.hidden.shape == (2, length, 32)
    assert flexible.mask.sum(1).tolist() == [length, 1]  # "" is just </s>
    assert torch.count_nonzero(flexible.hidden[1, 1:]) == 0  # padding rows are exact zeros
    assert torch.count_nonzero(flexible.hidden.abs().sum(-1)) == length + 1  # real rows never are
    # The same tokens give the same features whatever the padding (T5 masks its own attention).
    torch.testing.assert_close(flexible.hidden[0], fixed.hidden[0, :length], rtol=0, atol=1e-5)


def test_t5_runs_in_fp16_on_gpu_by_default(tiny_t5_dir):
    """Upstream runs FLAN-T5-XL in fp16; on CPU (no fast half matmuls) the default is float32."""
    from ella.text_encoder import default_dtype

    assert default_dtype("cuda") == torch.float16 and default_dtype("cuda:1") == torch.float16
    assert default_dtype("cpu") == torch.float32
    half = T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu", dtype=torch.float16)
    assert half.model.dtype == torch.float16 and half.encode([PROMPT]).hidden.dtype == torch.float16
    assert T5TextEmbedder.from_pretrained(tiny_t5_dir, device="cpu").model.dtype == torch.float32


def test_proxy_conditions_both_cfg_halves_at_every_step(sd15, embedder):
    proxy = sd15.unet
    assert isinstance(proxy, ELLAProxyUNet)
    assert proxy.config is proxy.unet.config and proxy.dtype == torch.float32
    seen = []
    pre = proxy.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[1], args[2])), with_kwargs=True
    )
    t5_calls = []
    t5_hook = embedder.model.register_forward_hook(lambda *a: t5_calls.append(1))
    try:
        run(sd15, embedder, [1, 2, 3])
    finally:
        pre.remove()
        t5_hook.remove()
    assert len(t5_calls) == 1  # once per prompt, not per step or image
    # PNDM (SD 1.5's scheduler) makes 3 UNet calls for 2 steps; the TSC ran before each one.
    assert len(seen) == len(sd15.scheduler.timesteps) == 3
    (t0, states0), (t1, states1) = seen[0], seen[2]
    assert states0.shape == (6, 8, 32)  # 3 images x 2 CFG halves, 8 TSC tokens of width 32
    # Negative half first (diffusers' order), identical rows within a half, the halves differ.
    torch.testing.assert_close(states0[0], states0[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(states0[3], states0[5], rtol=0, atol=1e-5)
    assert (states0[0] - states0[3]).abs().max() > 1e-3
    # The TSC output follows the timestep: same text, different step, different conditioning.
    assert t0 != t1 and (states0 - states1).abs().max() > 1e-3
    features = embedder.encode([PROMPT, ""]).hidden
    with torch.no_grad():
        expected = proxy.tsc(torch.cat([features[1:].expand(3, -1, -1), features[:1].expand(3, -1, -1)]), t0)
    torch.testing.assert_close(states0, expected, rtol=0, atol=1e-5)


def test_sd15_images_depend_on_their_seed_only(sd15, embedder):
    batch = run(sd15, embedder, [11, 12])
    alone = run(sd15, embedder, [12])
    assert batch.shape == (2, 64, 64, 3)
    assert np.abs(batch[1] - alone[0]).max() < 1e-5
    assert np.abs(batch[0] - batch[1]).max() > 1e-3
    # Golden mean and std of the seed-11 image of this seeded tiny stack (float32, CPU).
    assert (float(batch[0].mean()), float(batch[0].std())) == pytest.approx((0.490515, 0.142842), abs=1e-5)


def test_flexible_length_runs_masked(sd15, embedder):
    fixed = run(sd15, embedder, [5])
    embedder.max_length = None
    seen = []
    hook = sd15.unet.tsc.connector.perceiver_blocks[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[3])
    )
    try:
        flexible = run(sd15, embedder, [5])
    finally:
        embedder.max_length = 32
        hook.remove()
    mask = seen[0]  # key_padding_mask: latents, then text tokens; True = hidden
    length = len(embedder.tokenizer(PROMPT).input_ids)
    assert mask.shape == (2, 8 + length)
    assert mask[0, 8 + 1 :].all() and not mask[0, : 8 + 1].any()  # negative "" row: one real token
    assert not mask[1].any()  # the prompt row is not padded
    assert np.abs(fixed - flexible).max() > 1e-3


def test_sdxl_gets_the_tsc_pooled_embedding(sdxl, embedder):
    seen = []
    pre = sdxl.unet.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[1], args[2], kwargs["added_cond_kwargs"])),
        with_kwargs=True,
    )
    try:
        images = run(sdxl, embedder, [1, 2])
    finally:
        pre.remove()
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
    timestep, states, added = seen[0]
    assert states.shape == (4, 8, 64)
    assert added["text_embeds"].shape == (4, 32) and added["time_ids"].shape == (4, 6)
    features = embedder.encode([PROMPT, ""]).hidden
    rows = torch.cat([features[1:].expand(2, -1, -1), features[:1].expand(2, -1, -1)])
    with torch.no_grad():
        tokens, pooled = sdxl.unet.tsc.encode(rows, timestep)
    torch.testing.assert_close(added["text_embeds"], pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(states, tokens, rtol=0, atol=1e-6)


def test_wrong_base_is_refused(tiny_sdxl_dir, sd15):
    with pytest.raises(CheckpointError, match="32-wide tokens but an SDXL UNet's cross_attention_dim is 64"):
        load_pipeline(tiny_sdxl_dir, tiny_tsc())
    plain_unet = sd15.unet.unet
    with pytest.raises(CheckpointError, match="needs a 32-wide pooled text embedding but the TSC gives none"):
        ELLAProxyUNet(tiny_tsc(output_dim=64), _sdxl_like(plain_unet))


def _sdxl_like(unet):
    """The real tiny SD UNet with an SDXL-style config (only the config is read by the check)."""

    class Shell(torch.nn.Module):
        config = dict(unet.config) | {
            "cross_attention_dim": 64,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
        }

    return Shell()


def test_attach_detach_and_inputs(sd15, embedder):
    proxy = sd15.unet
    detach(sd15)
    try:
        assert not isinstance(sd15.unet, ELLAProxyUNet)
        with pytest.raises(ValueError, match="no TSC attached"):
            pipeline_inputs(sd15, TextFeatures(torch.zeros(1, 4, 32)), TextFeatures(torch.zeros(1, 4, 32)), 2)
    finally:
        attach(sd15, proxy.tsc)
    assert isinstance(sd15.unet, ELLAProxyUNet) and sd15.unet.unet is proxy.unet
    features = embedder.encode([PROMPT])
    inputs = pipeline_inputs(sd15, features, features, 3)
    assert inputs["prompt_embeds"].shape == (3, 32, 32) and set(inputs) == {
        "prompt_embeds",
        "negative_prompt_embeds",
    }
