"""Questions per second of the batched mplug-large judge vs. one question per call (the official way).

Both run the same random-weight mPLUG folder with the real large architecture (ViT-L/14 at 504 px, BERT-base
text side, 6/6/12 layers; one skip-connection fusion layer, stride 3 — an assumption, the released config
is not readable offline), biased to answer in two decoding steps as the real model does on yes/no questions. The official way is modelscope's VQA pipeline when it imports (it needs fairseq...), else
the model modelscope's pipeline builds, fed by the pipeline's preprocessing, one question per call. Each side
runs in its own process so peak memory is its own. Usage: python benchmarks/judge_mplug.py [--images 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the folder builder is shared with the tests
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "Is there a red cat?",
    "Is the cat sitting on a blue chair?",
    "Is the chair next to a green table?",
    "Are there two dogs?",
    "Is the sky visible?",
    "Is the man holding an umbrella?",
    "Is the umbrella black?",
    "Is the house on the left of the tree?",
]


def images(count: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(count)]


def load_official(folder: Path) -> tuple[Callable[[list[Any], list[str]], list[list[str]]], str]:
    import contextlib
    import io

    import torch

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks

            vqa = pipeline(Tasks.visual_question_answering, model=str(folder), device="cpu")
            ask = lambda image, q: vqa({"image": image, "question": q})["text"]  # noqa: E731
            how = "modelscope pipeline"
        except Exception:  # the pipeline module needs fairseq & co.; rebuild its steps from importable parts
            from modelscope.models import Model
            from modelscope.pipelines.base import collate_fn
            from PIL import Image
            from torchvision import transforms
            from transformers import BertTokenizer

            model = Model.from_pretrained(str(folder))
            model.eval()
            res = model.model.config.image_res
            mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
            transform = transforms.Compose(
                [
                    transforms.Resize((res, res), interpolation=Image.BICUBIC),
                    transforms.ToTensor(),
                    transforms.Normalize(mean=mean, std=std),
                ]
            )
            tokenizer = BertTokenizer.from_pretrained(str(folder))

            def ask(image, q):  # type: ignore[no-untyped-def]
                pixels = torch.stack([transform(image.convert("RGB"))], dim=0)
                tokens = tokenizer(
                    q.lower(), padding="max_length", truncation=True, max_length=25, return_tensors="pt"
                )
                with torch.no_grad():
                    return model(collate_fn({"image": pixels, "question": tokens}, torch.device("cpu")))[
                        "text"
                    ]

            how = "modelscope model + pipeline preprocessing"
    return (lambda pics, questions: [[ask(image, q) for q in questions] for image in pics]), how


def load_batched(
    folder: Path, count: int, questions: list[str]
) -> tuple[Callable[..., list[list[str]]], str]:
    from dpgbench.judges.mplug import MplugJudge, MplugJudgeConfig

    judge = MplugJudge(MplugJudgeConfig(model=str(folder)))  # default batch sizes
    return (lambda pics, qs: judge.ask_batch(pics, [qs] * len(pics))), "dpgbench mplug-large judge, ask_batch"


def child(mode: str, folder: Path, count: int, questions: list[str]) -> None:
    start = time.perf_counter()
    if mode == "official":
        answer_all, how = load_official(folder)
    else:
        answer_all, how = load_batched(folder, count, questions)
    answer_all(images(1), questions[:1])  # warm-up: first-call allocations are not timed
    load = time.perf_counter() - start
    pics = images(count)
    start = time.perf_counter()
    answers = answer_all(pics, questions)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"answers": answers, "seconds": seconds, "load": load, "peak_mb": peak_mb, "how": how}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--questions", type=int, default=8, help="questions per image (at most 8)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/dpgbench-bench-mplug-large-random-s3"))
    parser.add_argument("--mode", choices=["official", "batched"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    questions = QUESTIONS[: args.questions]
    if args.mode:
        child(args.mode, args.folder, args.images, questions)
        return

    if not (args.folder / "pytorch_model.bin").is_file():
        import tiny_mplug

        start = time.perf_counter()
        tiny_mplug.build_mplug(args.folder, size="large", prefer=("yes", "no"), init_std=0.02, stride_layer=3)
        print(
            f"built a random-weight mPLUG-large folder in {time.perf_counter() - start:.0f} s: {args.folder}"
        )

    results = {}
    for mode in ("batched", "official"):
        cmd = [sys.executable, "-W", "ignore", __file__, "--mode", mode, "--folder", str(args.folder),
               "--images", str(args.images), "--questions", str(args.questions)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])

    total = args.images * len(questions)
    ours, official = results["batched"], results["official"]
    same = ours["answers"] == official["answers"]
    yes = sum(a == "yes" for row in ours["answers"] for a in row)
    print(f"mPLUG-large (random weights, real sizes), CPU, {args.images} images x {len(questions)} questions")
    print(f"official ({official['how']}): {total / official['seconds']:.3f} questions/s, "
          f"{official['seconds']:.1f} s, peak {official['peak_mb']:.0f} MB")  # fmt: skip
    print(f"batched  ({ours['how']}): {total / ours['seconds']:.3f} questions/s, "
          f"{ours['seconds']:.1f} s, peak {ours['peak_mb']:.0f} MB")  # fmt: skip
    print(
        f"speed-up: {official['seconds'] / ours['seconds']:.2f}x; identical answers: {same} ({yes} yes / {total})"
    )


if __name__ == "__main__":
    main()
