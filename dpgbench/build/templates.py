"""Versioned LLM instruction templates: finding, hashing and filling `prompts/templates/NAME.vN.txt`.

A template is a chat: a `=== system ===` section, in-context examples as `=== user ===` / `=== assistant ===`
pairs, and a last `=== user ===` turn with `$placeholders`. Its sha256 goes into every build manifest, so a
changed template never passes for the old one.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

from dpgbench.errors import DpgBenchError

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "prompts" / "templates"
_SECTION = re.compile(r"^=== (system|user|assistant) ===[ \t]*$", re.MULTILINE)
_FILE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.txt$")


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    path: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def info(self) -> dict[str, object]:
        return {"version": self.version, "sha256": self.sha256, "path": self.path}

    def turns(self) -> list[tuple[str, str]]:
        """(role, text) pairs in file order; text before the first marker is a comment for maintainers."""
        parts = _SECTION.split(self.text)
        return [(role, body.strip()) for role, body in zip(parts[1::2], parts[2::2])]

    def messages(self, **values: str) -> list[dict[str, str]]:
        """Chat messages with the last turn's `$placeholders` filled (a missing value is an error)."""
        turns = self.turns()
        out = [{"role": role, "content": body} for role, body in turns[:-1]]
        role, body = turns[-1]
        try:
            filled = string.Template(body).substitute(values)
        except (KeyError, ValueError) as exc:
            raise DpgBenchError(
                f"{self.path}: placeholder {exc} of the last turn has no value; "
                f"this template is filled with: {', '.join(sorted(values))}"
            ) from None
        out.append({"role": role, "content": filled})
        return out


def load_template(name: str, folder: str | Path | None = None, version: int | None = None) -> Template:
    """The newest `NAME.vN.txt` in `folder` (default: the templates shipped with dpgbench), or version N."""
    root = Path(folder) if folder is not None else TEMPLATE_DIR
    found: dict[int, Path] = {}
    for path in root.glob(f"{name}.v*.txt"):
        match = _FILE.match(path.name)
        if match and match["name"] == name:
            found[int(match["version"])] = path
    if not found:
        raise DpgBenchError(f"{root}: no template {name}.vN.txt; copy one from {TEMPLATE_DIR} and edit it")
    chosen = version if version is not None else max(found)
    if chosen not in found:
        raise DpgBenchError(f"{root}: no {name}.v{chosen}.txt; versions here: {sorted(found)}")
    path = found[chosen]
    template = Template(name, chosen, str(path), path.read_text(encoding="utf-8"))
    turns = template.turns()
    if not turns or turns[0][0] != "system" or turns[-1][0] != "user":
        raise DpgBenchError(
            f"{path}: a template starts with '=== system ===' and ends with a '=== user ===' turn"
        )
    return template
