"""The production configuration for real on this machine: `lantern serve` (gunicorn, 2 workers) + 2 `lantern
worker` processes + PostgreSQL + Redis + an S3 API server (moto), set up the way deploy/ sets them up (JSON logs,
worker metrics ports). 50 jobs submitted concurrently from threads, by several tenants, all succeed; the workers'
/metrics count them; no log line carries user text; a worker told to stop (SIGTERM) finishes its job first."""
from __future__ import annotations

import json
import re
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from service.client import Client
from tests.helpers import free_port, production_stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]

N_JOBS, N_TENANTS = 50, 5
SECRET_WORD = "zanzibarquux"  # in every submitted text; must never reach a log


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, tmp_path_factory):
    ports = [free_port(), free_port()]
    with production_stack(pg_url, redis_url, tmp_path_factory.mktemp("prod"), api_workers=2, workers=2,
                          env={"LANTERN_LOG_JSON": "true", "LANTERN_WORKER_METRICS_HOST": "127.0.0.1"},
                          worker_env=lambda n: {"LANTERN_WORKER_METRICS_PORT": str(ports[n])}) as st:
        st.metrics_urls = [f"http://127.0.0.1:{p}" for p in ports]
        wait_for(lambda: all(_get(f"{u}/healthz") == 200 for u in st.metrics_urls), 90, "workers ready")
        yield st


def _get(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def test_fifty_concurrent_jobs_all_succeed(stack):
    clients = [Client(stack.url, stack.key(f"load-{uuid.uuid4().hex[:6]}")) for _ in range(N_TENANTS)]

    def one(n: int) -> dict:
        client = clients[n % N_TENANTS]
        request = {"model": "minilm-rt", "methods": ["gradient"], "seed": n,
                   "inputs": {"text": f"Review {n}: a {SECRET_WORD} film, warm and funny."}}
        return client.wait(client.submit(request), timeout=540)

    with ThreadPoolExecutor(max_workers=N_JOBS) as pool:
        jobs = list(pool.map(one, range(N_JOBS)))

    failed = [(j["id"], j["status"], j.get("error")) for j in jobs if j["status"] != "succeeded"]
    assert not failed, (failed, stack.logs())
    assert len({j["id"] for j in jobs}) == N_JOBS
    assert all(j["attempts"] == 1 and j["result"]["methods"]["gradient"]["scores"] for j in jobs)
    assert all({"gradient.png", "result.json"} <= {a["name"] for a in j["artifacts"]} for j in jobs)
    stack.job_ids = [j["id"] for j in jobs]

    # both worker processes took work, and their /metrics (summed over pool processes) count every job
    done = []
    for url in stack.metrics_urls:
        text = requests.get(f"{url}/metrics", timeout=5).text
        done.append(sum(v for labels, v in _samples(text, "lantern_worker_jobs_total")
                        if labels == {"methods": "gradient", "device": "cpu", "status": "succeeded"}))
        assert _samples(text, "lantern_worker_ready") == [({}, 1.0)]
        assert any(labels.get("le") == "+Inf" for labels, _ in _samples(text, "lantern_worker_job_seconds_bucket"))
        queues = {labels["queue"] for labels, _ in _samples(text, "lantern_queue_depth")}
        assert queues == {stack.env["LANTERN_JOB_QUEUE"], stack.env["LANTERN_CPU_QUEUE"]}
    assert sum(done) == N_JOBS and all(d > 0 for d in done), done
    api = requests.get(f"{stack.url}/metrics", timeout=5).text
    assert _samples(api, "lantern_http_request_seconds_count") and _samples(api, "lantern_queue_depth")
    # every scrape counts all submits, whichever of gunicorn's processes took them (multiprocess metrics)
    for _ in range(3):
        api = requests.get(f"{stack.url}/metrics", timeout=5).text
        submits = sum(v for labels, v in _samples(api, "lantern_http_requests_total")
                      if labels.get("endpoint") == "/v1/jobs" and labels.get("method") == "POST")
        assert submits == N_JOBS


def test_a_connection_polled_at_retry_after_stays_open(stack):
    """Threaded workers keep a connection alive, and longer than a client polling at the API's Retry-After waits
    between requests, with room to spare on a busy machine: the second request on the connection, sent after
    Retry-After + 1.5 s, is answered (gunicorn's default keep-alive, 2 s, had closed it: the
    RemoteDisconnected a pooled client met)."""
    import http.client
    import time
    from urllib.parse import urlsplit

    from service.config import Settings

    address = urlsplit(stack.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection", "").lower() != "close"
        socket_before = conn.sock
        time.sleep(Settings.from_env(env=stack.env).retry_after + 1.5)
        conn.request("GET", "/healthz")
        again = conn.getresponse()
        again.read()
        assert again.status == 200 and conn.sock is socket_before  # the same connection, not a new one
    finally:
        conn.close()


def test_logs_are_json_with_job_ids_and_no_user_text(stack):
    lines = []
    for proc in stack.procs:
        lines += [(proc.name, line) for line in stack.log(proc.name).splitlines() if line.strip()]
    assert not [line for _, line in lines if SECRET_WORD in line]
    worker_entries = [json.loads(line) for name, line in lines if name.startswith("worker") and line[0] == "{"]
    tagged = {e["job_id"] for e in worker_entries if e.get("job_id")}
    assert set(stack.job_ids) <= tagged  # every job's lines can be found by its id
    started = [e for e in worker_entries if re.match(r"job \S+ attempt 1 on cpu", e["message"])]
    assert all(e["job_id"] in e["message"] for e in started) and len(started) >= len(stack.job_ids)


def test_a_stopped_worker_finishes_its_job_first(stack):
    """SIGTERM to the worker's main process (what `docker stop` and Kubernetes send): Celery's warm shutdown
    lets the running job finish, /healthz turns 503 meanwhile, and the process exits cleanly."""
    from service.db import Job

    request = {"model": "minilm-rt", "inputs": {"text": "Slow and steady, the film wins us over."},
               "methods": ["smoothgrad"], "params": {"smoothgrad": {"samples": 240, "batch_size": 8}}}
    job_id = stack.client.submit(request)["id"]

    def running_owner():
        with stack.db.session() as s:
            job = s.get(Job, job_id)
            return job.lease_owner if job.status == "running" and job.progress > 0 else None

    owner_pid = int(wait_for(running_owner, 120, "the job to run").split(":")[1])
    n = next(i for i, w in enumerate(stack.workers) if _child_of(owner_pid, w.pid))
    worker = stack.workers[n]
    worker.send_signal(signal.SIGTERM)  # the main process only, as a container runtime does
    wait_for(lambda: _get(f"{stack.metrics_urls[n]}/healthz") in (503, None), 10, "healthz to turn 503")
    assert worker.wait(120) == 0, stack.log(worker.name)[-3000:]
    job = stack.client.get(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job


def _child_of(pid: int, parent: int) -> bool:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent
