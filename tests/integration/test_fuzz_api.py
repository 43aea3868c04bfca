"""schemathesis against the live app (issue 14): all operations, every check, positive and negative data, a fixed
seed; any 5xx or conformance failure fails the test. LANTERN_FUZZ_EXAMPLES sets the examples per operation
(`make fuzz` runs a longer pass)."""
from __future__ import annotations

import os

import pytest

from tests.helpers import make_settings
from tests.integration import fuzzing

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(900)]
EXAMPLES = int(os.environ.get("LANTERN_FUZZ_EXAMPLES", "150"))
SEED = int(os.environ.get("LANTERN_FUZZ_SEED", "14"))


@pytest.fixture
def fuzz_runtime(backend, tmp_path, request):
    """The production-shaped settings, with server-side model paths on (a root with nothing in it) and tenant
    limits high enough that the fuzzer's many submissions are not all 429s."""
    from service.migrate import upgrade
    from service.runtime import Runtime

    (tmp_path / "models").mkdir()
    limits = dict(rate_per_minute=1_000_000, max_in_flight=1_000_000, model_root=str(tmp_path / "models"),
                  sync_timeout_cap=0)  # no worker runs here: a synchronous explain answers 202 at once
    if backend == "postgres":
        settings = make_settings(tmp_path, "postgres", request.getfixturevalue("pg_url"),
                                 request.getfixturevalue("redis_url"), **limits)
    else:
        settings = make_settings(tmp_path, **limits)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    rt = Runtime(settings)
    yield rt
    rt.close()


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(fuzz_runtime, new_key_for):
    from service.app import create_app

    totals = fuzzing.run(create_app(runtime=fuzz_runtime), new_key_for(fuzz_runtime), EXAMPLES, SEED)
    print(totals.report())
    assert totals.cases > 20 * EXAMPLES // 10, totals.report()  # every operation was exercised
    assert totals.statuses[("POST /v1/jobs", 202)] > 0, totals.report()  # the fuzzer reached job creation
    assert (totals.server_errors, totals.conformance, totals.engine_errors) == (0, 0, []), totals.report()


@pytest.fixture
def new_key_for():
    import uuid

    from service.auth import create_key

    def make(rt) -> str:
        with rt.db.session() as s:
            return create_key(s, f"fuzz-{uuid.uuid4().hex[:8]}")[1]

    return make
