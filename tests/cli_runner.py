"""Run the `dpgbench` command inside the test process (no 7 s import per call), as a user would type it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def invoke(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `dpgbench ARGS`; arguments may be paths or numbers."""
    from dpgbench.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
