"""Is the Hugging Face Hub usable? Answered in seconds, so an offline machine never waits through
transformers' and datasets' retries (about a minute) before their error.

`hub_unavailable()` says why the hub cannot be reached (HF_HUB_OFFLINE set, no DNS, no TCP
connection within a short timeout) or None. Callers then use their local cache only, or fail
with one line.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from typing import Optional
from urllib.parse import urlparse

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline_requested() -> bool:
    return any(_truthy(os.environ.get(name)) for name in OFFLINE_ENV)


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@lru_cache(maxsize=None)
def _probe(host: str, port: int, timeout: float) -> Optional[str]:
    """Why a TCP connection to host:port fails, or None. DNS lookups have no timeout of their own,
    so the whole probe runs in a thread we stop waiting for."""
    result: list[Optional[str]] = ["no answer within %.0f s" % timeout]

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as err:
            result[0] = f"cannot connect to {host}:{port} ({err.__class__.__name__}: {err})"

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0]


def hub_unavailable(timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the hub answers; else a short reason (offline mode asked for, or no network)."""
    if offline_requested():
        return "HF_HUB_OFFLINE is set"
    host, port = _endpoint()
    return _probe(host, port, timeout)


def go_offline() -> None:
    """From here on transformers, huggingface_hub and datasets use their caches only (no retries)."""
    for name in OFFLINE_ENV:
        os.environ[name] = "1"
    try:  # huggingface_hub reads the variable once at import
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass
    import sys

    if "datasets" in sys.modules:
        try:
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
            sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True
        except AttributeError:
            pass


def cached_model_file(repo_id: str, filename: str = "config.json") -> Optional[str]:
    """The local cache's copy of a hub model file, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an invalid repo id, a broken cache: not cached
        return None
    return found if isinstance(found, str) else None
