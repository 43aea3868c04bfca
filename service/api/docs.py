"""The API's documentation, offline: Swagger UI (/docs) and ReDoc (/redoc) from files vendored in the package
(static/VERSIONS.txt; flask-smorest renders both pages and points them at /v1/openapi.json), and a page per problem
type (/problems/<slug>, the `type` of every problem answered). No key needed."""
from __future__ import annotations

import re
from html import escape
from pathlib import Path

from flask import Blueprint, Response

from service.errors import KINDS, PROBLEM_TYPES, not_found

ASSETS = "/docs/assets"
blp = Blueprint("docs", __name__, static_folder=str(Path(__file__).parent / "static"), static_url_path=ASSETS)

SWAGGER_UI_URL = f"{ASSETS}/swagger-ui/"
REDOC_URL = f"{ASSETS}/redoc/redoc.standalone.js"

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:48em;margin:2em auto;line-height:1.5}}
td,th{{text-align:left;padding:.2em .8em .2em 0;vertical-align:top}}</style></head>
<body>{body}<p><a href="/redoc">API reference</a> · <a href="{types}">all problem types</a></p></body></html>"""


@blp.get(PROBLEM_TYPES.rstrip("/"))
def problem_types() -> Response:
    rows = "".join(f'<tr><td><a href="{PROBLEM_TYPES}{slug}">{PROBLEM_TYPES}{slug}</a></td><td>{k.status}</td>'
                   f"<td>{escape(k.title)}</td><td>{_code(k.when)}</td></tr>" for slug, k in KINDS.items())
    body = f"<h1>Problem types</h1><table><tr><th>type</th><th>status</th><th>title</th><th>when</th></tr>{rows}</table>"
    return _page("Lantern problem types", body)


@blp.get(f"{PROBLEM_TYPES}<slug>")
def problem_type(slug: str) -> Response:
    kind = KINDS.get(slug)
    if kind is None:
        raise not_found(f"problem type {slug!r}")
    body = (f"<h1>{escape(kind.title)}</h1><p>Status {kind.status}, for {_code(kind.when)}.</p>"
            "<p>The problem's <code>detail</code> says what went wrong in this case, and <code>errors</code> "
            "(when present) which fields.</p>")
    return _page(f"Lantern problem: {kind.title}", body)


def _code(text: str) -> str:
    """Escaped, with `names` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _page(title: str, body: str) -> Response:
    return Response(PAGE.format(title=escape(title), body=body, types=PROBLEM_TYPES.rstrip("/")),
                    mimetype="text/html")
