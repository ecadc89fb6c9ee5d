"""What the benchmarks share: the transformers Trainer fed clue-run's own head and tokens, CPU-time
clocks, and per-run peak RSS (bench/speed.py, bench/methods.py)."""

from __future__ import annotations

import contextlib
import time
import types
from pathlib import Path

import torch


class TrainerModel(torch.nn.Module):
    """Our exact head, with the (loss, logits) return the transformers Trainer expects."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        logits = self.head(**batch)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = self.head.loss(logits, {**batch, "labels": labels})
        return out


def trainer_rows(enc) -> list[dict]:
    """Encoded items of a one-sequence head as the Trainer's dataset rows: the same token ids (and
    type ids) clue-run trains on, so both systems see identical tokens."""
    seg = enc.segments[""]

    def row(i):
        span = slice(seg.offsets[i], seg.offsets[i + 1])
        out = {"input_ids": seg.ids[span].tolist(), "labels": int(enc.labels[i])}
        if seg.type_ids is not None:
            out["token_type_ids"] = seg.type_ids[span].tolist()
        return out

    return [row(i) for i in range(len(enc))]


@contextlib.contextmanager
def cpu_clocks():
    """clue-run's trainer and evaluation clocks read process CPU time: on a shared machine wall time
    measures the neighbours (run.json's train_seconds and samples/s become CPU-time based)."""
    from clue_runner.engine import evaluate, trainer

    # both names: the trainer also reads process_time for run.json's train_cpu_seconds
    clock = types.SimpleNamespace(perf_counter=time.process_time, process_time=time.process_time)
    saved = trainer.time, evaluate.time
    trainer.time = evaluate.time = clock
    try:
        yield
    finally:
        trainer.time, evaluate.time = saved


def _status_mib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(text.split(f"{key}:")[1].split()[0]) / 1024  # kB


def rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def reset_peak_rss() -> None:
    """Free what the previous run left, then start a new peak-RSS mark at the current RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
