"""One lock per run directory, so two workers (two sweeps, a sweep and a user) never write the same run.

A file lock (`<run_dir>/.lock`, fcntl/msvcrt through the filelock package): the OS drops it when the
holding process dies, so a killed worker never leaves a stale lock behind.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ClueRunError

LOCK_FILE = ".lock"


class RunLocked(ClueRunError):
    """Another process holds this run directory."""


class RunLock:
    """`with RunLock(run_dir): ...` — held for the block; RunLocked at once if someone else holds it."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.run_dir / LOCK_FILE), thread_local=False)

    def __enter__(self) -> "RunLock":
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunLocked(f"{self.run_dir} is in use by another process (lock {LOCK_FILE})") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (takes and drops it when free)."""
        try:
            with self:
                return False
        except RunLocked:
            return True
