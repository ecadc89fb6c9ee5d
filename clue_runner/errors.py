"""Errors that the CLI turns into one clear line and a non-zero exit (`cli.app.friendly_errors`).

One type per failure class: ConfigError (the experiment config, --set), DataError (data files and
rows), ModelError (checkpoints), RunError (a run directory's state), DiskError (writing), SubmitError.
"""

import errno

# Errors of the file system a user fixes by freeing space or choosing another directory.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}



class ClueRunError(Exception):
    """Base class for errors a user can fix (bad config, bad data, missing files)."""


class ConfigError(ClueRunError):
    pass


class DataError(ClueRunError):
    pass


class ModelError(ClueRunError):
    pass


class RunError(ClueRunError):
    """A run directory that cannot be used as asked (finished, locked by another process, not a run)."""


class DiskError(ClueRunError):
    """Writing failed (full, read-only or forbidden file system); nothing half-written was left."""


class SubmitError(ClueRunError):
    """Predictions that a leaderboard would refuse."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (a library's traceback-sized text shown as one line)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def disk_error_line(err: OSError, then: str = "then run again") -> str:
    """One line for a failed write: which path, why, what to do."""
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space there or point output_dir / CLUE_RUN_CACHE at another disk"
    else:
        fix = "make it writable or point output_dir / CLUE_RUN_CACHE at a writable directory"
    return f"cannot write {where}: {err.strerror or os_strerror(err.errno)}; nothing half-written was kept; {fix}, {then}"


def os_strerror(code) -> str:
    import os

    return os.strerror(code) if code else "write failed"


def decode_utf8(data: bytes, path, error: type, fix: str) -> str:
    """`data` as UTF-8 text (a leading BOM dropped), or `error` naming the file, the line and the byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); {fix}") from None
