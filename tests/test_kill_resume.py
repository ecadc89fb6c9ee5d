"""The kill harness: `clue-run train` SIGKILLed at named points (CLUE_RUN_KILL_AT) across tokenization,
training, evaluation, checkpoint saving, best/ saving and result writing, and at random times; then
resumed (or, where the kill came before a run directory existed, started again) until it finishes.
Every run must end with the same history, best scores and bit-identical best/ weights as an
uninterrupted run, and leave no temporary file behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SERVER = Path(__file__).with_name("kill_server.py")
KILLED = -9
LEFTOVER = re.compile(r"\.(tmp|partial|old)$")

# (name, kill points of the successive processes, own empty token cache)
NAMED = [
    ("tokenize-train", ["tokenized:1"], True),
    ("tokenize-eval", ["tokenized:2"], True),
    ("token-cache-write", ["atomic-rename:1"], True),  # tmp written, not renamed
    ("run-dir-staged", ["config-written:1"], False),
    ("before-first-checkpoint", ["train-batch:1"], False),
    ("mid-training", ["train-batch:3"], False),
    ("evaluation-1", ["evaluated:1"], False),
    ("evaluation-5", ["evaluated:5"], False),
    ("checkpoint-1", ["checkpoint-saved:1"], False),
    ("checkpoint-made-best", ["checkpoint-saved:2"], False),  # committed, best/ not yet written
    ("checkpoint-interval", ["checkpoint-saved:3"], False),  # step 4: no improvement, checkpoint_every
    ("last-checkpoint", ["checkpoint-saved:4"], False),  # after the last commit (step 8), before run.json
    ("best-written-1", ["best-written:1"], False),
    ("best-written-2", ["best-written:2"], False),
    ("best-swap", ["dir-swap:1"], False),  # between the renames that swap best/ in
    ("best-saved-2", ["best-saved:2"], False),
    ("result-written", ["result-written:1"], False),  # run.json written, resume state not yet removed
    ("rebuilding-best", ["checkpoint-saved:2", "best-saved:1"], False),  # killed again while resume repairs best/
    ("kill-resumes", ["train-batch:3", "train-batch:3", "evaluated:2"], False),
    ("resume-at-last-checkpoint", ["checkpoint-saved:4", "atomic-rename:1"], False),
]
RANDOM_KILLS = 3  # chains of two kills at random times


def config(tiny_model, data_dir, out) -> dict:
    return {
        "task": "fewclue_eprstmt",
        "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 32, "max_train_examples": 64, "max_eval_examples": 48},
        # 8 steps, evaluated after each; the best improves at steps 1 and 2 (two best/ saves); resume
        # state is committed at those two and at steps 4 and 8 (checkpoint_every); evaluations 3 and
        # 5-7 commit nothing, so a kill there redoes training from the commit before
        "train": {"batch_size": 8, "epochs": 1, "lr": 5e-3, "warmup": 0.0, "eval_every": 1, "checkpoint_every": 4,
                  "seed": 7},
        "output_dir": str(out),
    }


class Server:
    def __init__(self, log_dir: Path):
        env = {**os.environ, "CLUE_RUN_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.log_dir, self.count = log_dir, 0

    def run(self, args: list[str], env: dict, kill_after: float | None = None) -> tuple[int, str]:
        self.count += 1
        log = self.log_dir / f"{self.count:03d}.log"
        job = {"args": args, "env": env, "log": str(log), "kill_after": kill_after}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["returncode"], log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def harness(tiny_model, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    server = Server(root)
    cache = root / "cache"
    ref_cfg = root / "ref.yaml"
    ref_cfg.write_text(yaml.safe_dump(config(tiny_model, data_dir, root / "ref")), encoding="utf-8")
    code, log = server.run(["train", "--config", str(ref_cfg)], {"CLUE_RUN_CACHE": str(cache)})
    assert code == 0, log
    (ref,) = run_dirs(root / "ref")
    yield server, root, cache, fingerprint(ref)
    server.close()


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*/*/*") if not p.name.startswith("."))  # not a staging directory


def fingerprint(run_dir: Path) -> dict:
    result = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    history = [{k: v for k, v in h.items() if k != "train_seconds"} for h in result["history"]]  # timings differ
    weights = {f.name: f.read_bytes() for f in sorted((run_dir / "best").iterdir())
               if f.suffix == ".safetensors" or f.name == "clue_run_best.json"}
    return {"history": history, "best": result["best"], "steps": result["steps"], "final": result["final"]["metrics"],
            "best_files": weights}


def leftovers(*dirs: Path) -> list[str]:
    found = []
    for d in dirs:
        found += [str(p) for p in d.rglob("*") if LEFTOVER.search(p.name) or p.name == "resume"]
    return found


def drive(server: Server, root: Path, name: str, kills: list, env: dict, tiny_model, data_dir) -> tuple[Path, list]:
    """Run with each kill in turn (resuming when a run directory exists), then to the end."""
    out = root / name
    cfg = root / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config(tiny_model, data_dir, out)), encoding="utf-8")
    codes = []
    for kill in [*kills, None]:
        dirs = run_dirs(out)
        assert len(dirs) <= 1, dirs
        args = ["train", "--resume", str(dirs[0])] if dirs else ["train", "--config", str(cfg)]
        if isinstance(kill, float):
            code, log = server.run(args, env, kill_after=kill)
        else:
            code, log = server.run(args, {**env, "CLUE_RUN_KILL_AT": kill or ""})
        codes.append(code)
        if kill is None or code == 0:
            assert code == 0, f"{name}: {args} failed:\n{log}"
            break
        assert code == KILLED, f"{name}: {args} with {kill} exited {code}:\n{log}"
    (run_dir,) = run_dirs(out)
    return run_dir, codes


@pytest.mark.parametrize("name,kills,own_cache", NAMED, ids=[c[0] for c in NAMED])
def test_killed_at_named_point_resumes_identical(harness, name, kills, own_cache, tiny_model, data_dir):
    server, root, cache, reference = harness
    cache_dir = root / f"cache-{name}" if own_cache else cache
    run_dir, codes = drive(server, root, name, kills, {"CLUE_RUN_CACHE": str(cache_dir)}, tiny_model, data_dir)
    assert codes == [KILLED] * len(kills) + [0], f"a kill point was not reached: {codes}"
    assert fingerprint(run_dir) == reference
    assert not leftovers(run_dir.parent, cache_dir)


@pytest.mark.parametrize("seed", range(RANDOM_KILLS))
def test_killed_at_random_times_resumes_identical(harness, seed, tiny_model, data_dir):
    server, root, cache, reference = harness
    rng = random.Random(seed)
    # A child spends ~0.3-3 s (model load, tokenization from the warm cache, 8 steps): kill anywhere in it.
    kills = [round(rng.uniform(0.2, 2.5), 2) for _ in range(2)]
    run_dir, codes = drive(server, root, f"random-{seed}", kills, {"CLUE_RUN_CACHE": str(cache)}, tiny_model, data_dir)
    assert codes[-1] == 0
    assert fingerprint(run_dir) == reference
    assert not leftovers(run_dir.parent, cache)


def test_real_cli_process_killed_and_resumed(harness, tiny_model, data_dir):
    """Once without the fork server: `python -m clue_runner train` itself, killed by the hook."""
    server, root, cache, reference = harness
    out = root / "subprocess"
    cfg = root / "subprocess.yaml"
    cfg.write_text(yaml.safe_dump(config(tiny_model, data_dir, out)), encoding="utf-8")
    # One thread, as the fork server's children (the reference) use: the same float sums.
    env = {**os.environ, "CLUE_RUN_CACHE": str(cache), "CLUE_RUN_NO_PROGRESS": "1", "CLUE_RUN_KILL_AT": "evaluated:4",
           "OMP_NUM_THREADS": "1"}
    cut = subprocess.run([sys.executable, "-m", "clue_runner", "train", "--config", str(cfg)], env=env,
                         capture_output=True, text=True)
    assert cut.returncode == KILLED, cut.stderr
    (run_dir,) = run_dirs(out)
    assert not (run_dir / "run.json").exists()
    env.pop("CLUE_RUN_KILL_AT")
    done = subprocess.run([sys.executable, "-m", "clue_runner", "train", "--resume", str(run_dir)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert fingerprint(run_dir) == reference
