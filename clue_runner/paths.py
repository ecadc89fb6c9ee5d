"""Where clue-run keeps caches (converted models, tokenized data)."""

import os
from pathlib import Path


def cache_root() -> Path:
    """`$CLUE_RUN_CACHE`, else `$XDG_CACHE_HOME/clue-run`, else `~/.cache/clue-run`."""
    if os.environ.get("CLUE_RUN_CACHE"):
        return Path(os.environ["CLUE_RUN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base).expanduser() / "clue-run"
