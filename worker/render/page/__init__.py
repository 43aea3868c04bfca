"""The job and audit views (docs/viewer.md): server-rendered HTML fragments that the web UI embeds, and the
self-contained pages written as artifacts (`result.html`, the audit's `report.html`).

Jinja2 with autoescaping, no Flask: the engine renders the same views the service serves. The fragments need
``assets/viewer.css`` and ``assets/viewer.js`` (served by the UI under /ui/static/; inlined by the pages)."""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from worker.render.page import views
from worker.render.page.palette import fmt

ASSET_DIR = Path(__file__).resolve().parent / "assets"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

__all__ = ["ASSET_DIR", "audit_view", "job_view", "report_html", "result_html", "script_json"]


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False)
    env.globals["fmt"] = fmt
    return env


def script_json(data: Any) -> Markup:
    """JSON safe inside a <script> element: `<`, `>` and `&` escaped, so no text can close the element."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_finite)
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def _finite(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def _clean(data: Any) -> Any:
    """NaN and infinities (a method can produce them) become null: JSON has no spelling for them."""
    if isinstance(data, float):
        return data if data == data and abs(data) != float("inf") else None
    if isinstance(data, dict):
        return {k: _clean(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_clean(v) for v in data]
    return data


def job_view(document: dict[str, Any], artifact_url: Callable[[str], str] | None = None) -> Markup:
    """The job view of a job document as `GET /v1/jobs/<id>` answers it (or `{"result": …, "compare"?: …}`)."""
    view = views.job(document, artifact_url)
    return Markup(_env().get_template("job.html").render(view=view,
                                                         data=script_json(_clean(views.script_data(document)))))


def audit_view(audit: dict[str, Any], items: list[dict[str, Any]],
               artifact_url: Callable[[str], str] | None = None) -> Markup:
    """The audit view of an audit document and its items: the lines of its `attributions.jsonl`, or the item rows
    (`service.audit_lifecycle.item_results`: model, position, label, status, input, result, error)."""
    from worker.render.page import audit as audit_views

    view = audit_views.audit(audit, items, artifact_url)
    return Markup(_env().get_template("audit.html").render(view=view, data=script_json(_clean(view["data"]))))


def result_html(document: dict[str, Any]) -> str:
    """A job's `result.html`: one self-contained page, no network request, CSP by hashes of its inline code."""
    model = (document.get("model") or (document.get("result") or {}).get("model") or {})
    title = f"Lantern · {model.get('name', 'job') if isinstance(model, dict) else model}"
    return page(title, job_view(document))


def report_html(audit: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """An audit's `report.html`, the same kind of page."""
    return page(f"Lantern audit {audit.get('id', '')}", audit_view(audit, items))


def page(title: str, body: Markup) -> str:
    css, js = _asset("viewer.css"), _asset("viewer.js")
    csp = ("default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'; "
           f"style-src '{_sha256(css)}'; script-src '{_sha256(js)}'")
    return _env().get_template("page.html").render(title=title, body=body, css=Markup(css), js=Markup(js), csp=csp)


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@cache
def _asset(name: str) -> str:
    return (ASSET_DIR / name).read_text(encoding="utf-8")
