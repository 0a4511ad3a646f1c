"""The HTML report: one self-contained static page per run (or two runs side by side) that opens offline.

Summary tables and plots first, then per prompt: thumbnails (JPEG data URIs; a click opens the original
image by a relative link), the question graph as a tree and every image's answer, with questions
invalidated by a failed parent marked. Filters, sorting and paging run in the page's own script
(`report_assets/`), reading one JSON block; there is no external file, font or network access.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dpgbench import __version__
from dpgbench.data import write_atomic
from dpgbench.errors import DpgBenchError
from dpgbench.scored import L1_ORDER, PromptDetail, RunDetail, category_order
from dpgbench.scoring import PROTOCOLS, is_yes

ASSETS = Path(__file__).resolve().parent / "report_assets"

# Per image and question, one character for the page: final yes, final no, yes invalidated by a failed
# parent, not counted by this protocol, image missing, image present but the judge gave no answer.
YES, NO, INVALIDATED, NOT_COUNTED, MISSING, UNANSWERED = "1", "0", "x", "-", "m", "u"


@dataclass
class ReportConfig:
    protocol: str = "strict"  # what the page shows first; all protocols are in it
    thumb_size: int = 128  # longest side of a thumbnail, pixels
    jpeg_quality: int = 80
    page_size: int = 25  # prompts per page
    plots: bool = True
    workers: int = 0  # threads that make thumbnails; 0 = one per CPU
    # Keep each thumbnail in RUN/thumbnails/<size>px-q<quality>/<image sha256>.jpg: decoding 1024 px PNGs is
    # most of a report's time, and the next report of the run (another protocol, side by side) reuses them.
    cache: bool = True


@dataclass
class ReportSummary:
    path: Path
    prompts: int
    images: int  # thumbnails embedded
    missing_images: int
    invalidated: dict[str, int]  # protocol -> question-image pairs invalidated by a failed parent (run A)
    bytes: int
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    thumbnails_reused: int = 0  # read from the runs' thumbnail caches instead of decoding the image


def image_states(detail: PromptDetail, protocol: str) -> list[str]:
    """One string per image, one character per question of the prompt (see YES ... UNANSWERED)."""
    states = []
    questions = detail.prompt.questions
    for answers, finals in zip(detail.answers, detail.finals[protocol]):
        chars = []
        for q, final in zip(questions, finals):
            if answers is None:
                chars.append(MISSING)
            elif final is None:
                chars.append(NOT_COUNTED)
            elif final:
                chars.append(YES)
            elif q.question not in answers:
                chars.append(UNANSWERED)
            elif is_yes(answers[q.question], protocol):
                chars.append(INVALIDATED)  # the judge said yes; a parent's failure zeroed it
            else:
                chars.append(NO)
        states.append("".join(chars))
    return states


def thumbnail_jpeg(path: Path, size: int, quality: int) -> bytes | None:
    """The image shrunk to `size` on its longest side, as JPEG bytes; None if it cannot be read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG sources decode at reduced size directly
            small = image.convert("RGB")
            small.thumbnail((size, size), Image.Resampling.BICUBIC)
    except (OSError, UnidentifiedImageError, SyntaxError):
        return None
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def thumbnail(path: Path, size: int, quality: int) -> str | None:
    """A JPEG data URI of the image shrunk to `size` on its longest side; None if it cannot be read."""
    data = thumbnail_jpeg(path, size, quality)
    return None if data is None else _data_uri(data)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnail_cache(run_root: Path, config: ReportConfig) -> Path:
    return run_root / "thumbnails" / f"{config.thumb_size}px-q{config.jpeg_quality}"


def _thumbnails(
    details: Sequence[RunDetail], config: ReportConfig, on_image: Callable[[int], None] | None
) -> tuple[dict[tuple[int, str, int], str | None], int]:
    """Data URIs per (run, item_id, image index), and how many came from a cache."""
    jobs = [
        (
            (r, d.prompt.item_id, image.index),
            run.run.run_root / image.file,
            thumbnail_cache(run.run.run_root, config) / f"{image.sha256}.jpg"
            if config.cache and image.sha256
            else None,
        )
        for r, run in enumerate(details)
        for d in run.prompts
        for image in d.images
        if image.problem is None and image.file and run.run.run_root is not None
    ]

    def make(
        job: tuple[tuple[int, str, int], Path, Path | None],
    ) -> tuple[tuple[int, str, int], str | None, bool]:
        key, source, cached = job
        data, reused = None, False
        if cached is not None:
            with contextlib.suppress(OSError):
                data, reused = cached.read_bytes(), True  # named by the image's sha256: never stale
        if data is None:
            data = thumbnail_jpeg(source, config.thumb_size, config.jpeg_quality)
            if data is not None and cached is not None:
                # A read-only run folder: the report still works, the next one decodes again.
                with contextlib.suppress(OSError):
                    write_atomic(cached, data, durable=False)
        if on_image:
            on_image(1)
        return key, None if data is None else _data_uri(data), reused

    # Decoding and resizing release the GIL in Pillow, so threads use every core without pickling.
    workers = config.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        made = list(pool.map(make, jobs))
    return {key: uri for key, uri, _ in made}, sum(reused for _, _, reused in made)


def _run_summary(detail: RunDetail, protocol_order: Sequence[str]) -> dict[str, Any]:
    run = detail.run
    backend = (run.run_manifest or {}).get("backend", {})
    return {
        "label": run.label,
        "judge": run.judge_label,
        "backend": backend.get("name", ""),
        "model": backend.get("model", ""),
        "folder": str(run.run_root),
        "overall": {p: detail.results[p].overall for p in protocol_order},
        "n": {p: detail.results[p].n for p in protocol_order},
        "excluded": {p: len(detail.results[p].excluded) for p in protocol_order},
        "l1": {p: {c: [s.score, s.n] for c, s in detail.results[p].l1.items()} for p in protocol_order},
        "l2": {p: {c: [s.score, s.n] for c, s in detail.results[p].l2.items()} for p in protocol_order},
    }


def report_data(
    details: Sequence[RunDetail],
    out: Path,
    thumbs: dict[tuple[int, str, int], str | None],
    config: ReportConfig,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able object (prompts in the first run's order)."""
    first = details[0]
    others = [run.by_id() for run in details[1:]]
    l1 = category_order({q.l1 for d in first.prompts for q in d.prompt.questions} | set(L1_ORDER))
    l2 = category_order({q.l2 for d in first.prompts for q in d.prompt.questions})
    prompts = []
    for detail in first.prompts:
        p = detail.prompt
        pairs = [detail] + [o.get(p.item_id) for o in others]
        entry: dict[str, Any] = {
            "id": p.item_id,
            "text": p.text,
            "q": [[q.proposition_id, q.question, q.l2, list(q.parents)] for q in p.questions],
            "runs": [],
        }
        for r, d in enumerate(pairs):
            if d is None:
                entry["runs"].append(None)
                continue
            root = details[r].run.run_root
            entry["runs"].append(
                {
                    "score": {proto: d.scores.get(proto) for proto in PROTOCOLS},
                    "excluded": d.excluded,
                    "images": [
                        {
                            "thumb": thumbs.get((r, p.item_id, image.index)),
                            "src": _relative(root / image.file, out) if root and image.file else None,
                            "problem": image.problem
                            or (None if thumbs.get((r, p.item_id, image.index)) else "unreadable image"),
                        }
                        for image in d.images
                    ],
                    "raw": [
                        None if a is None else [a.get(q.question) for q in d.prompt.questions]
                        for a in d.answers
                    ],
                    "state": {proto: image_states(d, proto) for proto in PROTOCOLS},
                }
            )
        prompts.append(entry)
    return {
        "title": "DPG-Bench report: " + " vs ".join(run.run.label for run in details),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "version": __version__,
        "protocols": list(PROTOCOLS),
        "protocol": config.protocol,
        "page_size": config.page_size,
        "categories": {"l1": l1, "l2": l2},
        "runs": [_run_summary(d, PROTOCOLS) for d in details],
        "questions": {"name": first.graphs.name, "sha256": first.graphs.sha256},
        "prompts": prompts,
        "warnings": _warnings(details),
    }


def _warnings(details: Sequence[RunDetail]) -> list[str]:
    notes = []
    if len(details) == 2 and details[0].run.judge_identity != details[1].run.judge_identity:
        notes.append(
            f"The two runs were judged differently ({details[0].run.judge_label} vs "
            f"{details[1].run.judge_label}): differences mix the models and the judges."
        )
    return notes


def _relative(target: Path, out: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out.resolve().parent)).as_posix()


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def render(data: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The HTML text: the template with the CSS, script, data and plot images inlined."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # "<" occurs only inside JSON strings; escaped, no "</script>" or "<!--" in a prompt can end the block.
    payload = payload.replace("<", "\\u003c")
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, png in plots.items()
    )
    values = {
        "TITLE": html.escape(data["title"]),
        "CSS": _asset("report.css"),
        "PLOTS": figures
        or "<p class=\"note\">No plots (they need matplotlib: pip install 'dpgbench[report]').</p>",
        "DATA": payload,
        "JS": _asset("report.js"),
    }
    # One pass, so text inserted from the data is never scanned for placeholders again.
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], _asset("report.html"))


def _clean(obj: Any) -> Any:
    """NaN (a protocol with no prompt) becomes null, which JSON has and the page shows as '-'."""
    if isinstance(obj, float):
        return None if obj != obj else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def build_report(
    details: Sequence[RunDetail],
    out: str | Path,
    config: ReportConfig | None = None,
    on_image: Callable[[int], None] | None = None,
) -> ReportSummary:
    """Write the page (and its plots as PNG next to it); one run, or two shown side by side."""
    start = time.perf_counter()
    config = config or ReportConfig()
    out = Path(out)
    if not 1 <= len(details) <= 2:
        raise DpgBenchError(f"a report shows one run or two side by side, not {len(details)}")
    if config.protocol not in PROTOCOLS:
        raise DpgBenchError(f"--protocol {config.protocol}: choose one of {', '.join(PROTOCOLS)}")
    if len(details) == 2 and details[0].graphs.sha256 != details[1].graphs.sha256:
        raise DpgBenchError(
            f"{details[0].run.label} and {details[1].run.label} were scored on different question graphs "
            f"({details[0].graphs.name} vs {details[1].graphs.name}); side by side needs the same questions"
        )
    if out.suffix.lower() not in (".html", ".htm"):
        raise DpgBenchError(f"--out {out}: name the report file with .html")
    thumbs, reused = _thumbnails(details, config, on_image)
    data = _clean(report_data(details, out, thumbs, config))
    first = details[0]
    summary = ReportSummary(out, len(data["prompts"]), sum(1 for v in thumbs.values() if v), 0, {}, 0)
    summary.thumbnails_reused = reused
    # As the page counts them: no image, or a file that cannot be read (run A).
    summary.missing_images = sum(
        1 for p in data["prompts"] for image in p["runs"][0]["images"] if image["problem"]
    )
    summary.invalidated = {
        p: sum(s.count(INVALIDATED) for d in first.prompts for s in image_states(d, p)) for p in PROTOCOLS
    }
    plots: dict[str, bytes] = {}
    if config.plots:
        plots = _plots(details, config.protocol, out, summary)
    text = render(data, plots)
    write_atomic(out, text)
    summary.bytes = len(text.encode())
    summary.notes.extend(data["warnings"])
    summary.seconds = time.perf_counter() - start
    return summary


def _plots(
    details: Sequence[RunDetail], protocol: str, out: Path, summary: ReportSummary
) -> dict[str, bytes]:
    """Category bars and score distributions, saved as PNG next to the page and embedded in it."""
    from dpgbench import plots

    l1 = category_order({c for d in details for c in d.results[protocol].l1} | set(L1_ORDER))
    scores = {d.run.label: {c: s.score for c, s in d.results[protocol].l1.items()} for d in details}
    prompt_scores = {d.run.label: list(d.results[protocol].prompts.values()) for d in details}
    made = {
        "categories": plots.category_bars(scores, l1, f"L1 categories ({protocol})"),
        "distribution": plots.score_histogram(prompt_scores, f"Prompt scores ({protocol})"),
    }
    pngs = {}
    for name, figure in made.items():
        path = out.with_name(f"{out.stem}.{name}.png")
        pngs[f"{name} ({protocol})"] = plots.save_png(figure, path)
        summary.plots.append(path)
    return pngs
