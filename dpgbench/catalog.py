"""Benchmarks by name: where their question files come from, how they are authenticated, where they live.

`dpgbench data fetch NAME` downloads a pinned upstream file into the user cache and refuses it unless its
hash matches; every command that takes prompts resolves a benchmark name or a path through `resolve`.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dpgbench.data import GraphSet, load_graphs, sha256_file
from dpgbench.errors import DpgBenchError

PACKAGE_PROMPTS = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class Benchmark:
    name: str
    filename: str
    url: str  # pinned to a commit; "" for files shipped with dpgbench
    git_blob: str = ""  # expected `git hash-object` of the file, when that is what upstream publishes
    sha256: str = ""
    description: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "dpg-bench",
            "dpg_bench.csv",
            "https://raw.githubusercontent.com/TencentQQGYLab/ELLA/"
            "3c228f1dc6c4d3cad0a47493816151a419f14db3/dpg_bench/dpg_bench.csv",
            git_blob="98457fc9901943f51ff9a30367250fc292533bed",
            description="DPG-Bench (ELLA paper): 1,065 dense prompts, question graphs, 5 L1 / 13 L2 categories",
        ),
        Benchmark(
            "dsg-1k",
            "dsg-1k-anns.csv",
            "https://raw.githubusercontent.com/j-min/DSG/"
            "7330119a39f76ff90e619a8bd3ff321e71aa986b/dsg/data/dsg-1k-anns.csv",
            sha256="b7ce06ea8a0478ccfd8fba105ecd26d7d301eb99d5c412987546c4cc8e08917a",
            description="DSG-1k (Davidsonian Scene Graph paper): 1,060 prompts, 8,182 questions",
        ),
        Benchmark(
            "tifa160",
            "tifa160-dev-anns.csv",
            "https://raw.githubusercontent.com/j-min/DSG/"
            "7330119a39f76ff90e619a8bd3ff321e71aa986b/dsg/data/tifa160-dev-anns.csv",
            sha256="5f79461a24112992084b8e785209b0c7c6fba14a9cd3a0d5437316e3f44da886",
            description="TIFA-160 prompts with DSG question graphs",
        ),
        Benchmark(
            "demo", "demo.csv", "", description="12 dense prompts written for dpgbench's demo (shipped)"
        ),
    )
}


def cache_dir() -> Path:
    root = os.environ.get("DPGBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dpgbench"
    )
    return Path(root)


def git_blob_id(path: Path) -> str:
    """What `git hash-object FILE` prints: sha1 of 'blob <size>\\0' + content."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_path(benchmark: Benchmark) -> Path:
    if not benchmark.url:
        return PACKAGE_PROMPTS / benchmark.filename
    return cache_dir() / benchmark.filename


def verify(benchmark: Benchmark, path: Path, source: str | None = None) -> None:
    """Raise unless the file is the pinned upstream file; `source` names it in the message (the user's copy
    or the URL, not the temporary file it was downloaded to)."""
    where = source or str(path)
    if benchmark.git_blob:
        got = git_blob_id(path)
        if got != benchmark.git_blob:
            raise DpgBenchError(
                f"{where}: git blob id {got} is not the official {benchmark.git_blob}; "
                f"this is not the pinned {benchmark.name} file, get it from {benchmark.url}"
            )
    if benchmark.sha256:
        got = sha256_file(path)
        if got != benchmark.sha256:
            raise DpgBenchError(
                f"{where}: sha256 {got} is not the pinned {benchmark.sha256}; get the file from {benchmark.url}"
            )


def fetch(name: str, local_copy: Path | None = None, url: str | None = None) -> Path:
    """Download (or copy `local_copy`), verify, and place the benchmark file in the cache."""
    benchmark = get(name)
    if not benchmark.url:
        return local_path(benchmark)
    target = local_path(benchmark)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{benchmark.filename}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if local_copy is not None:
            if not local_copy.is_file():
                raise DpgBenchError(
                    f"{local_copy}: no such file; give the path of your copy of {benchmark.filename}"
                )
            shutil.copyfile(local_copy, tmp)
            source = str(local_copy)
        else:
            source = url or benchmark.url
            try:
                with urllib.request.urlopen(source, timeout=60) as response, open(tmp, "wb") as f:
                    shutil.copyfileobj(response, f)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DpgBenchError(
                    f"could not download {source} ({reason}); offline? Check the network, or download the file elsewhere "
                    f"and run `dpgbench data fetch {name} --csv PATH`"
                ) from None
        verify(benchmark, tmp, source)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def get(name: str) -> Benchmark:
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    close = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DpgBenchError(f"unknown benchmark '{name}'.{hint} Known: {', '.join(BENCHMARKS)}; or give a path")


def resolve(spec: str) -> GraphSet:
    """A benchmark name (fetched or shipped) or a path to a .csv/.jsonl file or a folder of .txt prompts."""
    if spec in BENCHMARKS:
        benchmark = BENCHMARKS[spec]
        path = local_path(benchmark)
        if not path.exists():
            raise DpgBenchError(
                f"{spec} is not downloaded yet: run `dpgbench data fetch {spec}` "
                f"(or `dpgbench data fetch {spec} --csv PATH` with a local copy)"
            )
        return load_graphs(path, spec)
    path = Path(spec)
    if not path.exists():
        close = difflib.get_close_matches(spec, list(BENCHMARKS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DpgBenchError(
            f"'{spec}' is neither a benchmark ({', '.join(BENCHMARKS)}) nor an existing path.{hint}"
        )
    return load_graphs(path)
