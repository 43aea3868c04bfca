"""Submit-path cost in-process: validating and enqueueing one job (SQLite + server-less broker) vs reading one."""
from __future__ import annotations

import tempfile
import time

from benchmarks import Row


def run(quick: bool = False) -> list[Row]:
    from service.app import create_app
    from service.auth import create_key
    from service.config import Settings
    from service.migrate import upgrade
    from service.runtime import Runtime

    n = 20 if quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(env={}, data_dir=tmp, rate_per_minute=10**6, max_in_flight=10**6)
        upgrade(settings.db_url)
        rt = Runtime(settings)
        with rt.db.session() as s:
            key = create_key(s, "bench")[1]
        client = create_app(runtime=rt).test_client()
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "minilm-rt", "inputs": {"text": "A gripping, beautifully acted film."},
                "methods": ["gradient"]}
        job_id = client.post("/v1/jobs", json=body, headers=headers).get_json()["id"]  # warm the tokenizer
        t0 = time.perf_counter()
        for seed in range(n):
            client.post("/v1/jobs", json={**body, "seed": seed}, headers=headers)
        submit = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            client.get(f"/v1/jobs/{job_id}", headers=headers)
        poll = (time.perf_counter() - t0) / n
        rt.close()
    return [Row("in-process submit (validate + row + enqueue), SQLite", "ms", submit * 1e3, poll * 1e3,
                "one poll", higher_is_better=False, note="ratio < 1: a submit costs more than a poll")]
