"""The one exception type users see: a one-line message that names the file, the line and the fix.

cli.py prints it without a traceback (unless DPGBENCH_DEBUG=1) and exits with code 1.
"""


class DpgBenchError(Exception):
    """A problem with the user's input or environment, explained in one line with the fix."""
