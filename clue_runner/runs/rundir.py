"""A run directory and its commit protocol: at every instant it is a consistent state that
`clue-run train --resume` completes.

    config.yaml        written once, inside a hidden staging directory renamed into place: a
                       run directory that exists always has its config
    resume/trainer.pt  THE commit point of a checkpoint (one file, replaced atomically): model,
                       optimizer, RNG, data position, history and which step is best
    best/              the best step's checkpoint, swapped in as a whole right after the commit
                       that names it; `best/clue_run_best.json` says which step it holds
    predictions/, run.json   atomic files; run.json last: the run is finished when it exists
    .lock              flock held by the one process working on the run

Recovery on resume (`RunDir.recover`): an interrupted `best/` swap is rolled back and leftovers of
killed writers are removed. A `best/` older than the committed state is saved again from the
committed weights by the trainer's checkpoint policy once it has loaded them
(`engine.checkpoint.BestCheckpoint.resumed`: they are the best step's weights, since best/ is only
ever behind when the commit that made it best is the last one). No resume state at all means the run
was killed before its first checkpoint: it starts over in the same directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from ..config import ExperimentConfig, load_config
from ..engine.trainer import RESUME_FILE
from ..errors import RunError
from ..storage import DirLock, Locked, atomic_write_text, kill_point, finish_dir_swap, remove_stale_tmp, swap_dir_in, tmp_sibling
from .naming import new_run_dir
from .result import RESULT_FILE

CONFIG_FILE = "config.yaml"
BEST_DIR = "best"
RESUME_DIR = "resume"
PREDICTIONS_DIR = "predictions"


def saved_config(run_dir: Path) -> ExperimentConfig:
    """The config a run directory was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return load_config(path)


class RunDir:
    def __init__(self, path: Path, lock: Optional[DirLock]):
        self.path, self._held = Path(path), lock
        self._scratch = False

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    @property
    def resume(self) -> Path:
        return self.path / RESUME_DIR

    @classmethod
    def create(cls, output_dir: str, task: str, model: str, seed: int, config_text: str,
               path: Optional[Path] = None) -> "RunDir":
        """A new run directory holding its config, locked by this process. With `path` (a sweep's
        cell directory, which may already hold the sweep's own files), the run starts there."""
        if path is not None:
            return cls._start_in(Path(path), config_text)
        final = new_run_dir(output_dir, task, model, seed)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(final.parent)  # staging directories of creators killed before the rename
        staging = tmp_sibling(final, "partial")
        staging.mkdir()
        try:
            atomic_write_text(staging / CONFIG_FILE, config_text)
            kill_point("config-written")
            lock = DirLock(staging)  # the lock travels with the rename (same open file)
            swap_dir_in(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(final, lock)

    @classmethod
    def _start_in(cls, path: Path, config_text: str) -> "RunDir":
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, cls._lock(path))
        atomic_write_text(path / CONFIG_FILE, config_text)
        run.recover()  # an earlier attempt's leftovers (no resume state: it starts over)
        return run

    @classmethod
    def follow(cls, path: Path) -> "RunDir":
        """A run another process (data-parallel rank 0) writes: read without taking the lock."""
        return cls(Path(path), None)

    @classmethod
    def scratch(cls) -> "RunDir":
        """Somewhere for a data-parallel rank > 0 to point at; it writes nothing there, and it is removed."""
        import tempfile

        run = cls(Path(tempfile.mkdtemp(prefix="clue-run-rank-")), None)
        run._scratch = True
        return run

    @staticmethod
    def _lock(path: Path) -> DirLock:
        try:
            return DirLock(path)
        except Locked:
            raise RunError(f"{path}: another clue-run process is working on this run (it holds {path / '.lock'}); "
                           "wait for it to finish or stop it") from None

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """An existing, unfinished run directory, locked by this process."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise RunError(f"{path}: not a run directory (no {CONFIG_FILE}); give a directory `clue-run train` created")
        return cls(path, cls._lock(path))

    @property
    def finished(self) -> bool:
        return (self.path / RESULT_FILE).is_file()

    def has_resume_state(self) -> bool:
        return (self.resume / RESUME_FILE).is_file()

    def recover(self) -> None:
        """Undo what a killed process left half-done (see the module docstring)."""
        finish_dir_swap(self.best)
        for d in (self.path, self.resume, self.path / PREDICTIONS_DIR):
            remove_stale_tmp(d)
        if self.finished:  # killed after run.json, before the resume state was removed
            shutil.rmtree(self.resume, ignore_errors=True)
        elif not self.has_resume_state():  # killed before the first checkpoint: start over
            for d in (self.best, self.resume, self.path / PREDICTIONS_DIR):
                shutil.rmtree(d, ignore_errors=True)

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
        if self._scratch:
            shutil.rmtree(self.path, ignore_errors=True)
