"""The web UI's sign-in, sessions, CSRF, tenant boundary and headers, through the real app on SQLite and
PostgreSQL (the browser tests in tests/e2e/test_viewer_*.py drive the same pages in Chromium)."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import replace

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import update

from service.db import ApiKey, Artifact, Job, utcnow
from service.storage import sha256

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A Flask test client used as a browser would: it keeps cookies and reads each form's CSRF token."""

    def __init__(self, app) -> None:
        self.client = app.test_client()

    def token(self, path: str = "/ui/login") -> str:
        page = self.client.get(path)
        found = CSRF.search(page.get_data(as_text=True))
        assert found, page.get_data(as_text=True)[:500]
        return found.group(1)

    def sign_in(self, key: str):
        return self.client.post("/ui/login", data={"key": key, "csrf_token": self.token()})

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict, **kw):
        return self.client.post(path, data=data, **kw)


@pytest.fixture
def app(runtime):
    from service.app import create_app

    if not runtime.settings.embedded:  # production (PostgreSQL) needs LANTERN_SECRET_KEY for the UI
        runtime.settings = replace(runtime.settings, secret_key="test-secret-" + "s" * 32)
    return create_app(runtime=runtime)


@pytest.fixture
def browser(app, new_key) -> Browser:
    b = Browser(app)
    assert b.sign_in(new_key("browser")).status_code == 302  # not the `api` fixture's tenant (acme)
    return b


def test_pages_without_a_session_go_to_the_sign_in_page(app):
    client = app.test_client()
    assert client.get("/").headers["Location"] == "/ui/jobs"
    resp = client.get("/ui/jobs?status=running")
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/login?next=/ui/jobs?status%3Drunning"
    login = client.get("/ui/login")
    assert login.status_code == 200 and 'type="password"' in login.get_data(as_text=True)


def test_sign_in_gives_a_strict_http_only_cookie_that_never_holds_the_key(app, new_key, caplog):
    key = new_key("acme")
    b = Browser(app)
    caplog.set_level(logging.DEBUG)
    resp = b.client.post("/ui/login?next=/ui/audits", data={"key": key, "csrf_token": b.token()})
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/audits"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie and "Secure" not in cookie
    secret = key.rsplit("_", 1)[1]
    assert secret not in cookie and key not in caplog.text
    page = b.get("/ui/jobs")
    assert page.status_code == 200 and key not in page.get_data(as_text=True) and "acme-" in page.get_data(as_text=True)


def test_secure_cookies_setting_marks_the_cookie_secure(tmp_path, new_key, runtime):
    from service.app import create_app
    from service.runtime import Runtime
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, database_url=runtime.settings.db_url, secure_cookies=True,
                             secret_key="s" * 40)
    b = Browser(create_app(runtime=Runtime(settings)))
    assert "Secure" in b.sign_in(new_key("acme")).headers["Set-Cookie"]


def test_a_wrong_key_gets_the_sign_in_page_again(app):
    b = Browser(app)
    resp = b.sign_in("lt_nothing_here")
    assert resp.status_code == 401 and "unknown API key" in resp.get_data(as_text=True)
    assert b.get("/ui/jobs").status_code == 302


def test_a_post_needs_this_session_s_csrf_token_and_this_site(app, new_key):
    key = new_key("acme")
    stranger = app.test_client()  # a cross-site form: SameSite=Strict sends no cookie, so no token can match
    assert stranger.post("/ui/login", data={"key": key, "csrf_token": "guess"}).status_code == 403
    b = Browser(app)
    token = b.token()
    assert b.post("/ui/login", {"key": key}).status_code == 403
    assert b.post("/ui/login", {"key": key, "csrf_token": token},
                  headers={"Origin": "https://evil.example"}).status_code == 403
    assert b.post("/ui/login", {"key": key, "csrf_token": token}, headers={"Origin": "null"}).status_code == 403
    # a scripted client with the right token and no Origin or Referer passes
    assert b.post("/ui/login", {"key": key, "csrf_token": token}).status_code == 302
    token = b.token("/ui/jobs/new")
    page = b.post("/ui/logout", {"csrf_token": "wrong"})
    assert page.status_code == 403 and "text/html" in page.headers["Content-Type"]
    assert b.post("/ui/logout", {"csrf_token": token}, headers={"Origin": "http://localhost"}).status_code == 302
    assert b.get("/ui/jobs").status_code == 302  # signed out


def test_a_forged_or_expired_cookie_gets_the_sign_in_page(app, browser, runtime):
    from service.ui.session import secret_key

    client = app.test_client()
    client.set_cookie("lantern_session", browser.client.get_cookie("lantern_session", path="/ui").value + "x",
                      path="/ui")
    assert client.get("/ui/jobs").headers["Location"].startswith("/ui/login")
    forged = URLSafeTimedSerializer("not-our-secret", salt="cookie-session",
                                    signer_kwargs={"key_derivation": "hmac", "digest_method": "sha1"})
    client.set_cookie("lantern_session", forged.dumps({"key_id": "abc"}), path="/ui")
    assert client.get("/ui/jobs").headers["Location"].startswith("/ui/login")

    import hashlib

    expired = URLSafeTimedSerializer(secret_key(runtime.settings), salt="cookie-session",
                                     signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1})
    real = expired.loads(browser.client.get_cookie("lantern_session", path="/ui").value)
    signer = expired.make_signer("cookie-session")
    signer.get_timestamp = lambda: int(time.time()) - 13 * 3600  # a genuine cookie, signed 13 hours ago
    old = signer.sign(expired.dump_payload(real)).decode()
    client.set_cookie("lantern_session", old, path="/ui")
    assert client.get("/ui/jobs").headers["Location"].startswith("/ui/login")
    fresh = expired.make_signer("cookie-session").sign(expired.dump_payload(real)).decode()
    client.set_cookie("lantern_session", fresh, path="/ui")  # the same payload signed now: accepted
    assert client.get("/ui/jobs").status_code == 200


def test_a_revoked_key_ends_its_sessions(browser, runtime):
    assert browser.get("/ui/jobs").status_code == 200
    with runtime.db.session() as s:
        s.execute(update(ApiKey).values(revoked_at=utcnow()))
    assert browser.get("/ui/jobs").headers["Location"].startswith("/ui/login")


def _finished_job(runtime, api_key_client, files: dict[str, tuple[bytes, str]]) -> str:
    job_id = api_key_client.post("/v1/jobs", json={"model": "minilm-rt", "inputs": {"text": "A fine film."},
                                                   "methods": ["gradient"]}).get_json()["id"]
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="succeeded", finished_at=utcnow(),
                                                             result={"result": None}))
        for name, (data, kind) in files.items():
            key = f"jobs/{job_id}/{name}"
            runtime.store.put(key, data, kind)
            s.add(Artifact(job_id=job_id, name=name, content_type=kind, bytes=len(data), sha256=sha256(data),
                           storage_key=key))
    return job_id


HTML = '<!doctype html><style>p{color:red}</style><script>document.title = "x";</script>' \
       '<script type="application/json" id="data">{"a": 1}</script><p>hi</p>'


def test_artifacts_inline_with_nosniff_and_a_csp_of_their_own(runtime, app, api, browser):
    import base64
    import hashlib

    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    job_id = _finished_job(runtime, api, {"result.html": (HTML.encode(), "text/html"),
                                          "gradient.png": (png, "image/png"),
                                          "gradient.safetensors": (b"\x00" * 8, "application/octet-stream")})
    b = Browser(app)
    b.sign_in(api.key)
    html = b.get(f"/ui/jobs/{job_id}/artifacts/result.html")
    assert html.status_code == 200 and html.data == HTML.encode()
    assert html.headers["Content-Disposition"].startswith("inline")
    assert html.headers["X-Content-Type-Options"] == "nosniff"
    csp = html.headers["Content-Security-Policy"]
    want = base64.b64encode(hashlib.sha256(b'document.title = "x";').digest()).decode()
    assert f"'sha256-{want}'" in csp and "sandbox allow-scripts" in csp and "default-src 'none'" in csp
    assert "unsafe-eval" not in csp and csp.count("'sha256-") == 1  # the JSON data block is not code
    image = b.get(f"/ui/jobs/{job_id}/artifacts/gradient.png")
    assert image.data == png and image.headers["Content-Disposition"].startswith("inline")
    assert image.headers["Content-Type"] == "image/png" and "sandbox" in image.headers["Content-Security-Policy"]
    tensors = b.get(f"/ui/jobs/{job_id}/artifacts/gradient.safetensors")
    assert tensors.headers["Content-Disposition"].startswith("attachment")
    page = b.get(f"/ui/jobs/{job_id}").get_data(as_text=True)
    assert f'href="/ui/jobs/{job_id}/artifacts/gradient.png"' in page
    # another tenant: the 404 page, for the job and for its artifacts alike
    for path in (f"/ui/jobs/{job_id}", f"/ui/jobs/{job_id}/artifacts/gradient.png", f"/ui/jobs/{job_id}/status.json"):
        other = browser.get(path)
        assert other.status_code == 404 and "text/html" in other.headers["Content-Type"], path
        assert "404" in other.get_data(as_text=True)


def test_pages_send_a_csp_without_inline_or_eval_scripts(browser):
    for path in ("/ui/jobs", "/ui/jobs/new", "/ui/audits", "/ui/login"):
        resp = browser.get(path)
        csp = resp.headers["Content-Security-Policy"]
        script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
        assert script.split() == ["script-src", "'self'"], csp
        assert "frame-ancestors 'none'" in csp and resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"] == "no-store"
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", resp.get_data(as_text=True)), path  # no inline handlers


def test_the_submit_form_goes_through_the_api_s_validation_and_lands_on_the_job(browser, api):
    token = browser.token("/ui/jobs/new")
    form = {"csrf_token": token, "model": "minilm-rt", "shape": "text", "text": "A <b>bold</b> film.",
            "methods": ["gradient", "integrated_gradients"], "param.integrated_gradients.steps": "8",
            "param.integrated_gradients.baseline": "mask", "param.gradient.aggregate": "l2"}
    resp = browser.post("/ui/jobs/new", form)
    assert resp.status_code == 303
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    page = browser.get(resp.headers["Location"]).get_data(as_text=True)
    assert "queued" in page and 'http-equiv="refresh"' in page
    status = browser.get(f"/ui/jobs/{job_id}/status.json").get_json()
    assert status["status"] == "queued" and status["finished"] is False
    doc = api.as_(api.key).get(f"/v1/jobs/{job_id}")
    assert doc.status_code == 404  # the browser's tenant is not `api`'s: the job is its own
    rows = browser.get("/ui/jobs.json?status=queued").get_json()["items"]
    assert [r["id"] for r in rows] == [job_id] and rows[0]["methods"] == ["gradient", "integrated_gradients"]
    assert browser.get("/ui/jobs.json?status=succeeded").get_json()["items"] == []
    listing = browser.get("/ui/jobs?model=minilm-rt").get_data(as_text=True)
    assert job_id[:8] in listing


def test_the_submit_form_shows_the_api_s_refusals(browser):
    token = browser.token("/ui/jobs/new")
    resp = browser.post("/ui/jobs/new", {"csrf_token": token, "model": "minilm-rt", "shape": "text", "text": "  ",
                                         "methods": ["integrated_gradients"],
                                         "param.integrated_gradients.steps": "100000"})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "not submitted" in page and "must not be empty" in page
    resp = browser.post("/ui/jobs/new", {"csrf_token": token, "model": "no-such-model", "shape": "text",
                                         "text": "fine", "methods": ["gradient"]})
    assert resp.status_code == 422 and "unknown model" in resp.get_data(as_text=True)
    resp = browser.post("/ui/jobs/new", {"csrf_token": token, "model": "minilm-rt", "shape": "text",
                                         "text": "fine", "methods": ["integrated_gradients"],
                                         "param.integrated_gradients.steps": "100000"})
    assert resp.status_code == 422 and "steps" in resp.get_data(as_text=True)
    resp = browser.post("/ui/jobs/new", {"csrf_token": token, "model": "minilm-rt", "shape": "text",
                                         "text": "fine", "methods": ["gradient"], "faithfulness": "most"})
    assert resp.status_code == 422 and "faithfulness" in resp.get_data(as_text=True)
    assert browser.get("/ui/jobs.json").get_json()["items"] == []  # nothing was queued


def test_the_submit_form_sends_a_faithfulness_level_only_when_not_the_default():
    from werkzeug.datastructures import MultiDict

    from service.ui.forms import request_body

    form = {"model": "minilm-rt", "shape": "text", "text": "fine", "methods": "gradient"}
    assert request_body(MultiDict({**form, "faithfulness": "basic"}), [])["faithfulness"] == "basic"
    assert "faithfulness" not in request_body(MultiDict({**form, "faithfulness": "full"}), [])
    assert "faithfulness" not in request_body(MultiDict(form), [])


def test_user_strings_are_escaped_on_every_page(browser, runtime):
    payload = '"><img src=x onerror=alert(1)><script>window.__xss=1</script>'
    token = browser.token("/ui/jobs/new")
    resp = browser.post("/ui/jobs/new", {"csrf_token": token, "model": "minilm-rt", "shape": "text",
                                         "text": payload, "methods": ["gradient"]})
    job_path = resp.headers["Location"]
    for path in (job_path, "/ui/jobs", f"/ui/jobs?model={payload}", "/ui/login?next=" + payload):
        page = browser.get(path).get_data(as_text=True)
        assert "<script>window.__xss" not in page and "<img src=x" not in page, path
    bad = browser.post("/ui/jobs/new", {"csrf_token": token, "model": payload, "shape": "text", "text": payload,
                                        "methods": [payload]})
    page = bad.get_data(as_text=True)
    assert bad.status_code == 422 and "<img src=x" not in page and "&lt;img src=x" in page


def test_an_unknown_status_filter_is_a_400_page(browser):
    resp = browser.get("/ui/jobs?status=<b>")
    assert resp.status_code == 400 and "unknown status" in resp.get_data(as_text=True)


def test_the_embedded_default_keeps_one_secret_for_every_process(tmp_path):
    from service.ui.session import secret_key
    from tests.helpers import make_settings

    settings = make_settings(tmp_path)
    first = secret_key(settings)
    assert first and secret_key(make_settings(tmp_path)) == first
    assert (settings.data_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert secret_key(make_settings(tmp_path, secret_key="given")) == "given"


def test_production_without_a_secret_turns_the_ui_off_not_the_api(tmp_path, pg_url, redis_url):
    from service.app import create_app
    from service.runtime import Runtime
    from service.ui.session import secret_key
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, "postgres", pg_url, redis_url)
    assert secret_key(settings) is None
    app = create_app(runtime=Runtime(settings))
    client = app.test_client()
    resp = client.get("/ui/login")
    assert resp.status_code == 503 and "LANTERN_SECRET_KEY" in resp.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200
