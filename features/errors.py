"""One error type for bad input, and the command-line wrapper that turns it into a one-line message."""
from __future__ import annotations

import sys
from collections.abc import Callable

from features.memory import keep_freed_memory

__all__ = ["InputError", "run_cli"]


class InputError(ValueError):
    """Bad input: the message names the file, the column and a few offending rows, on one line."""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a command's `main` (freed memory kept for reuse: `features.memory`), exiting 2 with a one-line reason (no
    traceback) on bad input."""
    keep_freed_memory()
    try:
        code = main(argv)
    except InputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
