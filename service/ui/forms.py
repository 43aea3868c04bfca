"""The submit form: its fields from the method catalog, and the posted form back into a job request body (which
then goes through the API's own schema and submit code)."""
from __future__ import annotations

import json
from typing import Any

from werkzeug.datastructures import MultiDict

PARAM = "param.{method}.{name}"


def param_fields(catalog: list[dict]) -> list[dict]:
    """Per method: its name, summary and one input per parameter (kind, default, choices, bounds)."""
    out = []
    for method in catalog:
        props = method["params"].get("properties", {})
        out.append({"name": method["name"], "summary": method["summary"],
                    "params": [_field(method["name"], name, spec) for name, spec in props.items()]})
    return out


def _field(method: str, name: str, spec: dict) -> dict:
    kinds = spec.get("type", "string")
    kind = next((k for k in (kinds if isinstance(kinds, list) else [kinds]) if k != "null"), "string")
    default = spec.get("default")
    if kind == "array" and isinstance(default, list):
        default = ", ".join(str(v) for v in default)
    input_kind = {"integer": "number", "number": "number", "boolean": "checkbox"}.get(kind, "text")
    return {"id": PARAM.format(method=method, name=name), "name": name, "kind": kind, "input": input_kind,
            "default": "" if default is None else default, "choices": spec.get("enum"),
            "min": spec.get("minimum"), "max": spec.get("maximum"),
            "step": 1 if kind == "integer" else "any"}


def request_body(form: MultiDict, catalog: list[dict]) -> dict[str, Any]:
    """The job request a posted form asks for. Values that do not convert stay text: the schema then names them."""
    methods = form.getlist("methods")
    body: dict[str, Any] = {"model": form.get("model", ""), "methods": methods,
                            "compare_with": [m for m in form.getlist("compare_with") if m]}
    if form.get("shape") == "pair":
        body["inputs"] = {"premise": form.get("premise", ""), "hypothesis": form.get("hypothesis", "")}
    else:
        body["inputs"] = {"text": form.get("text", "")}
    for name in ("target", "score"):
        if form.get(name, "").strip():
            body[name] = form[name].strip()
    if form.get("layers", "").strip():
        body["layers"] = [v.strip() for v in form["layers"].split(",") if v.strip()]
    if form.get("seed", "").strip():
        body["seed"] = _convert("integer", form["seed"])
    if form.get("faithfulness", "full") != "full":  # "full" is the default: the stored request stays today's
        body["faithfulness"] = form["faithfulness"]
    params = {}
    for method in param_fields(catalog):
        if method["name"] not in methods:
            continue
        values = {}
        for f in method["params"]:
            if f["kind"] == "boolean":
                values[f["name"]] = f["id"] in form
            elif form.get(f["id"], "").strip():
                values[f["name"]] = _convert(f["kind"], form[f["id"]])
        if values:
            params[method["name"]] = values
    if params:
        body["params"] = params
    return body


def _convert(kind: str, raw: str) -> Any:
    raw = raw.strip()
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind in ("array", "object"):
            return json.loads(raw) if raw[:1] in "[{" else [v.strip() for v in raw.split(",") if v.strip()]
    except ValueError:
        return raw
    return raw


def field_errors(errors: Any, prefix: str = "") -> list[str]:
    """A problem's (or marshmallow's) nested field errors as "field: message" lines."""
    if isinstance(errors, dict):
        return [line for key, value in errors.items()
                for line in field_errors(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return [f"{prefix}: {e}" if prefix else e for e in errors]
    if isinstance(errors, list):
        return [line for e in errors for line in field_errors(e, prefix)]
    return [f"{prefix}: {errors}" if prefix else str(errors)]
