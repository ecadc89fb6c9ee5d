"""`clue-run`: a thin CLI over clue_runner.api. Tables go to stdout, logs and progress to stderr."""

from __future__ import annotations

import sys

from . import report, run, sweep  # noqa: F401  (each adds its commands to the app)
from .app import app

__all__ = ["app", "main"]


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
