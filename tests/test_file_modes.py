"""Issue 26: every file clue-run writes has the mode the user's umask gives (checkpoint weights included:
safetensors writes 0600 temporary files), so a colleague can load a shared checkpoint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import json, os, sys
from clue_runner import api
from clue_runner.config import build_config
raw = json.loads(sys.argv[1])
for mask in (0o022, 0o077):  # one process, the umask set before each run
    os.umask(mask)
    raw["output_dir"] = f"{sys.argv[2]}/{mask:03o}"
    run = api.train(build_config(raw), log=lambda _: None)
    print(f"{mask:03o}", run)
"""


def modes_of(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.lstat().st_mode) for p in [directory, *directory.rglob("*")]}


def test_run_files_and_best_have_the_umasks_mode(tiny_model, data_dir, tmp_path):
    raw = {"task": "cmrc2018", "model": {"name": str(tiny_model)},  # a head with weights of its own (head.safetensors)
           "data": {"dir": str(data_dir), "train_split": "trial", "max_length": 64, "max_train_examples": 8,
                    "max_eval_examples": 8},
           "head": {"stride": 16}, "train": {"batch_size": 8, "max_steps": 1}}
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(raw), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    for mask, run in runs.items():
        modes = modes_of(Path(run))
        assert {"best/model.safetensors", "best/head.safetensors", "run.json", "config.yaml"} <= modes.keys()
        wrong = {name: oct(mode) for name, mode in modes.items()
                 if mode != (0o777 if (Path(run) / name).is_dir() else 0o666) & ~int(mask, 8)}
        assert not wrong, (mask, wrong)


def test_atomic_writers_follow_the_umask(tmp_path):
    from safetensors.torch import save_file
    import torch

    from clue_runner.storage import atomic_dir, atomic_write_text, umask

    old = os.umask(0o027)
    try:
        assert umask() == 0o027
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(1)}, str(tmp / "model.safetensors"))  # written 0600 by safetensors
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o640
