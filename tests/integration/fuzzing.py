"""schemathesis against the live Flask app, in-process: every operation, every check, positive and negative data,
a fixed seed. `run(app, key, examples)` returns the totals and the failures (used by the slow test and `make fuzz`)."""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Requests the schema admits that the server still refuses, rightly: checked against the named model (methods
# that apply, layers, target labels, method params), the uploaded bundle or file, an upload id (422), or a list
# cursor this API did not issue (400) or that breaks the text rules every query value follows (NUL, lone
# surrogates: 422). A schema cannot say these; everything else it admits must be accepted.
SEMANTIC: dict[str, tuple[int, ...]] = {
    "POST /v1/jobs": (422,), "POST /v1/audits": (422,), "POST /v1/models": (422,), "POST /v1/audits/uploads": (422,),
    "POST /v1/models/{name}:explain": (422,), "GET /v1/jobs": (400, 422), "GET /v1/audits": (400, 422)}
ZOO_MODELS = ("minilm-rt", "bilstm-rt", "cnn-rt")
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]  # schemathesis' default for positive data, less 5xx


@dataclass
class Totals:
    cases: int = 0
    server_errors: int = 0
    failures: Counter = field(default_factory=Counter)  # (check name, operation) -> how many cases
    statuses: Counter = field(default_factory=Counter)  # (operation, status code) -> how many responses
    examples: list[str] = field(default_factory=list)  # a few failing requests, to reproduce
    engine_errors: list[str] = field(default_factory=list)  # schemathesis could not run a check or a case

    @property
    def conformance(self) -> int:
        return sum(n for (check, _), n in self.failures.items() if check != "not_a_server_error")

    def report(self) -> str:
        lines = [f"{self.cases} cases, {self.server_errors} server errors, {self.conformance} conformance failures, "
                 f"{len(self.engine_errors)} engine errors"]
        lines += [f"  {n:4d} x {check} on {op}" for (check, op), n in sorted(self.failures.items())]
        lines += [f"  {n:4d} x {status} from {op}" for (op, status), n in sorted(self.statuses.items())]
        return "\n".join(lines + self.engine_errors[:5] + self.examples[:20])


def config(key: str, examples: int, seed: int):
    from schemathesis import Config

    return Config.from_dict({
        "seed": seed,
        "cache": {"enabled": False},  # no state carried between runs: the same seed gives the same cases
        "continue-on-failure": True,
        "headers": {"Authorization": f"Bearer {key}"},
        "generation": {"mode": "all", "max-examples": examples, "deterministic": True, "no-shrink": True,
                       "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": True, "positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        "operations": [{"include-name": name, "checks": {"positive_data_acceptance": {
            "expected-statuses": [*ACCEPTED, *map(str, statuses)]}}} for name, statuses in SEMANTIC.items()],
    })


def run(app: Any, key: str, examples: int = 20, seed: int = 14) -> Totals:
    import schemathesis
    from schemathesis.engine import events, from_schema

    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app, config=config(key, examples, seed))
    schema.hook("map_body")(_zoo_models)
    totals = Totals()
    with _probes_without_socket_settings():
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                _count(event.recorder, totals)
            elif isinstance(event, events.NonFatalError | events.FatalError):
                totals.engine_errors.append(f"{getattr(event, 'label', '')}: "
                                            f"{getattr(event, 'value', getattr(event, 'exception', ''))!r}")
    return totals


def _zoo_models(context, body):
    """A generated model name is almost never one the server has: swap each well-formed one (1-100 characters,
    as the schema allows) for a zoo model, chosen by the generated name so runs stay deterministic, and the
    requests reach the model checks and job creation. Malformed names stay, for the negative cases."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if "model" in body:
        body["model"] = _zoo_name(body["model"])
    for name in ("models", "compare_with"):
        if isinstance(body.get(name), list):
            body[name] = list(dict.fromkeys(map(_zoo_name, body[name])))  # each model once
    return body


def _zoo_name(name: Any) -> Any:
    if isinstance(name, str) and 1 <= len(name) <= 100:
        return ZOO_MODELS[sum(map(ord, name)) % len(ZOO_MODELS)]
    return name


@contextlib.contextmanager
def _probes_without_socket_settings():
    """schemathesis 4.32.5's `ignored_auth` probe sends through the WSGI transport without a session but with the
    run's socket settings (max_redirects, verify, ...), which werkzeug's test client refuses (TypeError, and the
    check is lost). Drop them there, as the transport itself does when it has a session."""
    from schemathesis.transport.wsgi import WSGITransport

    send = WSGITransport.send

    def without(self, case, *, session=None, **kwargs):
        if session is None:
            for name in ("max_redirects", "verify", "cert", "proxies"):
                kwargs.pop(name, None)
        return send(self, case, session=session, **kwargs)

    WSGITransport.send = without
    try:
        yield
    finally:
        WSGITransport.send = send


def _count(recorder, totals: Totals) -> None:
    totals.cases += len(recorder.cases)
    for interaction in recorder.interactions.values():
        if interaction.response is not None:
            totals.statuses[(recorder.label, interaction.response.status_code)] += 1
            totals.server_errors += interaction.response.status_code >= 500
    for case_id, checks in recorder.checks.items():
        failed = {c.name for c in checks if c.status.name == "FAILURE"}
        for name in failed:
            totals.failures[(name, recorder.label)] += 1
        if failed:
            case = recorder.cases[case_id].value
            response = recorder.interactions.get(case_id)
            status = response.response.status_code if response and response.response else None
            totals.examples.append(f"{sorted(failed)} {recorder.label} -> {status}: "
                                   f"{str(case.body)[:200]!r} q={case.query!r} h={_headers(case)!r}")


def _headers(case) -> dict:
    return {k: v[:40] for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
