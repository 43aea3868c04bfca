"""The web UI's sign-in: a signed session cookie that holds the key's id (never the key), and a CSRF token per
session. Flask's own session, configured HttpOnly, SameSite=Strict, Secure when the site is served over HTTPS."""
from __future__ import annotations

import hmac
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, abort, g, request, session

from service.auth import Caller, authenticate, authenticate_key_id
from service.config import Settings
from service.errors import Problem
from service.runtime import Runtime

LIFETIME = timedelta(hours=12)  # a signed cookie older than this is refused (itsdangerous checks its timestamp)
CSRF_FIELD = "csrf_token"
SECRET_FILE = "secret_key"


def secret_key(settings: Settings) -> str | None:
    """LANTERN_SECRET_KEY; in the embedded default, one kept in the data dir (made once, so every API process on
    the machine agrees); None in production without it (the UI then refuses to serve: cookies need a shared key)."""
    if settings.secret_key:
        return settings.secret_key
    if not settings.embedded:
        return None
    return _kept_secret(settings.data_path / SECRET_FILE)


def _kept_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: two processes starting together cannot both write one; the loser reads the winner's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _read_secret(path: Path) -> str:
    for _ in range(50):  # the winner may not have written it yet
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty")


def configure(app: Flask, settings: Settings) -> bool:
    """Session cookie settings on the app; False when there is no key to sign with."""
    key = secret_key(settings)
    if key is None:
        return False
    app.secret_key = key
    app.config.update(SESSION_COOKIE_NAME="lantern_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=settings.secure_cookies,
                      SESSION_COOKIE_PATH="/ui", PERMANENT_SESSION_LIFETIME=LIFETIME)
    return True


def sign_in(runtime: Runtime, key: str) -> Caller:
    """Check the key as the API does (401 Problem when it is not good); a fresh session holds its id."""
    with runtime.db.session() as s:
        caller = authenticate(s, f"Bearer {key}")
    session.clear()  # a new session on sign-in: no token or id from before survives (session fixation)
    session.permanent = True
    session["key_id"] = caller.key_id
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return caller


def sign_out() -> None:
    session.clear()


def current_caller(runtime: Runtime) -> Caller | None:
    """The signed-in caller, or None (no session, a forged or expired cookie, or a key revoked or expired since)."""
    key_id = session.get("key_id")
    if not isinstance(key_id, str):
        return None
    try:
        with runtime.db.session() as s:
            return authenticate_key_id(s, key_id)
    except Problem:
        session.clear()
        return None


def csrf_token() -> str:
    """This session's token (made on first use, e.g. by the sign-in form before anyone signed in)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def check_csrf() -> None:
    """403 for a state-changing request without this session's token, or from another origin. A scripted client
    that sends the right token and no Origin/Referer passes; a cross-site form carries no Strict cookie, so no
    token matches."""
    sent = request.form.get(CSRF_FIELD, "")
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(403, "the form's CSRF token is missing or does not match this session; reload the page")
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source and _host(source) != request.host:  # Origin "null" (a sandboxed page) is another site too
        abort(403, "a form posted from another site")
    g.csrf_checked = True


def _host(url: str) -> str:
    """host[:port] of an Origin or Referer (the scheme is left out: a TLS proxy in front makes ours http)."""
    return urlsplit(url).netloc
