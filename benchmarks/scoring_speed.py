"""Scoring speed: 1,000 prompts x 4 images x ~10 questions from recorded answers, all three protocols.

Target: under 2 s on one core (the process is pinned to one core where the OS allows). Measured twice:
the pure arithmetic (`scoring.score`) and the whole `score --answers` path from files (read the question
CSV and a 40,000-row answer CSV, score, write scores.csv and prompt_scores.csv), plus the CLI command
itself in a fresh process (interpreter start and imports included). Baseline in the same run: upstream's
per-image loop shape (compute_dpg_bench.py) scoring the same answers under the official rule only.
Run: python benchmarks/scoring_speed.py
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpgbench.answers import read_answer_table, write_score_tables
from dpgbench.data import Prompt, Question, load_csv, save_graphs
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
                Question(
                    pid,
                    f"Is question {pid} of prompt {p} true?",
                    f"{category} (x)",
                    parents,
                    keywords="x",
                    category_broad=category.split(" - ")[0],
                    category_detailed="d",
                    row=row,
                )
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


def write_files(folder: Path, prompts: list[Prompt], answers: dict) -> tuple[Path, Path]:
    questions = folder / "questions.csv"
    save_graphs(prompts, questions)
    lines = ["item_id,image_index,proposition_id,answer"]
    for prompt in prompts:
        for index, image in enumerate(answers[prompt.item_id]):
            lines += [
                f"{prompt.item_id},{index},{q.proposition_id},{image[q.question]}" for q in prompt.questions
            ]
    table = folder / "answers.csv"
    table.write_text("\n".join(lines) + "\n")
    return questions, table


def from_files(questions: Path, table: Path, out: Path) -> None:
    graphs = load_csv(questions)
    recorded = read_answer_table(table, graphs)
    write_score_tables(out, score(graphs.prompts, recorded.answers, n_images=recorded.n_images))


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    prompts, answers = synthetic()
    n_questions = sum(len(p.questions) for p in prompts) * 4
    ours = best_of(lambda: score(prompts, answers))
    baseline = best_of(lambda: upstream_style(prompts, answers))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        questions, table = write_files(folder, prompts, answers)
        files = best_of(lambda: from_files(questions, table, folder / "lib"))
        command = [sys.executable, "-m", "dpgbench.cli", "score", "--questions", str(questions)]
        command += ["--answers", str(table), "--out", str(folder / "cli")]
        cli = best_of(lambda: subprocess.run(command, check=True, capture_output=True))
    print(f"prompts: {len(prompts)}, question-image answers: {n_questions}, on one core")
    for label, seconds in (
        ("scoring.score, 3 protocols", ours),
        ("from files (read CSVs, score, write tables)", files),
        ("`dpgbench score --answers` in a new process", cli),
    ):
        verdict = "PASS" if seconds < 2 else "FAIL"
        print(f"{label}: {seconds:.3f} s ({n_questions / seconds:,.0f} answers/s)  target < 2 s: {verdict}")
    print(f"upstream-style loop, official only: {baseline:.3f} s")
    print(f"ratio dpgbench(3 protocols) / upstream(1 protocol): {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
