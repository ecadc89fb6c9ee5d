"""Launchers of a sweep's cells: `local` (a pool of slots: one per GPU via CUDA_VISIBLE_DEVICES, else N CPU
workers), `ray` (one Ray task per cell) and `slurm` (one submitit job array). Each yields outcomes as runs
finish, and None every second or so (for the display). A cell runs as its own `python -m clue_runner train`
process under its run directory's lock; `run_cell` is what a worker executes (it pickles to Ray and submitit)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from ..errors import ConfigError
from .lock import RunLock, RunLocked
from .result import RESULT_FILE
from .sweep import CELL_FILE, LOG_FILE, RESUME_STATE, Cell, RayOptions, SlurmOptions, Sweep, write_status


def cell_spec(cell: Cell, retries: int, env: Optional[dict] = None) -> dict:
    """What a worker needs to run a cell: plain data, so it pickles to Ray and submitit."""
    return {"run_id": cell.run_id, "dir": str(cell.run_dir.resolve()), "retries": retries, "env": env or {}}


def _train_command(run_dir: Path) -> tuple[list[str], bool]:
    if (run_dir / RESUME_STATE).is_file():
        return [sys.executable, "-m", "clue_runner", "train", "--resume", str(run_dir)], True
    return [sys.executable, "-m", "clue_runner", "train", "--config", str(run_dir / CELL_FILE),
            "--run-dir", str(run_dir)], False


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the thread that started it dies, so a killed sweep leaves no orphaned run."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_cell(spec: dict) -> dict:
    """Train one cell to completion (resuming when it can, retrying up to spec['retries'] times); returns its outcome.

    Never raises for a failed run: the outcome says `failed` with the log's last lines.
    """
    run_dir = Path(spec["dir"])
    started = time.time()
    outcome = {"run_id": spec["run_id"], "dir": str(run_dir), "attempts": 0, "resumed": False}
    try:
        with RunLock(run_dir):
            if (run_dir / RESULT_FILE).is_file():
                return {**outcome, "state": "done", "skipped": True, "seconds": 0.0}
            env = {**os.environ, "CLUE_RUN_NO_PROGRESS": "1", **spec["env"]}
            for attempt in range(1 + spec["retries"]):
                command, resumed = _train_command(run_dir)
                outcome["resumed"] |= resumed
                outcome["attempts"] = attempt + 1
                write_status(run_dir, state="running", attempt=attempt + 1)
                with open(run_dir / LOG_FILE, "ab") as log:
                    log.write(f"\n$ {' '.join(command)}\n".encode())
                    log.flush()
                    code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None).returncode
                if code == 0 and (run_dir / RESULT_FILE).is_file():
                    write_status(run_dir, state="done", attempt=attempt + 1)
                    return {**outcome, "state": "done", "seconds": round(time.time() - started, 2)}
                outcome["returncode"] = code
            write_status(run_dir, state="failed", attempt=outcome["attempts"], returncode=outcome.get("returncode"))
            return {**outcome, "state": "failed", "seconds": round(time.time() - started, 2),
                    "error": _log_tail(run_dir / LOG_FILE)}
    except RunLocked as err:
        return {**outcome, "state": "busy", "seconds": 0.0, "error": str(err)}


def _visible_gpus() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(g) for g in visible.split(",") if g.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no usable CUDA is "no GPUs" here
        return []


def launch_local(specs: list[dict], workers: Optional[int] = None, gpus: Optional[list[int]] = None) -> Iterator[Optional[dict]]:
    """A thread per slot, each starting one cell process at a time: one slot per GPU (CUDA_VISIBLE_DEVICES=that GPU),
    or `workers` CPU slots that split the cores between them (OMP threads), with no GPU visible."""
    import queue
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    gpus = _visible_gpus() if gpus is None else gpus
    if gpus:
        slot_envs = [{"CUDA_VISIBLE_DEVICES": str(g)} for g in gpus][: workers or len(gpus)]
    else:
        n = workers or 1
        threads = str(max(1, (os.cpu_count() or 1) // n))
        slot_envs = [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}] * n
    slots: "queue.Queue[dict]" = queue.Queue()
    for env in slot_envs:
        slots.put(env)

    def on_slot(spec: dict) -> dict:
        env = slots.get()
        try:
            return run_cell({**spec, "env": {**env, **spec["env"]}})
        finally:
            slots.put(env)

    with ThreadPoolExecutor(len(slot_envs)) as pool:
        pending = {pool.submit(on_slot, s) for s in specs}
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            if not done:
                yield None
            for future in done:
                yield future.result()


def launch_ray(specs: list[dict], options: RayOptions, workers: Optional[int] = None) -> Iterator[Optional[dict]]:
    """One Ray task per cell (1 GPU or a fraction where the cluster has GPUs, else 1 CPU); at most `workers` in flight.
    Uses the Ray instance already initialised in this process, else connects (`ray.address`, $RAY_ADDRESS) or starts one."""
    try:
        import ray
    except ImportError:
        raise ConfigError("launcher ray needs Ray: pip install 'clue-run[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=options.address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    num_gpus = options.num_gpus if options.num_gpus is not None else (1 if has_gpus else 0)
    remote = ray.remote(num_cpus=options.num_cpus or 1, num_gpus=num_gpus, max_retries=0)(run_cell)
    waiting, in_flight = list(specs), []
    cap = workers or len(specs)
    while waiting or in_flight:
        while waiting and len(in_flight) < cap:
            in_flight.append(remote.remote(waiting.pop(0)))
        done, in_flight = ray.wait(in_flight, num_returns=1, timeout=1.0)
        if not done:
            yield None
        for ref in done:
            yield ray.get(ref)


def launch_slurm(specs: list[dict], options: SlurmOptions, folder: Path, workers: Optional[int] = None) -> Iterator[Optional[dict]]:
    """One submitit job array (at most `workers` array tasks at once); `slurm.cluster: local` runs them as local processes."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("launcher slurm needs submitit: pip install 'clue-run[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster)
    params = {"timeout_min": options.timeout_min, "gpus_per_node": options.gpus_per_node,
              "cpus_per_task": options.cpus_per_task, "slurm_array_parallelism": workers or len(specs), **options.parameters}
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    executor.update_parameters(**params)
    jobs = executor.map_array(run_cell, specs)
    pending = dict(zip(jobs, specs))
    while pending:
        finished = [job for job in pending if job.done()]
        if not finished:
            time.sleep(1.0)
            yield None
        for job in finished:
            spec = pending.pop(job)
            try:
                yield job.result()
            except Exception as err:  # noqa: BLE001 - a lost or killed job is a failed cell, not a failed sweep
                yield {"run_id": spec["run_id"], "dir": spec["dir"], "state": "failed", "attempts": 1, "seconds": 0.0,
                       "error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"}


def launch(sweep: Sweep, cells: list[Cell]) -> Iterator[Optional[dict]]:
    config = sweep.config
    specs = [cell_spec(c, config.retries) for c in cells]
    if config.launcher == "ray":
        return launch_ray(specs, config.ray, config.workers)
    if config.launcher == "slurm":
        return launch_slurm(specs, config.slurm, sweep.directory / ".submitit", config.workers)
    return launch_local(specs, config.workers, config.gpus)
