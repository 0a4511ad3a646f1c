"""ELLA TSC and LLM4GEN CAM: released key layouts and sizes, tiny-model behaviour, strict loading."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from ella import ELLA, CheckpointError, LLM4GENAdapter, check_base, load_llm4gen_adapter, load_tsc  # noqa: E402
from ella.checkpoint import sdxl_pooled_dim  # noqa: E402

TINY = dict(time_channel=16, time_embed_dim=24, width=32, layers=2, heads=4, num_latents=8, input_dim=20)

# The released ella-sd1.5-tsc-t5xl.safetensors layout (TencentQQGYLab/ELLA model.py).
ELLA_TOP_KEYS = [
    "time_embedding.linear_1.weight",
    "time_embedding.linear_1.bias",
    "time_embedding.linear_2.weight",
    "time_embedding.linear_2.bias",
    "connector.latents",
    "connector.time_aware_linear.weight",
    "connector.time_aware_linear.bias",
    "connector.proj_in.weight",
    "connector.proj_in.bias",
]
ELLA_BLOCK_KEYS = [
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
    "ln_1.linear.weight",
    "ln_1.linear.bias",
    "ln_2.linear.weight",
    "ln_2.linear.bias",
    "ln_ff.linear.weight",
    "ln_ff.linear.bias",
]
LLM4GEN_KEYS = [
    f"CrossFusionModule.0.{name}.{kind}"
    for name in (
        "llm_proj",
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "q_norm",
        "kv_norm",
        "norm",
        "FFN.0",
        "FFN.2",
    )
    for kind in ("weight", "bias")
]


def randomized(model, seed: int = 0, scale: float = 0.2):
    """Fill every tensor with seeded noise: AdaLN's zero init would otherwise hide the timestep path."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_tsc():
    torch.manual_seed(0)
    return randomized(ELLA(**TINY))


@pytest.fixture(scope="module")
def text():
    return torch.randn(3, 11, 20, generator=torch.Generator().manual_seed(1))


def test_released_tsc_layout_and_size():
    with torch.device("meta"):
        model = ELLA()
    state = model.state_dict()
    expected = ELLA_TOP_KEYS + [
        f"connector.perceiver_blocks.{i}.{k}" for i in range(6) for k in ELLA_BLOCK_KEYS
    ]
    assert list(state) == expected
    assert len(state) == 93
    assert sum(t.numel() for t in state.values()) == 66_820_608
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["time_embedding.linear_1.weight"] == (768, 320)
    assert shapes["connector.latents"] == (64, 768)
    assert shapes["connector.proj_in.weight"] == (768, 2048)
    assert shapes["connector.perceiver_blocks.5.attn.in_proj_weight"] == (2304, 768)
    assert shapes["connector.perceiver_blocks.5.mlp.c_fc.weight"] == (3072, 768)
    assert shapes["connector.perceiver_blocks.5.ln_ff.linear.weight"] == (1536, 768)
    assert model.output_dim == 768


def test_sdxl_tsc_adds_proj_out_and_pooled_head():
    with torch.device("meta"):
        model, released = ELLA(output_dim=2048, pooled_dim=1280), ELLA()
    extra = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in released.state_dict()}
    assert extra == {
        "connector.proj_out.0.weight": (2048, 768),
        "connector.proj_out.0.bias": (2048,),
        "connector.proj_out.1.weight": (2048,),
        "connector.proj_out.1.bias": (2048,),
        "pooled_proj.0.weight": (768,),
        "pooled_proj.0.bias": (768,),
        "pooled_proj.1.weight": (1280, 768),
        "pooled_proj.1.bias": (1280,),
    }
    assert model.output_dim == 2048


def test_released_llm4gen_layout_and_size():
    with torch.device("meta"):
        model = LLM4GENAdapter()
    state = model.state_dict()
    assert list(state) == LLM4GEN_KEYS
    assert sum(t.numel() for t in state.values()) == 8_663_040
    assert tuple(state["CrossFusionModule.0.llm_proj.weight"].shape) == (768, 2048)
    assert tuple(state["CrossFusionModule.0.FFN.0.weight"].shape) == (3072, 768)


def test_fresh_tsc_starts_with_plain_layernorms():
    model = ELLA(**TINY)
    for name, tensor in model.state_dict().items():
        if ".ln_" in name:
            assert torch.count_nonzero(tensor) == 0, name


def test_tsc_shapes_timestep_and_golden_value(tiny_tsc, text):
    with torch.no_grad():
        early = tiny_tsc(text, torch.tensor(999))
        late = tiny_tsc(text, 1)
        per_row = tiny_tsc(text, torch.tensor([999.0, 999.0, 999.0]))
    assert early.shape == (3, 8, 32)
    assert torch.equal(early, per_row)  # a scalar timestep is broadcast to the batch
    assert (early - late).abs().max() > 0.1  # the timestep really changes the conditioning
    # Golden value of this seeded tiny model (float32, CPU).
    assert early.double().sum().item() == pytest.approx(GOLDEN_SUM, rel=1e-5)
    with pytest.raises(ValueError, match="2 timesteps for a batch of 3"):
        tiny_tsc(text, torch.tensor([1, 2]))


GOLDEN_SUM = 660.4088487327099  # measured on CPU, torch 2.14.1


def reference_tsc(state: dict, config: dict, text: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The TSC written out from the facts of TencentQQGYLab/ELLA model.py with plain tensor algebra.

    Independent of ella.model and of diffusers' embedding helpers: sinusoidal features with cos first and
    no frequency shift (exponent / half), SiLU MLP, latents + time_aware_linear(SiLU(t)), proj_in, then per
    block AdaLN (LayerNorm without affine, eps 1e-6, chunk = shift then scale, x(1+scale)+shift),
    attention of normed latents over [normed latents; normed text], residual, squared-ReLU MLP, residual.
    No proj_out and no final norm (the released layout).
    """
    width, heads = config["width"], config["heads"]
    head_dim = width // heads

    def linear(x, name):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    half = config["time_channel"] // 2
    # float32 like upstream's Timesteps module (at t = 999 the angle's rounding alone moves outputs ~1e-4).
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = steps.float()[:, None] * frequencies[None]
    features = torch.cat([angles.cos(), angles.sin()], dim=-1)
    hidden = linear(features, "time_embedding.linear_1")
    time = linear(hidden * torch.sigmoid(hidden), "time_embedding.linear_2")[:, None]  # (batch, 1, dim)
    silu_time = time * torch.sigmoid(time)

    def ada_norm(x, name):
        shift, scale = linear(silu_time, f"{name}.linear").chunk(2, dim=-1)
        mean = x.mean(-1, keepdim=True)
        variance = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(variance + 1e-6) * (1 + scale) + shift

    def split(x):
        return x.reshape(len(x), -1, heads, head_dim).transpose(1, 2)

    latents = state["connector.latents"][None] + linear(silu_time, "connector.time_aware_linear")
    text = linear(text, "connector.proj_in")
    for block in range(config["layers"]):
        name = f"connector.perceiver_blocks.{block}"
        queries = ada_norm(latents, f"{name}.ln_1")
        keys = torch.cat([queries, ada_norm(text, f"{name}.ln_2")], dim=1)
        w, b = state[f"{name}.attn.in_proj_weight"], state[f"{name}.attn.in_proj_bias"]
        q = split(queries @ w[:width].T + b[:width])
        k = split(keys @ w[width : 2 * width].T + b[width : 2 * width])
        v = split(keys @ w[2 * width :].T + b[2 * width :])
        weights = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).softmax(dim=-1)
        merged = (weights @ v).transpose(1, 2).reshape(len(latents), -1, width)
        latents = latents + linear(merged, f"{name}.attn.out_proj")
        inner = linear(ada_norm(latents, f"{name}.ln_ff"), f"{name}.mlp.c_fc")
        latents = latents + linear(torch.relu(inner) ** 2, f"{name}.mlp.c_proj")
    return latents


def test_tsc_matches_the_released_formula(tiny_tsc, text):
    steps = torch.tensor([999.0, 400.0, 1.0])
    with torch.no_grad():
        ours = tiny_tsc(text, steps)
        expected = reference_tsc(dict(tiny_tsc.state_dict()), dict(tiny_tsc.config), text, steps)
    assert ours.shape == expected.shape == (3, 8, 32)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)
    # The facts that matter, each flipped, no longer match: sin first, shift/scale swapped.
    state = dict(tiny_tsc.state_dict())
    for block in range(2):
        for norm in ("ln_1", "ln_2", "ln_ff"):
            for kind in ("weight", "bias"):
                key = f"connector.perceiver_blocks.{block}.{norm}.linear.{kind}"
                state[key] = torch.cat(state[key].chunk(2, dim=0)[::-1])
    with torch.no_grad():
        swapped = reference_tsc(state, dict(tiny_tsc.config), text, steps)
    assert (swapped - ours).abs().max() > 1e-2


def test_timestep_features_are_cos_first_without_shift(tiny_tsc):
    """The features fed to time_embedding.linear_1 (diffusers' helper, as upstream's Timesteps module)."""
    seen = {}
    handle = tiny_tsc.time_embedding.linear_1.register_forward_pre_hook(
        lambda m, args: seen.update(x=args[0])
    )
    with torch.no_grad():
        tiny_tsc.timestep_embedding(torch.tensor([0, 500]), 2)
    handle.remove()
    half = 8
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    angles = 500 * frequencies
    assert seen["x"].shape == (2, 16)
    assert seen["x"][0].tolist() == [1.0] * half + [0.0] * half  # t = 0: cos 0 = 1 first, then sin 0 = 0
    torch.testing.assert_close(
        seen["x"][1].double(), torch.cat([angles.cos(), angles.sin()]), atol=1e-5, rtol=0
    )


def test_fresh_latents_are_scaled_by_inverse_sqrt_width():
    torch.manual_seed(0)
    model = ELLA(
        time_channel=16, time_embed_dim=24, width=256, layers=1, heads=8, num_latents=64, input_dim=20
    )
    latents = model.connector.latents.detach()
    assert latents.shape == (64, 256)
    assert float(latents.std()) == pytest.approx(256**-0.5, rel=0.03)  # 0.0625; 16k samples


def test_flexible_mask_equals_truncation(tiny_tsc, text):
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        masked = tiny_tsc(text, 400, text_mask=mask)
        truncated = tiny_tsc(text[1:2, :6], 400)
        unmasked = tiny_tsc(text, 400)
    torch.testing.assert_close(masked[1], truncated[0], rtol=0, atol=1e-5)
    assert torch.equal(masked[0], unmasked[0])  # rows without padding are untouched by the mask
    assert (masked[1] - unmasked[1]).abs().max() > 1e-3  # padding really was hidden


def test_attention_capture_is_bit_identical_and_correct(tiny_tsc, text):
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[2, 4:] = 0
    with torch.no_grad():
        plain = tiny_tsc(text, 250, text_mask=mask)
        with tiny_tsc.capture_attention() as capture:
            captured = tiny_tsc(text, 250, text_mask=mask)
            tiny_tsc(text, 750)
        after = tiny_tsc(text, 250, text_mask=mask)
    assert torch.equal(plain, captured) and torch.equal(plain, after)
    assert len(capture.calls) == 2 and len(capture.calls[0]) == 2
    weights = capture.calls[0][1]
    assert weights.shape == (3, 4, 8, 8 + 11)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 8))
    assert capture.text_attention(call=0)[2, ..., 4:].abs().max() == 0  # masked tokens get no weight
    assert all(block.attention_sink is None for block in tiny_tsc.connector.perceiver_blocks)
    # Same numbers as torch's own per-head weights for the last block of call 1.
    block = tiny_tsc.connector.perceiver_blocks[1]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.update(args=args))
    with torch.no_grad():
        tiny_tsc(text, 750)
        handle.remove()
        text_in, latents, time_embedding, _ = seen["args"]
        queries = block.ln_1(latents, time_embedding)
        keys = torch.cat([queries, block.ln_2(text_in, time_embedding)], 1)
        _, reference = block.attn(queries, keys, keys, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(capture.calls[1][1], reference, rtol=1e-5, atol=1e-6)


def test_save_pretrained_round_trip(tiny_tsc, text, tmp_path):
    tiny_tsc.save_pretrained(tmp_path / "tsc")
    loaded = ELLA.from_pretrained(tmp_path / "tsc").eval()
    again = load_tsc(tmp_path / "tsc")  # our loader reads the same folder, strictly
    with torch.no_grad():
        expected = tiny_tsc(text, 500)
        assert torch.equal(loaded(text, 500), expected)
        assert torch.equal(again(text, 500), expected)


def test_single_file_config_is_read_off_shapes(tiny_tsc, text, tmp_path):
    save_file(tiny_tsc.state_dict(), tmp_path / "tsc.safetensors")
    loaded = load_tsc(tmp_path / "tsc.safetensors", heads=4)
    public = {k: v for k, v in tiny_tsc.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    torch.save(tiny_tsc.state_dict(), tmp_path / "tsc.pth")
    with torch.no_grad():
        assert torch.equal(load_tsc(tmp_path / "tsc.pth", heads=4)(text, 3), tiny_tsc(text, 3))


def test_wrong_keys_are_listed(tiny_tsc, tmp_path):
    state = dict(tiny_tsc.state_dict())
    state.pop("connector.perceiver_blocks.1.mlp.c_fc.bias")
    state["connector.perceiver_blocks.1.mlp.fc.bias"] = torch.zeros(128)
    state["connector.perceiver_blocks.0.mlp.c_proj.bias"] = torch.zeros(31)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_tsc(tmp_path / "bad.safetensors", heads=4)
    message = str(error.value)
    assert "missing keys 1 (connector.perceiver_blocks.1.mlp.c_fc.bias)" in message
    assert "unexpected keys 1 (connector.perceiver_blocks.1.mlp.fc.bias)" in message
    assert (
        "wrong shapes (file vs model) 1 (connector.perceiver_blocks.0.mlp.c_proj.bias (31,) vs (32,))"
        in message
    )
    assert "\n" not in message


def test_wrong_shape_against_released_default(tmp_path):
    state = {k: torch.zeros(1) for k in ["time_embedding.linear_1.weight"]}
    save_file(state, tmp_path / "odd.safetensors")
    with pytest.raises(
        CheckpointError, match=r"missing keys 92 \(time_embedding.linear_1.bias, .*wrong shapes"
    ):
        load_tsc(tmp_path / "odd.safetensors")


def test_heads_that_do_not_divide_the_width(tiny_tsc, tmp_path):
    save_file(tiny_tsc.state_dict(), tmp_path / "tsc.safetensors")
    with pytest.raises(CheckpointError, match=r"TSC width 32 is not divisible by heads=5\); check heads"):
        load_tsc(tmp_path / "tsc.safetensors", heads=5)


def test_unreadable_files_are_one_clear_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint\n")
    (tmp_path / "junk.safetensors").write_bytes(b"junk\n")
    with pytest.raises(CheckpointError) as error:
        load_tsc(tmp_path / "junk.pth")
    assert str(error.value).startswith(f"{tmp_path / 'junk.pth'} is not a readable torch checkpoint (")
    assert str(error.value).endswith("give a .safetensors/.pth state dict or a save_pretrained folder")
    with pytest.raises(CheckpointError, match=r"junk.safetensors is not a readable .safetensors file \("):
        load_tsc(tmp_path / "junk.safetensors")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module, not data
    with pytest.raises(CheckpointError, match="pickled.pth is not a readable torch checkpoint"):
        load_llm4gen_adapter(tmp_path / "pickled.pth")
    torch.save({"step": 3}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="ints.pth does not hold a flat state dict of tensors"):
        load_tsc(tmp_path / "ints.pth")


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found: give a .safetensors/.pth file or a folder"):
        load_tsc(tmp_path / "nope.safetensors")


def test_llm4gen_strict_round_trip(tmp_path):
    torch.manual_seed(0)
    adapter = randomized(LLM4GENAdapter(clip_dim=32, llm_dim=24, heads=4))
    torch.save(adapter.state_dict(), tmp_path / "projector.pth")
    loaded = load_llm4gen_adapter(tmp_path, heads=4)
    clip = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    llm = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = loaded(clip, llm)
        assert torch.equal(out, adapter(clip, llm))
    assert out.shape == (2, 7 + 5, 32)
    assert torch.equal(out[:, :7], clip)  # CLIP tokens pass through untouched
    state = dict(adapter.state_dict())
    state["CrossFusionModule.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys 1 \(CrossFusionModule.0.extra.weight\)"):
        load_llm4gen_adapter(tmp_path / "bad.pth", heads=4)


def test_llm4gen_attention_matches_the_released_formula():
    """LLM tokens are the queries (normed by `kv_norm`), CLIP tokens the keys/values (normed by `q_norm`)."""
    torch.manual_seed(0)
    adapter = randomized(LLM4GENAdapter(clip_dim=32, llm_dim=24, heads=4), scale=0.3)
    block = adapter.CrossFusionModule[0]
    clip = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(4))
    llm = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        projected = block.llm_proj(llm)
        q = block.q_proj(block.kv_norm(projected)).view(2, 5, 4, 8).transpose(1, 2)
        k = block.k_proj(block.q_norm(clip)).view(2, 7, 4, 8).transpose(1, 2)
        v = block.v_proj(block.q_norm(clip)).view(2, 7, 4, 8).transpose(1, 2)
        weights = (q @ k.transpose(-1, -2) * 8**-0.5).softmax(-1)
        refined = projected + block.out_proj((weights @ v).transpose(1, 2).reshape(2, 5, 32))
        refined = refined + block.FFN(block.norm(refined))
        torch.testing.assert_close(adapter(clip, llm)[:, 7:], refined, rtol=0, atol=1e-5)


SD15_UNET = {"cross_attention_dim": 768}
SD2_UNET = {"cross_attention_dim": 1024}
SDXL_UNET = {
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def test_base_compatibility():
    with torch.device("meta"):
        sd15, sdxl = ELLA(), ELLA(output_dim=2048, pooled_dim=1280)
    assert sdxl_pooled_dim(SDXL_UNET) == 1280 and sdxl_pooled_dim(SD15_UNET) is None
    check_base(sd15, SD15_UNET)
    check_base(sdxl, SDXL_UNET)
    with pytest.raises(
        CheckpointError, match="768-wide tokens but an SDXL UNet's cross_attention_dim is 2048"
    ):
        check_base(sd15, SDXL_UNET)
    with pytest.raises(CheckpointError, match="cross_attention_dim is 1024"):
        check_base(sd15, SD2_UNET)
    with pytest.raises(
        CheckpointError,
        match=r"the TSC is an ELLA-SDXL one \(2048-wide tokens and a pooled head\) but this UNet "
        r"\(cross_attention_dim 768\) takes no pooled embedding: use it with an SDXL base \(backend ella-sdxl\)",
    ):
        check_base(sdxl, SD15_UNET)
    with torch.device("meta"):
        wide = ELLA(output_dim=1024)  # an SD 2.x-width TSC on SD 1.5: no hint about the released one
    with pytest.raises(CheckpointError) as error:
        check_base(wide, SD15_UNET)
    assert str(error.value) == (
        "the TSC makes 1024-wide tokens but this UNet's cross_attention_dim is 768: use a base whose UNet "
        "takes 1024, or a TSC trained for this base (ELLA(output_dim=768))"
    )
    with torch.device("meta"):
        no_pool = ELLA(output_dim=2048)
    with pytest.raises(
        CheckpointError, match="needs a 1280-wide pooled text embedding but the TSC gives none"
    ):
        check_base(no_pool, SDXL_UNET)
