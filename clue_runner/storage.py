"""Every file clue-run writes goes through here: written beside, made durable, renamed into place.

- `atomic_file(path)` / `atomic_write_bytes` / `atomic_write_text`: a reader (or a later process after
  a kill) sees the old file or the new one, never half of one.
- `atomic_dir(path)`: the same for a directory (a transformers checkpoint, a converted model).
- Temporary names carry the writer's pid (`.NAME.PID.RANDOM.tmp`): a SIGKILL runs no cleanup, so the
  next writer in the same directory removes the leftovers of processes that no longer exist.
- Files and directories get the mode the user's umask gives (`0o666 & ~umask`, as `open()` would):
  temporary files (and libraries that write through one, safetensors) start private.
- A failed write leaves nothing behind and raises `OSError` with the path, also where the library
  that wrote (torch, safetensors) hid the operating system's error in its own exception type.
- `kill_point(name)`: the fault-injection hook the kill tests use (`CLUE_RUN_KILL_AT=name[:n]`).

This module imports nothing from clue_runner, so every layer may use it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

KILL_ENV = "CLUE_RUN_KILL_AT"
_kill_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process at the n-th time it passes `name` when CLUE_RUN_KILL_AT=name[:n] (tests only)."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _kill_hits[name] = _kill_hits.get(name, 0) + 1
    if _kill_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# -- temporary names -----------------------------------------------------------------------

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?:tmp|partial|old)$")


def tmp_sibling(path: Path, suffix: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(directory: Path, name: str | None = None) -> None:
    """Remove temporary siblings left by killed writers (of `name` only, or of every file)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        m = _TMP.match(entry.name)
        if m and (name is None or m["name"] == name) and not _alive(int(m["pid"])):
            _remove(Path(entry.path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- modes ---------------------------------------------------------------------------------

def umask() -> int:
    """The process's umask, read without changing it where /proc tells it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_as_umask(path: Path) -> None:
    """Give `path` (and everything below it) the modes a plain `open()` / `mkdir()` would have given."""
    mask = umask()
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        if not entry.is_symlink():
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


# -- errors --------------------------------------------------------------------------------

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|errno[ =:]*(\d+)", re.IGNORECASE)
_ERRNO_WORDS = {"no space left": errno.ENOSPC, "read-only file system": errno.EROFS,
                "permission denied": errno.EACCES, "disk quota": errno.EDQUOT}


def as_os_error(err: BaseException, path: Path, recorded: OSError | None = None) -> BaseException:
    """The operating system's error behind a failed write, naming `path` (else `err` itself).

    torch's zip writer turns a failed write into a RuntimeError ("unexpected pos …") and
    safetensors into its own error ("… (os error 28)"): the cause is recovered here, once.
    """
    if isinstance(err, OSError):
        if err.errno is not None and (err.filename is None or _temporary(err.filename)):
            return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))  # the path asked for
        return err
    if recorded is not None:
        return OSError(recorded.errno, recorded.strerror or os.strerror(recorded.errno or 0), str(path))
    text = str(err)
    m = _OS_ERROR_IN_TEXT.search(text)
    code = int(next(g for g in m.groups() if g)) if m else None
    if code is None:
        code = next((c for words, c in _ERRNO_WORDS.items() if words in text.lower()), None)
    if code is None:
        return err
    return OSError(code, os.strerror(code), str(path))


def _temporary(filename) -> bool:
    """Whether `filename` is (or lies in) one of the hidden temporary siblings written here."""
    return any(_TMP.match(part) for part in Path(os.fsdecode(filename)).parts)


class _RecordingFile:
    """A binary file that remembers the OSError a write raised (libraries may replace it with their own)."""

    def __init__(self, fh):
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- writers -------------------------------------------------------------------------------

@contextmanager
def atomic_file(path: Path) -> Iterator[_RecordingFile]:
    """Yield a binary file object; on success its content replaces `path` (fsynced, then renamed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise as_os_error(err, path.parent) from None
    remove_stale_tmp(path.parent, path.name)
    tmp = tmp_sibling(path)
    fh = None
    try:
        fh = _RecordingFile(open(tmp, "wb"))
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        share_as_umask(tmp)  # a temporary file starts private; the result is meant to be shared
        kill_point("atomic-rename")
        os.replace(tmp, path)
    except BaseException as err:
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception):
            converted = as_os_error(err, path, fh.error if fh is not None else None)
            if converted is not err:
                raise converted from None
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: Path, write: Callable[[object], None]) -> None:
    """`write(file_object)` (torch.save, np.savez …) into `path` atomically."""
    with atomic_file(path) as fh:
        write(fh)


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir` to fill; on success it replaces `out_dir` by renames.

    A killed process leaves at most a hidden sibling (removed by the next writer), never a
    half-written `out_dir`. Between the two renames `out_dir` is briefly absent: callers that must
    survive that instant (a run's best/) recover with `finish_dir_swap`.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise as_os_error(err, out_dir.parent) from None
    finish_dir_swap(out_dir)
    tmp = tmp_sibling(out_dir, "partial")
    try:
        tmp.mkdir()
        yield tmp
        swap_dir_in(tmp, out_dir)
    except Exception as err:
        converted = as_os_error(err, out_dir)
        if converted is not err:
            raise converted from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_dir_in(new: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the complete directory `new` (two renames; the old copy is removed last)."""
    share_as_umask(new)  # libraries write through private temporary files (safetensors: 0600)
    for f in new.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if out_dir.exists():
        old = tmp_sibling(out_dir, "old")
        os.rename(out_dir, old)
        kill_point("dir-swap")
        os.rename(new, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, out_dir)
    _fsync_dir(out_dir.parent)


def finish_dir_swap(out_dir: Path) -> None:
    """After a kill between `swap_dir_in`'s renames: put the previous copy back where it was."""
    out_dir = Path(out_dir)
    olds = sorted(out_dir.parent.glob(f".{out_dir.name}.*.old"))
    if not out_dir.exists() and olds:
        os.rename(olds[-1], out_dir)
    remove_stale_tmp(out_dir.parent, out_dir.name)


# -- one process per run directory ---------------------------------------------------------

class Locked(Exception):
    """Another live process holds the lock."""


class DirLock:
    """An exclusive `flock` on DIR/NAME (default `.lock`) for as long as this object lives (released on exit or kill)."""

    def __init__(self, directory: Path, name: str = ".lock"):
        import fcntl

        self.path = Path(directory) / name
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise Locked(str(directory)) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
