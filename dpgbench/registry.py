"""Names of backends and judges -> lazily imported classes, their config dataclasses and help.

A table maps a name to "module:Class" so listing names never imports torch. Each class carries a
`Config` dataclass whose fields are the `--backend-arg` / `--judge-arg` keys, with defaults shown by
`dpgbench ls backends --verbose`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dpgbench.errors import DpgBenchError


@dataclass(frozen=True)
class Entry:
    """One registered implementation: where it lives and which pip extra it needs."""

    target: str  # "package.module:Class"
    extra: str  # pip extra that installs its dependencies ("" = core)
    summary: str


def lookup(table: Mapping[str, Entry], name: str, kind: str) -> Entry:
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DpgBenchError(
        f"unknown {kind} '{name}'.{hint} Run `dpgbench ls {kind}s` to see all {len(table)} of them."
    )


def load_class(table: Mapping[str, Entry], name: str, kind: str) -> type:
    entry = lookup(table, name, kind)
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise missing_package(entry, name, kind, exc) from exc
    cls: type = getattr(module, class_name)
    return cls


def missing_package(entry: Entry, name: str, kind: str, exc: ImportError) -> DpgBenchError:
    """The one-line fix for an ImportError, whether at module import or (lazily) in the constructor."""
    extra = entry.extra or "all"
    missing = exc.name or str(exc)
    torch_rule = (
        " (install torch first, in its own pip call: see the README)"
        if missing.split(".")[0] in ("torch", "torchvision")
        else ""
    )
    return DpgBenchError(
        f"{kind} '{name}' needs a package that is not installed ({missing}): "
        f"pip install 'dpgbench[{extra}]'{torch_rule}"
    )


def create(table: Mapping[str, Entry], name: str, kind: str, args: Mapping[str, str]) -> Any:
    """Instantiate `name` with its Config built from string arguments (CLI `key=value` pairs)."""
    cls = load_class(table, name, kind)
    config = parse_config(cls.Config, args, kind=kind, name=name)  # type: ignore[attr-defined]
    try:
        return cls(config)
    except ModuleNotFoundError as exc:  # backends and judges import torch etc. lazily, here
        raise missing_package(lookup(table, name, kind), name, kind, exc) from exc


def parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    """['steps=30', 'dtype=fp16'] -> {'steps': '30', 'dtype': 'fp16'}."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DpgBenchError(f"{flag} '{pair}' is not key=value: write it like {flag} steps=30")
        out[key.strip()] = value.strip()
    return out


def parse_config(config_cls: type, args: Mapping[str, str], *, kind: str, name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for key, text in args.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise DpgBenchError(
                f"{kind} '{name}' has no option '{key}'.{hint} "
                f"Options: {', '.join(fields)} (see `dpgbench ls {kind}s --verbose`)"
            )
        values[key] = convert(text, hints[key], f"{kind} option {key}")
    return config_cls(**values)


def convert(text: str, hint: Any, what: str) -> Any:
    """Turn a CLI string into the annotated type (str, int, float, bool, Optional[...], tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null", "") and len(options) < len(typing.get_args(hint)):
            return None
        return convert(text, options[0], what)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return tuple(convert(part, inner, what) for part in text.split(",") if part.strip())
    if hint is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise DpgBenchError(f"{what}: '{text}' is not a boolean; use true or false")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise DpgBenchError(f"{what}: '{text}' is not a number ({hint.__name__} expected)") from None
    return text


def describe(config_cls: type) -> list[tuple[str, str, str, str]]:
    """(option, type, default, help) for each Config field, for `ls --verbose`."""
    rows = []
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        rows.append((f.name, type_name, default, str(f.metadata.get("help", ""))))
    return rows
