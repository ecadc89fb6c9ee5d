"""The sweep's lock on a cell directory, so two workers (two sweeps, a sweep and a user) never run one cell.

An flock on `<run_dir>/.sweep.lock` (storage.DirLock): the OS drops it when the holding process dies,
so a killed worker never leaves a stale lock behind. It is not the run's own `.lock`, which the
`clue-run train` child process takes while the sweep worker holds this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ClueRunError
from ..storage import DirLock, Locked

LOCK_FILE = ".sweep.lock"


class RunLocked(ClueRunError):
    """Another process holds this run directory."""


class RunLock:
    """`with RunLock(run_dir): ...` — held for the block; RunLocked at once if someone else holds it."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock: Optional[DirLock] = None

    def __enter__(self) -> "RunLock":
        try:
            self._lock = DirLock(self.run_dir, LOCK_FILE)
        except Locked:
            raise RunLocked(f"{self.run_dir} is in use by another process (lock {LOCK_FILE})") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
