"""How jobs and audits look in a terminal: a progress bar while they run (on stderr), a short summary when they
end (the CLI and the demo both print them this way). Ids are printed in full."""
from __future__ import annotations

import sys
from typing import Any

import click


def wait_with_progress(client, job: Any, quiet: bool = False) -> Any:
    bar = click.progressbar(length=100, label=f"job {job['id']}", file=sys.stderr) if not quiet else None
    shown = [0]

    def update(doc: Any) -> None:
        if bar is not None:
            pct = int(doc["progress"] * 100)
            bar.label = f"job {doc['id']} {doc['status']:<9}"
            bar.update(pct - shown[0])
            shown[0] = pct

    try:
        return client.wait(job, on_update=update)
    finally:
        if bar is not None:
            bar.render_finish()


def follow_audit(client, doc: Any, quiet: bool = False) -> Any:
    if quiet:
        return client.wait_audit(doc)
    with click.progressbar(length=doc["counts"]["total"], label="auditing", file=sys.stderr,
                           show_eta=False) as bar:
        shown = [0]

        def update(d: Any) -> None:
            finished = d["counts"]["done"] + d["counts"]["failed"]
            ips = d.get("items_per_second")
            bar.label = f"auditing {d['status']:<9} {ips or 0:5.2f} items/s, ETA {d.get('eta_seconds') or 0:.0f}s"
            bar.update(finished - shown[0])
            shown[0] = finished

        return client.wait_audit(doc, on_update=update)


def summary(job: Any) -> str:
    lines = [f"job {job['id']}: {job['status']} (attempts {job['attempts']}, device {job.get('device')})"]
    if job.get("error"):
        lines.append(f"error: {job['error'].get('title')}: {job['error'].get('detail', '')}")
    result = job.get("result")
    if result:
        batch = result.get("kind") == "batch"
        for n, item in enumerate(result["items"] if batch else [result]):
            lines += [f"{'item ' + str(n) + ' ' if batch else ''}{line}" for line in _result_lines(item)]
    for a in job.get("artifacts", []):
        lines.append(f"artifact {a['name']:<28} {a['bytes']:>9} B  {a['url']}")
    return "\n".join(lines)


def _result_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    if result.get("prediction"):
        p = result["prediction"]
        lines.append(f"prediction: {p['label']} ({p['probabilities'][p['label']]:.3f})")
    words = result.get("word_strings") or []
    for method, part in result.get("methods", {}).items():
        scores = part.get("word_scores")
        if isinstance(scores, list) and words and len(scores) == len(words):
            top = sorted(zip(words, scores, strict=True), key=lambda ws: -ws[1])[:5]
            lines.append(f"{method}: top words " + ", ".join(f"{w} ({s:.3g})" for w, s in top))
    return lines
