"""What ELLA adds to a denoising step, at real sizes with random weights on CPU.

Measures, in one run: the released TSC's forward (66.8 M parameters, 2 rows = both CFG halves, 128 T5
tokens of width 2048) against the SD 1.5 UNet's forward (860 M parameters, 64x64 latents, batch 2) --
the baseline -- and prints their ratio. Then runs the real `ella.pipeline.generate` path (real-size UNet,
TSC and FLAN-T5-XL-shaped encoder, a few steps, latents out) and counts T5 and TSC calls per prompt.

    python benchmarks/ella_tsc.py [--repeats 3] [--steps 2] [--t5-layers 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Materialise a meta-device module with small seeded normal weights (fast at 1 B parameters)."""
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02, generator=generator)
    return module.eval()


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per model (median reported)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps in the call-count run")
    parser.add_argument("--t5-layers", type=int, default=24, help="T5 encoder layers (FLAN-T5-XL has 24)")
    args = parser.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from dpgbench import tiny_models as tiny
    from ella import ELLA
    from ella.pipeline import attach, generate
    from ella.text_encoder import T5TextEmbedder

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32")

    # 1. Real-size models on the meta device, then seeded random weights.
    with torch.device("meta"):
        tsc = ELLA()  # the released SD 1.5 TSC layout
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD 1.5's UNet config
    tsc, unet = randomize(tsc, 1), randomize(unet, 2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"TSC {count(tsc) / 1e6:.1f} M parameters, UNet {count(unet) / 1e6:.1f} M parameters")

    # 2. One denoising step's two forwards, at the shapes the pipeline uses (CFG: batch 2).
    features = torch.randn(2, 128, 2048)
    latents = torch.randn(2, 4, 64, 64)
    timestep = torch.tensor(500)
    with torch.no_grad():
        tokens = tsc(features, timestep)
        tsc_s = median_seconds(lambda: tsc(features, timestep), args.repeats)
        unet_s = median_seconds(lambda: unet(latents, timestep, tokens).sample, args.repeats)
    print(f"TSC forward  (2 x 128 tokens -> 2 x 64 x 768): {tsc_s * 1000:8.1f} ms")
    print(f"UNet forward (2 x 4 x 64 x 64, baseline):       {unet_s * 1000:8.1f} ms")
    print(f"ratio TSC / UNet = {tsc_s / unet_s:.4f}; TSC share of one step = {tsc_s / (tsc_s + unet_s):.2%}")

    # 3. The real inference path: T5 runs once per prompt, the TSC once per UNet call.
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = T5Tokenizer.from_pretrained(tiny.t5_tokenizer(Path(scratch) / "t5"), legacy=True)
    t5_config = T5Config(
        vocab_size=len(tokenizer),
        d_model=2048,
        d_kv=64,
        d_ff=5120,
        num_layers=args.t5_layers,
        num_heads=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )  # FLAN-T5-XL's encoder shape (its 32k vocabulary aside)
    with torch.device("meta"):
        t5 = T5EncoderModel(t5_config)
    embedder = T5TextEmbedder(randomize(t5, 3), tokenizer, max_length=128)
    pipe = StableDiffusionPipeline(
        vae=tiny.tiny_vae(),  # only its scale factor is used: latents are returned, not decoded
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    attach(pipe, tsc)
    calls = {"t5": 0, "tsc": 0}
    embedder.model.register_forward_hook(lambda *a: calls.__setitem__("t5", calls["t5"] + 1))
    # The proxy calls tsc.encode (tokens + pooled), which runs the connector once.
    tsc.connector.register_forward_hook(lambda *a: calls.__setitem__("tsc", calls["tsc"] + 1))
    prompts = ["a red cat sitting on a blue chair", "three wooden boxes on the left of a small white dog"]
    with torch.no_grad():
        t5_s = median_seconds(lambda: embedder.encode(["a red cat", ""]), 1)
    calls["t5"] = 0
    start = time.perf_counter()
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(1)]  # one image: batch 2 with CFG, as timed above
        generate(
            pipe,
            embedder,
            prompt,
            generators,
            num_inference_steps=args.steps,
            output_type="latent",
            height=512,
            width=512,
            guidance_scale=12.0,
        )
    elapsed = time.perf_counter() - start
    print(
        f"{len(prompts)} prompts x 1 image x {args.steps} steps in {elapsed:.1f} s: "
        f"T5 calls per prompt = {calls['t5'] / len(prompts):g}, TSC calls per prompt = {calls['tsc'] / len(prompts):g}"
    )
    # Amortised over a 50-step generation (ELLA's default): once per prompt vs. 50 x (TSC + UNet).
    print(
        f"T5 encoder forward ({args.t5_layers} layers, prompt + negative): {t5_s * 1000:.1f} ms once per prompt "
        f"= {t5_s / (50 * (tsc_s + unet_s)):.2%} of a 50-step generation's TSC + UNet time"
    )


if __name__ == "__main__":
    main()
