"""What `dpgbench ella attention` costs at real sizes (random weights, CPU), against a plain TSC call.

Baseline: the released-size TSC (66.8 M parameters) on 6 timesteps x 128 T5 tokens of width 2048, no
capture. Measured in the same run: the same call with attention capture (ratio printed), the whole
`attention_over_timesteps` (T5 once, a FLAN-T5-XL-shaped encoder, + captured TSC), and drawing PNG + CSV.

    python benchmarks/ella_attention.py [--repeats 3] [--t5-layers 24]
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

PROMPT = (
    "a red cat sitting on a blue chair next to a green table, three wooden boxes stacked on the left of a "
    "small white dog, a quiet lake at sunset with two boats and a yellow umbrella"
)


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
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--t5-layers", type=int, default=24, help="T5 encoder layers (FLAN-T5-XL has 24)")
    args = parser.parse_args()

    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from dpgbench import tiny_models as tiny
    from ella import ELLA
    from ella.attention import DEFAULT_TIMESTEPS, attention_over_timesteps, save_heatmap, write_csv
    from ella.text_encoder import T5TextEmbedder

    torch.set_grad_enabled(False)
    with torch.device("meta"):
        tsc = ELLA()  # the released SD 1.5 TSC's shapes
    tsc = randomize(tsc)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = T5Tokenizer.from_pretrained(tiny.t5_tokenizer(scratch), legacy=True)
    # FLAN-T5-XL's encoder shapes (d_model 2048, 32 heads of 64, gated-gelu d_ff 5120); tiny vocabulary.
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=2048,
        d_kv=64,
        d_ff=5120,
        num_layers=args.t5_layers,
        num_heads=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    with torch.device("meta"):
        encoder = T5EncoderModel(config)
    embedder = T5TextEmbedder(randomize(encoder, seed=1), tokenizer, max_length=128)
    print(
        f"TSC {sum(p.numel() for p in tsc.parameters()) / 1e6:.1f} M parameters, T5 encoder "
        f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.0f} M ({args.t5_layers} layers), "
        f"{len(DEFAULT_TIMESTEPS)} timesteps, torch threads {torch.get_num_threads()}"
    )

    features = embedder.encode([PROMPT]).hidden.expand(len(DEFAULT_TIMESTEPS), -1, -1)
    steps = torch.tensor(DEFAULT_TIMESTEPS)

    def captured() -> None:
        with tsc.capture_attention():
            tsc(features, steps)

    plain_s = median_seconds(lambda: tsc(features, steps), args.repeats)
    captured_s = median_seconds(captured, args.repeats)
    t5_s = median_seconds(lambda: embedder.encode([PROMPT]), args.repeats)
    whole_s = median_seconds(lambda: attention_over_timesteps(tsc, embedder, PROMPT), args.repeats)
    result = attention_over_timesteps(tsc, embedder, PROMPT)
    with tempfile.TemporaryDirectory() as scratch:
        files_s = median_seconds(
            lambda: (
                save_heatmap(result, Path(scratch) / "f.png"),
                write_csv(result, Path(scratch) / "f.csv"),
            ),
            args.repeats,
        )
    print(f"TSC forward, no capture (baseline): {plain_s * 1000:8.1f} ms")
    print(
        f"TSC forward with capture:           {captured_s * 1000:8.1f} ms  ratio {captured_s / plain_s:.2f}"
    )
    print(f"T5 encoder, one prompt:             {t5_s * 1000:8.1f} ms")
    print(f"attention_over_timesteps (all):     {whole_s * 1000:8.1f} ms  ratio {whole_s / plain_s:.2f}")
    print(f"PNG + CSV ({len(result.words)} words):             {files_s * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
