"""The Python client against the real API: the audit list it pages through (in process, both backends), and
against the embedded stack in real processes (`lantern up`): typed jobs and audits, ETag waits, downloads,
cancellation; Retry-After honoured for 503 (a tiny local HTTP server that answers 503 first)."""
from __future__ import annotations

import http.server
import json
import sys
import threading
import time

import pytest

from service.client import ApiError, Audit, Client, Job
from tests.helpers import embedded_stack

TEXT = "A gripping, beautifully acted film."


# --- GET /v1/audits, in process ------------------------------------------------------------------------------

@pytest.mark.postgres
def test_audits_are_listed_newest_first_page_by_page(api, new_key):
    made = []
    for n in range(3):
        resp = api.post("/v1/audits", json={"model": "minilm-rt", "methods": ["gradient"],
                                            "corpus": {"items": [{"text": f"{TEXT} {n}"}]}})
        assert resp.status_code == 202, resp.get_json()
        made.append(resp.get_json()["id"])
    first = api.get("/v1/audits?limit=2").get_json()
    assert [a["id"] for a in first["items"]] == made[::-1][:2] and first["next_cursor"]
    rest = api.get(f"/v1/audits?limit=2&cursor={first['next_cursor']}").get_json()
    assert [a["id"] for a in rest["items"]] == made[:1] and rest["next_cursor"] is None
    assert api.get("/v1/audits?status=succeeded").get_json()["items"] == []
    assert api.as_(new_key("other")).get("/v1/audits").get_json()["items"] == []  # a tenant sees its own
    assert api.get("/v1/audits?cursor=nonsense").status_code == 400
    assert api.get("/v1/audits?colour=red").status_code == 422


# --- the embedded stack in real processes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with embedded_stack(tmp_path_factory.mktemp("embedded")) as st:
        yield st


@pytest.fixture
def client(stack) -> Client:
    return Client(stack.url, stack.key)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_job_typed_waited_on_and_downloaded(client, tmp_path):
    job = client.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient", "grad_x_input"]})
    assert isinstance(job, Job) and job.status == "queued" and job["status"] == "queued"
    polls = []
    done = client.wait(job, timeout=240, on_update=polls.append)
    assert done.status == "succeeded", done.raw
    assert done.raw["id"] == job.id and done.finished and done.result["prediction"]["label"] == "positive"
    assert all(isinstance(p, Job) for p in polls) and polls[-1].status == "succeeded"
    assert {a.name for a in done.artifacts} >= {"gradient.png", "result.json"}

    words = done.to_pandas()
    assert list(words.columns)[0] == "word" and set(words.columns[1:]) == {"gradient", "grad_x_input"}
    assert list(words["word"]) == done.result["word_strings"]
    assert words["gradient"].tolist() == pytest.approx(done.result["methods"]["gradient"]["word_scores"])
    tokens = done.to_pandas("tokens")
    assert list(tokens["token"]) == done.result["tokens"] and tokens["special"].any()

    png = client.download(done, "gradient.png", tmp_path)
    assert png == tmp_path / "gradient.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = [j.id for j in client.jobs(limit=1)]  # one per page: the iterator follows next_cursor
    assert job.id in listed and len(listed) == len(set(listed)) >= 1

    page = done._repr_html_()
    if done.artifact("result.html"):  # the viewer's page (issue 17), escaped into srcdoc
        assert page.startswith("<iframe srcdoc=\"") and "<html" not in page and "&lt;" in page
        assert client.get(job.id).save_html(tmp_path / "r.html").read_text().lstrip().lower().startswith("<!doctype")
    else:
        assert "has no result.html" in page


@pytest.mark.e2e
@pytest.mark.slow
def test_wait_polls_with_etags_and_the_server_s_retry_after(client, monkeypatch):
    job = client.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["smoothgrad"],
                         "params": {"smoothgrad": {"samples": 200}}})
    seen, sleeps = [], []
    real_request, real_sleep = client.session.request, time.sleep

    def request(method, url, **kw):
        resp = real_request(method, url, **kw)
        seen.append((kw.get("headers", {}).get("If-None-Match"), resp.status_code))
        return resp

    monkeypatch.setattr(client.session, "request", request)
    monkeypatch.setattr(time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    assert client.wait(job, timeout=240).status == "succeeded"
    assert seen[0] == (None, 200) and all(tag for tag, _ in seen[1:])  # every later poll sends the ETag
    assert set(sleeps) == {1.0}  # LANTERN_RETRY_AFTER's default, not a fixed 0.5 s
    assert len(seen) >= 2


@pytest.mark.e2e
@pytest.mark.slow
def test_cancel_and_errors(client):
    job = client.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["smoothgrad"],
                         "params": {"smoothgrad": {"samples": 5000}}})
    cancelled = client.wait(client.cancel(job.id), timeout=240)
    assert cancelled.status == "cancelled"
    with pytest.raises(ApiError) as e:
        client.cancel(job.id)
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        client.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"],
                       "params": {"gradient": {"nope": 1}}})
    assert e.value.status == 422 and e.value.field_errors and e.value.field_errors[0].startswith("params.gradient")
    with pytest.raises(ApiError) as e:
        Client(client.url, "lt_bad_key").models()
    assert e.value.status == 401


@pytest.mark.e2e
@pytest.mark.slow
def test_an_audit_typed_listed_waited_on_and_downloaded(client, tmp_path):
    audit = client.audit({"model": "minilm-rt", "methods": ["gradient"],
                          "corpus": {"items": [{"text": TEXT, "label": "positive"}, {"text": "Dull and long."}]}})
    assert isinstance(audit, Audit) and audit.counts["total"] == 2
    assert audit.id in [a.id for a in client.audits()]
    done = client.wait_audit(audit, timeout=300)
    assert done.status == "succeeded" and done.counts["done"] == 2, done.raw
    summary = client.download_audit(done, "summary.json", tmp_path)
    assert json.loads(summary.read_text())["id"] == audit.id
    with pytest.raises(ApiError) as e:
        client.cancel_audit(audit)
    assert e.value.status == 409


# --- retries -------------------------------------------------------------------------------------------------

class _Flaky(http.server.BaseHTTPRequestHandler):
    """503 with Retry-After: 1 for the first `busy_for` requests, then 200."""

    calls: list[float] = []
    busy_for = 2

    def do_GET(self):
        self.calls.append(time.monotonic())
        busy = len(self.calls) <= self.busy_for
        body = json.dumps({"title": "Service unavailable"} if busy else {"methods": []}).encode()
        self.send_response(503 if busy else 200)
        if busy:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_503_is_retried_after_retry_after():
    _Flaky.calls, _Flaky.busy_for = [], 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert Client(f"http://127.0.0.1:{server.server_port}", "k").methods() == []
    finally:
        server.shutdown()
    gaps = [b - a for a, b in zip(_Flaky.calls, _Flaky.calls[1:], strict=False)]
    assert len(_Flaky.calls) == 3 and all(g >= 0.95 for g in gaps)  # waited what the server asked, twice


def test_a_server_that_stays_unavailable_is_an_api_error():
    _Flaky.calls, _Flaky.busy_for = [], 1000
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ApiError) as e:
            Client(f"http://127.0.0.1:{server.server_port}", "k", retries=1).methods()
    finally:
        server.shutdown()
    assert e.value.status == 503 and len(_Flaky.calls) == 2  # the first answer and one retry


def test_connection_refused_is_retried_then_raised():
    import requests

    from tests.helpers import free_port

    t0 = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        Client(f"http://127.0.0.1:{free_port()}", "k", retries=2, backoff=0.2).models()
    assert time.monotonic() - t0 >= 0.2  # backed off between the tries


class _Dropping(http.server.BaseHTTPRequestHandler):
    """Reads each request; the first `drop` of them get no answer, their connection closed (as gunicorn closes a
    kept-alive connection whose timeout ran out as a request arrived on it); then 200 with a job-like body."""

    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn's gthread workers
    seen: list[tuple[str, str | None]] = []
    drop = 1
    busy = 0  # then this many 409s with Retry-After: the dropped copy still being committed

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.headers.get("Idempotency-Key")))
        if len(self.seen) <= self.drop:
            self.close_connection = True
            return
        if len(self.seen) <= self.drop + self.busy:
            body = b'{"title": "Conflict", "status": 409}'
            self.send_response(409)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = json.dumps({"id": "j1", "status": "queued", "methods": [], "models": []}).encode()
        self.send_response(202 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def dropping():
    _Dropping.seen, _Dropping.drop, _Dropping.busy = [], 1, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dropping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Client(f"http://127.0.0.1:{server.server_port}", "k")
    server.shutdown()


def test_a_get_lost_to_a_closed_connection_is_sent_again_once(dropping):
    assert dropping.methods() == []
    assert [m for m, _ in _Dropping.seen] == ["GET", "GET"]


def test_a_submit_carries_an_idempotency_key_and_is_sent_again_with_it(dropping):
    job = dropping.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"]})
    assert job.id == "j1"
    (first, key), (again, key_again) = _Dropping.seen
    assert first == again == "POST" and key and key_again == key  # the replay makes no second job
    dropping.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"]}, "mine")
    assert _Dropping.seen[-1] == ("POST", "mine")  # a caller's own key is sent as given


def test_a_resent_submit_that_finds_its_first_copy_being_committed_replays_after_retry_after(dropping):
    _Dropping.busy = 1
    assert dropping.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"]}).id == "j1"
    assert [m for m, _ in _Dropping.seen] == ["POST"] * 3 and len({k for _, k in _Dropping.seen}) == 1
    _Dropping.seen, _Dropping.busy = [], 2
    with pytest.raises(ApiError) as e:  # once, not forever
        dropping.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"]})
    assert e.value.status == 409 and len(_Dropping.seen) == 3


def test_a_post_without_idempotency_key_is_not_sent_again(dropping):
    import requests

    with pytest.raises(requests.ConnectionError):
        dropping.audit({"model": "minilm-rt", "methods": ["gradient"], "corpus": {"items": [{"text": TEXT}]}})
    assert _Dropping.seen == [("POST", None)]  # it may have been carried out: not sent twice


def test_a_connection_that_drops_again_is_an_error_after_two_tries(dropping):
    import requests

    _Dropping.drop = 10
    with pytest.raises(requests.ConnectionError):
        dropping.methods()
    assert len(_Dropping.seen) == 2


# --- the typed job's views of a result (a real result document: tests/fixtures/page) ------------------------

def _fixture_result() -> dict:
    from pathlib import Path

    return json.loads((Path(__file__).parents[1] / "fixtures" / "page" / "cnn-rt.json").read_text())


def test_to_pandas_of_a_single_and_of_a_batch_result(monkeypatch):
    result = _fixture_result()
    words = Job.from_raw({"id": "j", "status": "succeeded", "result": result}).to_pandas()
    assert list(words.columns) == ["word", "gradient", "grad_x_input", "lrp"]
    assert words["word"].tolist() == result["word_strings"]
    assert words["grad_x_input"].tolist() == result["methods"]["grad_x_input"]["word_scores"]
    tokens = Job.from_raw({"id": "j", "status": "succeeded", "result": result}).to_pandas("tokens")
    assert list(tokens.columns) == ["token", "special", "gradient", "grad_x_input", "lrp"]
    assert tokens["lrp"].tolist() == result["methods"]["lrp"]["scores"]

    batch = {"schema_version": 1, "kind": "batch", "items": [result, result]}
    frame = Job.from_raw({"id": "b", "status": "succeeded", "result": batch}).to_pandas()
    assert list(frame.columns) == ["item", "word", "gradient", "grad_x_input", "lrp"]
    assert frame["item"].tolist() == [0] * len(result["word_strings"]) + [1] * len(result["word_strings"])

    from service.terminal import summary

    lines = summary({"id": "b", "status": "succeeded", "attempts": 1, "device": "cpu", "result": batch,
                     "artifacts": []}).splitlines()
    assert [line.split(" prediction")[0] for line in lines if "prediction" in line] == ["item 0", "item 1"]

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        Job.from_raw({"id": "j", "status": "succeeded", "result": result}).to_pandas()


def test_a_job_without_result_html_says_so_and_artifacts_ignore_new_fields():
    job = Job.from_raw({"id": "<j>", "status": "running", "artifacts": [
        {"name": "a.png", "content_type": "image/png", "bytes": 3, "sha256": "x", "url": "/u", "new": 1}]})
    assert job.artifact("a.png").bytes == 3 and job.artifact("result.html") is None
    assert job._repr_html_() == ("<p>Lantern job <code>&lt;j&gt;</code> has no result.html yet: it is running. "
                                 "Call <code>client.wait(job)</code> and show the job it returns.</p>")
