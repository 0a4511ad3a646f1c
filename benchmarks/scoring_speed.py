"""Scoring speed: 1,000 prompts x 4 images x ~10 questions from recorded answers, all three protocols.

Target: under 2 s on one core. Baseline measured in the same run: a transcription of upstream's per-image
loop (compute_dpg_bench.py) scoring the same answers under the official rule only.
Run: python benchmarks/scoring_speed.py
"""

from __future__ import annotations

import random
import time

from dpgbench.data import Prompt, Question
from dpgbench.scoring import score


def synthetic(n_prompts: int = 1000, seed: int = 0) -> tuple[list[Prompt], dict]:
    rng = random.Random(seed)
    prompts, answers = [], {}
    row = 0
    for p in range(n_prompts):
        n_entities = rng.randint(2, 4)
        questions = []
        for pid in range(1, rng.randint(8, 12) + 1):
            parents = (
                (0,)
                if pid <= n_entities
                else tuple(sorted(rng.sample(range(1, n_entities + 1), rng.randint(1, 2))))
            )
            category = (
                "entity - whole"
                if pid <= n_entities
                else rng.choice(["attribute - color", "relation - spatial", "other - count"])
            )
            questions.append(
                Question(pid, f"question {pid} of prompt {p}?", f"{category} (x)", parents, row=row)
            )
            row += 1
        prompts.append(Prompt(f"item{p}", f"prompt {p}", questions))
        answers[f"item{p}"] = [
            {q.question: rng.choice(["yes", "yes", "no"]) for q in questions} for _ in range(4)
        ]
    return prompts, answers


def upstream_style(prompts: list[Prompt], answers: dict) -> float:
    """Upstream's loop shape: dicts per image, cascade in row order, mean of prompt means."""
    means = []
    for prompt in prompts:
        qid2question = {q.proposition_id: q for q in prompt.questions}
        scores = []
        for image in answers[prompt.item_id]:
            qid2scores = {pid: float(image[q.question] == "yes") for pid, q in qid2question.items()}
            for pid, q in qid2question.items():
                for parent in q.parents:
                    if parent != 0 and qid2scores[parent] == 0:
                        qid2scores[pid] = 0
                        break
            scores.append(sum(qid2scores.values()) / len(qid2scores))
        means.append(sum(scores) / len(scores))
    return sum(means) / len(means) * 100


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    prompts, answers = synthetic()
    n_questions = sum(len(p.questions) for p in prompts) * 4
    ours = best_of(lambda: score(prompts, answers))
    baseline = best_of(lambda: upstream_style(prompts, answers))
    print(f"prompts: {len(prompts)}, question-image answers: {n_questions}")
    print(
        f"dpgbench, 3 protocols: {ours:.3f} s ({3 * n_questions / ours:,.0f} answers/s)  target < 2 s: "
        f"{'PASS' if ours < 2 else 'FAIL'}"
    )
    print(f"upstream-style loop, official only: {baseline:.3f} s")
    print(f"ratio dpgbench(3 protocols) / upstream(1 protocol): {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
