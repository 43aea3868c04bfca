"""Artifacts for a signed-in browser: always through this server (never a presigned redirect, so these headers hold),
HTML and images inline, everything else as a download. An HTML artifact runs sandboxed (an opaque origin: no
cookies, no same-origin API calls) and only its own inline scripts run, allowed by their hashes."""
from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

from flask import Response, stream_with_context

from service.db import Artifact
from service.errors import not_found
from service.runtime import Runtime
from service.storage import ObjectNotFound

INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml")
# what an artifact shown in the browser may do besides its own inline code: nothing from the network
IMAGE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


def artifact_response(rt: Runtime, row: Artifact) -> Response:
    kind = (row.content_type or "application/octet-stream").split(";")[0].strip().lower()
    headers = {"X-Content-Type-Options": "nosniff", "ETag": f'"{row.sha256}"', "Cache-Control": "private, no-cache",
               "Content-Disposition": f'{"inline" if kind in INLINE or kind == "text/html" else "attachment"}; '
                                      f'filename="{row.name}"'}
    try:
        if kind == "text/html":
            data = rt.store.get(row.storage_key)
            headers["Content-Security-Policy"] = html_csp(data.decode("utf-8", "replace"))
            return Response(data, mimetype="text/html", headers=headers)
        chunks = rt.store.stream(row.storage_key)
        first = next(chunks, b"")
    except ObjectNotFound:
        raise not_found(f"the stored bytes of artifact {row.name!r}") from None
    headers["Content-Security-Policy"] = IMAGE_CSP
    headers["Content-Length"] = str(row.bytes)

    def body():
        yield first
        yield from chunks

    return Response(stream_with_context(body()), mimetype=kind, headers=headers)


def html_csp(html: str) -> str:
    """A policy for one HTML page: its own inline scripts (by hash) and nothing else; no network at all."""
    scripts = " ".join(f"'sha256-{_hash(code)}'" for code in inline_scripts(html))
    return (f"default-src 'none'; script-src {scripts or chr(39) + 'none' + chr(39)}; style-src 'unsafe-inline'; "
            "img-src data: blob:; font-src data:; form-action 'none'; base-uri 'none'; sandbox allow-scripts")


def _hash(code: str) -> str:
    return base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()


class _Scripts(HTMLParser):
    """The text of each executable inline <script> (data blocks such as application/json are never run)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.found: list[str] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "script":
            return
        a = dict(attrs)
        kind = (a.get("type") or "text/javascript").lower()
        runs = "src" not in a and kind in ("text/javascript", "module", "application/javascript")
        self._open = [] if runs else None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._open is not None:
            self.found.append("".join(self._open))
            self._open = None


def inline_scripts(html: str) -> list[str]:
    parser = _Scripts()
    parser.feed(html)
    parser.close()
    return parser.found
