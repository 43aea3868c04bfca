"""The process's one model cache: least recently used out at the bound, an evicted adapter freed (its weights
with it), one build per revision however many threads ask, and load_model going through it."""
from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest

from worker import models
from worker.models.cache import DEFAULT_LIMIT, ModelCache


class Fake:
    """Stands in for an adapter: the cache only keeps it, asks whether it is loaded and where its bundle is."""

    def __init__(self, name: str, path: Path | None = None, loaded: bool = False) -> None:
        self.name, self.loaded = name, loaded
        self.spec = SimpleNamespace(path=path) if path is not None else None


def fill(cache: ModelCache, *revisions: str) -> None:
    for revision in revisions:
        cache.get(revision, lambda r=revision: Fake(r))


@pytest.fixture
def process_cache():
    """The process's cache, emptied before and after, its bound restored."""
    models.clear_cache()
    yield models._cache
    models.set_cache_limit(DEFAULT_LIMIT)
    models.clear_cache()


def test_the_least_recently_used_goes_first_at_the_bound():
    cache = ModelCache(limit=3)
    fill(cache, "a", "b", "c")
    cache.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recently used
    fill(cache, "d")
    assert list(cache) == ["c", "a", "d"] and "b" not in cache
    fill(cache, "e")
    assert list(cache) == ["a", "d", "e"]


def test_lowering_the_bound_evicts_at_once_and_the_bound_is_at_least_one():
    cache = ModelCache(limit=4)
    fill(cache, "a", "b", "c", "d")
    cache.limit = 2
    assert list(cache) == ["c", "d"]
    for bad in (0, -1, True, "3"):
        with pytest.raises(ValueError):
            cache.limit = bad


def test_an_evicted_adapter_is_freed():
    cache = ModelCache(limit=1)
    fill(cache, "a")
    ref = weakref.ref(cache.get("a", lambda: pytest.fail("cached")))
    fill(cache, "b")
    gc.collect()
    assert ref() is None


def test_an_evicted_adapter_still_in_use_comes_back_instead_of_a_second_copy():
    cache = ModelCache(limit=1)
    held = cache.get("a", lambda: Fake("a"))  # a running job holds it
    fill(cache, "b")
    assert "a" not in cache
    assert cache.get("a", lambda: pytest.fail("a second copy of a")) is held
    assert list(cache) == ["a"]


def test_concurrent_requests_for_one_revision_build_it_once():
    cache, builds, start = ModelCache(), [], threading.Barrier(8)

    def build() -> Fake:
        builds.append(1)
        time.sleep(0.2)  # long enough that every thread asks while the build runs
        return Fake("a")

    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(cache.get("a", build))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 8 and all(a is got[0] for a in got)


def test_builds_of_different_revisions_run_side_by_side():
    cache, inside, both = ModelCache(), threading.Barrier(2, timeout=5), []

    def build(revision: str) -> Fake:
        inside.wait()  # raises BrokenBarrierError if the second build cannot start while the first runs
        both.append(revision)
        return Fake(revision)

    threads = [threading.Thread(target=cache.get, args=(r, lambda r=r: build(r))) for r in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(both) == ["a", "b"]


def test_a_failed_build_caches_nothing_and_the_next_request_builds_again():
    cache = ModelCache()

    def broken() -> Fake:
        raise OSError("storage down")

    with pytest.raises(OSError):
        cache.get("a", broken)
    assert "a" not in cache
    assert cache.get("a", lambda: Fake("a")).name == "a"


def test_an_unloaded_adapter_whose_bundle_directory_is_gone_is_built_again(tmp_path):
    cache, bundle = ModelCache(), tmp_path / "copy"
    bundle.mkdir()
    first = cache.get("a", lambda: Fake("a", bundle))
    loaded = cache.get("b", lambda: Fake("b", bundle, loaded=True))
    bundle.rmdir()
    assert cache.get("a", lambda: Fake("a2")) is not first  # it could not read its weights any more
    assert cache.get("b", lambda: pytest.fail("b has its weights")) is loaded


def test_load_model_goes_through_the_bounded_cache_and_eviction_frees_the_weights(process_cache):
    models.set_cache_limit(2)
    cnn = models.load_model("cnn-rt").load()
    weights = weakref.ref(cnn.module)
    assert models.load_model("cnn-rt") is cnn
    del cnn
    models.load_model("esim-50")
    models.load_model("bilstm-rt")  # the third model: cnn-rt was the least recently used
    assert len(process_cache) == 2
    gc.collect()
    assert weights() is None


def test_open_model_leaves_the_cache_alone(process_cache):
    adapter = models.open_model("cnn-rt")
    assert len(process_cache) == 0 and models.load_model("cnn-rt") is not adapter


def test_clear_cache_forgets_everything(process_cache):
    models.load_model("cnn-rt")
    models.clear_cache()
    assert len(process_cache) == 0
