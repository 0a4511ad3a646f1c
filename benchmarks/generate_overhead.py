"""Toolkit overhead of `dpgbench generate` against a bare diffusers loop doing the same work.

Both load the same tiny SD 1.5 pipeline (built on the spot, dpgbench/tiny_models.py) from disk and make
4 images per prompt in one batch with one generator per image, writing PNGs. Each variant runs in a
fresh process (same import cost, its own peak memory), alternating, and the median is reported.

    python benchmarks/generate_overhead.py [--prompts 16] [--size 64] [--steps 2] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "a red cat sitting on a blue chair",
    "three wooden boxes stacked next to a small white dog",
    "an astronaut riding a horse on mars",
    "a bowl of fruit with apples and a banana",
]


def prompt_texts(count: int) -> list[str]:
    return [f"{TEXTS[k % len(TEXTS)]}, picture {k}" for k in range(count)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bare(folder: str, out: Path, count: int, size: int, steps: int) -> float:
    """What a user would write by hand: load, loop, one batch of 4 per prompt, save PNGs."""
    import torch
    from diffusers import DiffusionPipeline

    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    for k, text in enumerate(prompt_texts(count)):
        generators = [torch.Generator("cpu").manual_seed(1000 * k + i) for i in range(4)]
        images = pipe(
            prompt=text,
            num_images_per_prompt=4,
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
        ).images
        for i, image in enumerate(images):
            image.save(out / f"p{k}_{i}.png")
    return time.perf_counter() - start


def toolkit(folder: str, out: Path, count: int, size: int, steps: int) -> float:
    """The same work through the registry, the sd15 backend and the core's generate loop."""
    sys.path.insert(0, str(ROOT))
    from diffusers import DiffusionPipeline  # noqa: F401 - imported off the clock, as in bare()

    from dpgbench import registry
    from dpgbench.backends import BACKENDS
    from dpgbench.data import Prompt
    from dpgbench.generate import GenerateConfig, generate
    from dpgbench.runs import RunPaths

    args = {"model": folder, "steps": str(steps), "width": str(size), "height": str(size)}
    start = time.perf_counter()
    backend = registry.create(BACKENDS, "sd15", "backend", args)
    prompts = [Prompt(f"p{k}", text) for k, text in enumerate(prompt_texts(count))]
    summary = generate(RunPaths(out), GenerateConfig("sd15", args, "bench"), prompts, backend)
    assert summary.done == 4 * count, summary
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    import torch

    # One thread by default: on a shared machine, thread contention would swamp the difference measured.
    torch.set_num_threads(args.threads)
    run = bare if args.child == "bare" else toolkit
    seconds = run(args.folder, Path(args.out), args.prompts, args.size, args.steps)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def measure(variant: str, folder: str, scratch: Path, args: argparse.Namespace, rep: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--folder",
        folder,
        "--out",
        str(scratch / f"{variant}{rep}"),
        "--prompts",
        str(args.prompts),
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measured process")
    parser.add_argument("--child", choices=("bare", "toolkit"))
    parser.add_argument("--folder")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from dpgbench import tiny_models as tiny

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        folder = str(tiny.save_tiny_sd15(scratch / "sd15"))
        results: dict[str, list[dict]] = {"bare": [], "toolkit": []}
        for rep in range(args.repeats):
            order = ("bare", "toolkit") if rep % 2 == 0 else ("toolkit", "bare")
            for variant in order:
                results[variant].append(measure(variant, folder, scratch, args, rep))
    images = 4 * args.prompts
    bare_s = statistics.median(r["seconds"] for r in results["bare"])
    kit_s = statistics.median(r["seconds"] for r in results["toolkit"])
    bare_mb = max(r["peak_rss_mb"] for r in results["bare"])
    kit_mb = max(r["peak_rss_mb"] for r in results["toolkit"])
    print(
        f"{images} images of {args.size}x{args.size}, {args.steps} steps, tiny SD 1.5, median of {args.repeats}"
    )
    print(
        f"bare diffusers loop : {bare_s:7.3f} s  ({images / bare_s:6.1f} images/s)  peak RSS {bare_mb:6.0f} MB"
    )
    print(
        f"dpgbench generate   : {kit_s:7.3f} s  ({images / kit_s:6.1f} images/s)  peak RSS {kit_mb:6.0f} MB"
    )
    print(
        f"ratio toolkit/bare  : {kit_s / bare_s:.3f}  (overhead {100 * (kit_s / bare_s - 1):+.1f}% of wall time)"
    )


if __name__ == "__main__":
    main()
