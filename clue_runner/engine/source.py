"""Where a backbone loads from: the configured model (its vocabulary trimmed to the tasks' texts when
that is on) or a run's best/, with the tokenizer that goes with it and the checks made before loading."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..config import ExperimentConfig
from ..data.parsers import choice_text
from ..data.splits import load_split
from ..errors import ClueRunError, ConfigError, DataError
from ..methods import Method
from ..models import load_model_config, load_tokenizer, resolve_model
from ..models.backbone import decoder_tokenizer, is_decoder
from ..paths import cache_root
from ..tasks import TaskSpec


def task_texts(task: TaskSpec, data_dir: Optional[str]) -> list[str]:
    """Every input text of every split file the task has in the data directory (all variants)."""
    texts = []
    variants = task.data.variants or [None]
    seen = set()
    for split in task.data.splits:
        for variant in variants:
            name = str(task.split_file(split, variant))
            if name in seen:
                continue
            seen.add(name)
            try:
                data = load_split(task, split, data_dir=data_dir, variant=variant, on_bad_row="skip")
            except DataError:
                continue  # e.g. a split this download does not have
            texts += example_texts(data.examples)
    return texts


def example_texts(examples) -> list[str]:
    """The input texts of examples as the featurizers see them (choices joined to their context)."""
    texts = []
    for ex in examples:
        texts += [t for t in (ex.text_a, ex.text_b) if t]
        texts += [choice_text(ex.text_a, c) for c in ex.extra.get("choices", ())]
    return texts


def trimmed_for_texts(model_path: str, texts: list[str], label: str, log: Callable[[str], None]) -> str:
    """The model trimmed to `texts` (several tasks' texts in a multi-task run), cached under `label`."""
    from ..models.trim import trim

    weights = Path(model_path) / "model.safetensors"
    key = hashlib.sha1(f"{Path(model_path).resolve()}|{weights.stat().st_mtime_ns if weights.exists() else ''}".encode())
    for t in texts:
        key.update(t.encode() + b"\x00")
    out = cache_root() / "models" / f"trimmed-{label}-{key.hexdigest()[:16]}"
    if not (out / "model.safetensors").is_file():
        report = trim(model_path, texts, out, keep_cjk_chars=True, dtype="float32")
        log(f"vocabulary trimmed for {label}: {report.pieces_before:,} → {report.pieces_after:,} pieces, "
            f"{report.params_before / 1e6:.1f}M → {report.params_after / 1e6:.1f}M parameters ({out})")
    return str(out)


def silent(message: str) -> None:
    pass


def check_positions(cfg: ExperimentConfig, model_path: str, methods: list[Method], log: Callable[[str], None]) -> None:
    """Refuse a `data.max_length` the model's learned position table cannot hold (a hint to long_positions)."""
    from ..models.positions import is_rotary, usable_positions

    config = load_model_config(model_path, cfg.model.name)
    usable = usable_positions(config)
    extended = max((m.max_positions() or 0 for m in methods), default=0)
    if usable is None or cfg.data.max_length <= max(usable, extended):
        return
    if is_rotary(config):
        log(f"{cfg.model.name}: rotary positions, no learned table: runs at {cfg.data.max_length} tokens as it is")
        return
    raise ConfigError(f"data.max_length {cfg.data.max_length} exceeds the {usable} positions of {cfg.model.name}; "
                      f"add methods: [{{name: long_positions, max_positions: {cfg.data.max_length}}}] "
                      "or use a shorter max_length")


@dataclass
class ModelSource:
    """Where the backbone loads from: the configured model (its vocabulary trimmed to the tasks' texts
    when that is on), or a run's best/ (`checkpoint`)."""

    path: str
    tokenizer: object  # None where only parameters are counted (`parameter_plan`)
    name: str  # how load messages name it
    checkpoint: Optional[Path] = None
    full_tokenizer: object = None  # reload of a trimmed run: the untrimmed tokenizer, to count mismatches

    @property
    def training(self) -> bool:
        return self.checkpoint is None

    @property
    def pad_token_id(self) -> Optional[int]:
        return self.tokenizer.pad_token_id if self.tokenizer is not None else None


def model_source(cfg: ExperimentConfig, checkpoint: Optional[Path], log: Callable[[str], None]) -> ModelSource:
    if checkpoint is not None:
        tokenizer = padded_tokenizer(str(checkpoint))
        return ModelSource(str(checkpoint), tokenizer, str(checkpoint), Path(checkpoint),
                           untrimmed_tokenizer(cfg, tokenizer))
    model_path = resolve_model(cfg.model.name)
    configs = cfg.task_configs().values()
    for tc in configs:
        check_positions(tc, model_path, tc.resolved.method_prototypes, log)  # before any cache is written
    # auto on a vocabulary that cannot or need not be trimmed: kept whole, silently (`train --dry-run` says why)
    if cfg.model.trim_vocab and not trim_skip(cfg, model_path):
        texts = [t for tc in configs for t in task_texts(tc.resolved.task, tc.data.dir)]
        model_path = trimmed_for_texts(model_path, texts, "+".join(tc.resolved.task.name for tc in configs), log)
    return ModelSource(model_path, padded_tokenizer(model_path), cfg.model.name)


def padded_tokenizer(model_path: str):
    """The model's tokenizer; a decoder's pads with EOS where it has no pad token, on the right as
    batches are padded (features.batching), and best/ saves it so for plain transformers."""
    tokenizer = load_tokenizer(model_path)
    if is_decoder(load_model_config(model_path)):
        decoder_tokenizer(tokenizer, "right")
    return tokenizer


def trim_skip(cfg: ExperimentConfig, model_path: str) -> Optional[str]:
    """Why `trim_vocab: auto` keeps this model's vocabulary whole (None: trim, or trimming is off)."""
    from ..models.trim import trim_skip_reason

    return trim_skip_reason(model_path) if cfg.model.trim_vocab == "auto" else None


def untrimmed_tokenizer(cfg: ExperimentConfig, tokenizer):
    """The configured model's full tokenizer when the run trained on a trimmed vocabulary, so text the
    trimmed vocabulary splits differently is counted; None when the vocabulary was not trimmed."""
    if not cfg.model.trim_vocab:
        return None
    try:
        full_path = resolve_model(cfg.model.name)
        if trim_skip(cfg, full_path):
            return None
        full = load_tokenizer(full_path)
    except ClueRunError as err:
        print_warning(f"warning: cannot load the untrimmed tokenizer of {cfg.model.name} to check the trimmed vocabulary: {err}")
        return None
    return full if len(full) != len(tokenizer) else None


def print_warning(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False, markup=False, soft_wrap=True)
