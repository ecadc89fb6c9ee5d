"""One small generic registry: heads, metrics, row parsers and methods are looked up by name.

Built-in names come from one table (`plugins.py`) as lazy "module:object" entries, imported on
first use, so knowing a name never imports its implementation. Other packages add their own
through entry points (group `clue_run.<kind>s`, e.g. `clue_run.methods`) or `register`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin: Optional[dict[str, str]] = None, entry_point_group: Optional[str] = None):
        self.kind = kind
        self._lazy: dict[str, str] = dict(builtin or {})
        self._items: dict[str, T] = {}
        self._group = entry_point_group
        self._scanned = entry_point_group is None

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._group):
            if ep.name not in self._lazy and ep.name not in self._items:
                self._lazy[ep.name] = ep.value

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items or name in self._lazy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted({*self._lazy, *self._items})

    def get(self, name: str) -> T:
        if name not in self._items and name in self:
            self._items[name] = _load(self._lazy[name])
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The line that refuses an unregistered name: the closest known one and the full list."""
        known = self.names()
        return f"unknown {self.kind} {name!r}{did_you_mean(name, known)} (known: {', '.join(known)})"

    def __contains__(self, name: str) -> bool:
        self._scan_entry_points()
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def validate_options(schema, raw: dict, where: str, what: str):
    """`raw` validated by a pydantic `schema`, or one ConfigError naming each bad key by its full path."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{where}.{'.'.join(map(str, e['loc']))}: "
                             + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"]) for e in err.errors())
        raise ConfigError(f"{problems} ({what} takes: {', '.join(schema.model_fields) or 'no options'})") from None
