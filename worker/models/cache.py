"""The process's one model cache: adapters by revision, least recently used first out, at most `limit` kept.

Every path to an adapter goes through it (``load_model`` in scripts and tests, the runtime's lookup in the API and
the workers), so a process holds one copy of a model's weights and never more than `limit` models. Dropping an
adapter drops the cache's only reference to it: its weights are freed once no running job holds it any more. An
adapter still held elsewhere after eviction is found again (by a weak reference) rather than loaded a second time.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from worker.models.base import Adapter

DEFAULT_LIMIT = 4  # models a process keeps: a few zoo models and registered ones, without growing without end


class ModelCache:
    """A thread-safe LRU of adapters keyed by revision. `get` builds a missing adapter once, however many threads
    ask for it at the same time; builds of different revisions run side by side."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.lock = threading.RLock()  # reentrant: callers may hold it while they delete entries
        self._limit = _checked(limit)
        self._entries: OrderedDict[str, Adapter] = OrderedDict()  # oldest use first
        self._evicted: weakref.WeakValueDictionary[str, Adapter] = weakref.WeakValueDictionary()
        self._building: dict[str, threading.Lock] = {}

    # ---------------------------------------------------------------- lookup
    def get(self, revision: str, build: Callable[[], Adapter]) -> Adapter:
        """The adapter of `revision`, made by `build()` if this process has none."""
        with self.lock:
            adapter = self._take(revision)
            if adapter is not None:
                return adapter
            building = self._building.setdefault(revision, threading.Lock())
        with building:  # one build per revision; other threads wait here, then find it
            try:
                with self.lock:
                    adapter = self._take(revision)
                if adapter is None:
                    adapter = build()
                    self.put(revision, adapter)
            finally:
                with self.lock:  # only this build's lock: a later one (after an eviction) may have its own
                    if self._building.get(revision) is building:
                        del self._building[revision]
        return adapter

    def put(self, revision: str, adapter: Adapter) -> None:
        with self.lock:
            self._entries[revision] = adapter
            self._entries.move_to_end(revision)
            self._evicted.pop(revision, None)
            self._shrink()

    def _take(self, revision: str) -> Adapter | None:
        """The cached adapter, now the most recently used; one evicted but still alive comes back in."""
        adapter = self._entries.get(revision)
        if adapter is None:
            adapter = self._evicted.get(revision)
        if adapter is None or not _usable(adapter):
            self._entries.pop(revision, None)
            return None
        self.put(revision, adapter)
        return adapter

    def _shrink(self) -> None:
        while len(self._entries) > self._limit:
            revision, adapter = self._entries.popitem(last=False)
            self._evicted[revision] = adapter  # weak: gone when no job holds it

    # ---------------------------------------------------------------- settings and housekeeping
    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        with self.lock:
            self._limit = _checked(value)
            self._shrink()

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()
            self._evicted.clear()

    def items(self) -> list[tuple[str, Adapter]]:
        """(revision, adapter) pairs, least recently used first (a copy: safe to delete while iterating)."""
        with self.lock:
            return list(self._entries.items())

    def __delitem__(self, revision: str) -> None:
        with self.lock:
            del self._entries[revision]
            self._evicted.pop(revision, None)

    def __contains__(self, revision: object) -> bool:
        with self.lock:
            return revision in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter([revision for revision, _ in self.items()])

    def __len__(self) -> int:
        with self.lock:
            return len(self._entries)


def _checked(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"the model cache must hold at least one model, not {limit!r}")
    return limit


def _usable(adapter: Adapter) -> bool:
    """Adapters read their weights on first use, from their bundle directory: one whose directory is gone (a temporary
    copy since removed) and whose weights were never read cannot serve a job, so it is built again."""
    root = getattr(getattr(adapter, "spec", None), "path", None)
    return root is None or adapter.loaded or Path(root).is_dir()
