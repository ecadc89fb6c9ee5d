"""The device a process computes on (engine.device), with the launcher's environment faked on a CPU."""

import pytest
import torch

from clue_runner.config import build_config
from clue_runner.engine import device as device_mod
from clue_runner.errors import ClueRunError


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA devices, as far as device selection can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    return monkeypatch


def launched(monkeypatch, world_size: int, rank: int, local_rank: int) -> None:
    for name, value in (("WORLD_SIZE", world_size), ("RANK", rank), ("LOCAL_RANK", local_rank)):
        monkeypatch.setenv(name, str(value))


def test_a_distributed_launch_takes_the_gpu_of_its_local_rank(two_gpus):
    launched(two_gpus, world_size=4, rank=3, local_rank=1)  # two machines of two GPUs: the second GPU here
    assert device_mod.pick_device("auto") == torch.device("cuda", 1)
    assert device_mod.pick_device("cuda") == torch.device("cuda", 1)
    assert device_mod.pick_device("cpu") == torch.device("cpu")


def test_one_process_takes_the_current_gpu(two_gpus):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        two_gpus.delenv(name, raising=False)
    assert device_mod.pick_device("auto") == torch.device("cuda")  # as before: no index, run.json says "cuda"


def test_more_processes_than_gpus_is_refused(two_gpus):
    launched(two_gpus, world_size=3, rank=2, local_rank=2)
    with pytest.raises(ClueRunError, match="LOCAL_RANK 2: this machine has 2 CUDA devices"):
        device_mod.pick_device("auto")


def test_no_gpu_refuses_cuda_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    launched(monkeypatch, world_size=2, rank=1, local_rank=1)
    assert device_mod.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ClueRunError, match="no CUDA device"):
        device_mod.pick_device("cuda")


def test_build_moves_the_model_to_the_local_rank_gpu_only(two_gpus, tiny_model, data_dir):
    """The first and only move of the built model is to cuda:LOCAL_RANK (not to GPU 0 first)."""
    from clue_runner.engine.build import build

    launched(two_gpus, world_size=2, rank=1, local_rank=1)
    moves = []
    two_gpus.setattr(torch.nn.Module, "to", lambda module, *args, **kwargs: moves.append(args[0]) or module)
    cfg = build_config({"task": "fewclue_eprstmt", "model": {"name": str(tiny_model), "trim_vocab": False},
                        "data": {"dir": str(data_dir)}, "train": {"max_steps": 0}})
    built = build(cfg)
    assert moves == [torch.device("cuda", 1)]
    assert built.device == torch.device("cuda", 1) and built.amp == torch.bfloat16
