"""A fork server for the kill harness: imports clue-run once, then runs each `clue-run` command in a
forked child process that a kill point (CLUE_RUN_KILL_AT) or the server (after `kill_after` seconds)
SIGKILLs. A child is a real process running the real CLI entry point; forking only saves the
seconds of importing torch and transformers again for each of the harness's ~50 processes.

Protocol: one JSON object per stdin line {"args": [...], "env": {...}, "log": path, "kill_after": s|null};
one JSON line back {"returncode": n} (negative: killed by that signal, as subprocess reports it).
"""

import json
import os
import signal
import sys
import time

import clue_runner.api  # noqa: F401  (the expensive imports, done once before forking)
import clue_runner.cli  # noqa: F401


def _child(job: dict) -> None:
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(job["env"])
    code = 1
    try:
        import torch

        torch.set_num_threads(1)
        from clue_runner.cli import app

        app(job["args"], prog_name="clue-run")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job)
        if job.get("kill_after") is not None:
            deadline = time.monotonic() + job["kill_after"]
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
            else:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
        else:
            _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    main()
