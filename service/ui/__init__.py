"""The signed-in web UI under /ui/ (docs/viewer.md): pages rendered on the server from the API's own functions,
with the job and audit views of worker/render/page. `register(app)` adds it to the API's Flask app."""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response, abort, redirect, send_from_directory

from service.runtime import Runtime

log = logging.getLogger("lantern.ui")
STATIC = Path(__file__).parent / "static"


def register(app: Flask, runtime: Runtime) -> None:
    import service.ui.session as session
    import service.ui.views as views

    app.extensions["lantern.ui"] = session.configure(app, runtime.settings)
    if not app.extensions["lantern.ui"]:
        log.warning("LANTERN_SECRET_KEY is not set: the web UI (/ui/) is off (the API is unaffected)")
    app.register_blueprint(views.bp)
    app.add_url_rule("/", "root", lambda: redirect("/ui/jobs"))
    app.add_url_rule("/ui/static/<path:name>", "ui_static", _static)
    app.jinja_env.globals["csrf_token"] = session.csrf_token


def _static(name: str) -> Response:
    """Our own files, then the job view's (worker/render/page's ASSET_DIR) under the same path."""
    from service.ui.views import secured

    if (STATIC / name).is_file():
        return secured(send_from_directory(STATIC, name, max_age=300))
    try:
        from worker.render.page import ASSET_DIR
    except ImportError:
        abort(404)
    return secured(send_from_directory(ASSET_DIR, name, max_age=300))
