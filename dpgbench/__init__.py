"""dpgbench: reproducible DPG-Bench evaluation of text-to-image models.

The core (question graphs, scoring, run folders, reports, CLI) imports no torch; model code lives in
`dpgbench.backends`, `dpgbench.judges` and the separate `ella` package, imported only when used.
"""

__version__ = "0.1.0"
