"""The web UI's job page in headless Chromium: a 512-token job with six methods (run for real, in-process), the
page's time to interactive (DOMContentLoaded: deferred scripts have run) against opening the same job's
result.json in the same browser, and its weight without PNGs (HTML + CSS + JS) against that result.json.
Targets (issue 17): interactive in under 1 s, under 300 KB; result.html under 1 MB."""
from __future__ import annotations

import logging
import tempfile
import threading

from benchmarks import Row

METHODS = ["gradient", "grad_x_input", "integrated_gradients", "smoothgrad", "occlusion", "attention_rollout"]
PARAMS = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}}


def run(quick: bool = False) -> list[Row]:
    from werkzeug.serving import make_server

    from service import jobs
    from service.app import create_app
    from service.auth import create_key
    from service.config import Settings
    from service.migrate import upgrade
    from service.runtime import Runtime
    from tests.browser import chromium
    from worker.runner import run_job

    tokens = 128 if quick else 512
    text = " ".join(["the film was good ."] * ((tokens - 2) // 5))  # five tokens each, plus [CLS] and [SEP]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(env={}, data_dir=tmp, rate_per_minute=10**6, max_in_flight=10**6)
        upgrade(settings.db_url)
        rt = Runtime(settings)
        with rt.db.session() as s:
            key = create_key(s, "bench")[1]
        app = create_app(runtime=rt)
        body = {"model": "minilm-rt", "inputs": {"text": text}, "methods": METHODS, "params": PARAMS}
        resp = app.test_client().post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 202, resp.get_data(as_text=True)
        job_id = resp.get_json()["id"]
        run_job(rt, job_id, "bench")  # the worker's own code, in this process
        with rt.db.session() as s:
            sizes = {a.name: a.bytes for a in jobs.artifacts_of(s, job_id)}
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in the bench's table
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            with chromium() as driver:
                rows = _measure(driver, url, key, job_id, sizes, tokens, quick)
        finally:
            server.shutdown()
            rt.close()
    return rows


NAVIGATION = """const n = performance.getEntriesByType('navigation')[0];
const parts = performance.getEntriesByType('resource').filter(r => !/\\.png($|\\?)/.test(r.name));
return {interactive: n.domContentLoadedEventEnd - n.startTime, status: n.responseStatus,
        bytes: n.decodedBodySize + parts.reduce((a, r) => a + r.decodedBodySize, 0)};"""


def _measure(driver, url: str, key: str, job_id: str, sizes: dict[str, int], tokens: int, quick: bool) -> list[Row]:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/ui/login")
    field = driver.find_element(By.ID, "key")
    field.send_keys(key)
    field.submit()
    best = {}
    for name, target in (("job", f"{url}/ui/jobs/{job_id}"), ("list", f"{url}/ui/jobs")):
        runs = []
        for _ in range(2 if quick else 5):
            driver.get(target)
            runs.append(driver.execute_script(NAVIGATION))
        assert all(r["status"] == 200 for r in runs), runs
        best[name] = min(runs, key=lambda r: r["interactive"])
    label = f"job page, {tokens} tokens x {len(METHODS)} methods"
    rows = [Row(f"{label}: time to interactive", "ms", best["job"]["interactive"], best["list"]["interactive"],
                "the jobs list page", higher_is_better=False, note="headless Chromium; target < 1000 ms"),
            Row(f"{label}: weight without PNGs", "KB", best["job"]["bytes"] / 1024, sizes["result.json"] / 1024,
                "its result.json", higher_is_better=False, note="HTML + CSS + JS; target < 300 KB")]
    if "result.html" in sizes:
        rows.append(Row(f"{label}: result.html", "KB", sizes["result.html"] / 1024, sizes["result.json"] / 1024,
                        "its result.json", higher_is_better=False, note="target < 1024 KB"))
    return rows
