"""How a job looks in a terminal: a progress bar while it runs, a short summary when it ends (the CLI and the
demo both print jobs this way)."""
from __future__ import annotations

import sys
from typing import Any

import click


def wait_with_progress(client, job: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    bar = click.progressbar(length=100, label=f"job {job['id'][:8]}", file=sys.stderr) if not quiet else None
    shown = [0]

    def update(doc: dict[str, Any]) -> None:
        if bar is not None:
            pct = int(doc["progress"] * 100)
            bar.label = f"job {doc['id'][:8]} {doc['status']:<9}"
            bar.update(pct - shown[0])
            shown[0] = pct

    try:
        return client.wait(job, on_update=update)
    finally:
        if bar is not None:
            bar.render_finish()


def summary(job: dict[str, Any]) -> str:
    lines = [f"job {job['id']}: {job['status']} (attempts {job['attempts']}, device {job.get('device')})"]
    if job.get("error"):
        lines.append(f"error: {job['error'].get('title')}: {job['error'].get('detail', '')}")
    result = job.get("result")
    if result:
        if result.get("prediction"):
            p = result["prediction"]
            lines.append(f"prediction: {p['label']} ({p['probabilities'][p['label']]:.3f})")
        words = result.get("word_strings") or []
        for method, part in result["methods"].items():
            scores = part.get("word_scores")
            if scores and words:
                top = sorted(zip(words, scores, strict=True), key=lambda ws: -ws[1])[:5]
                lines.append(f"{method}: top words " + ", ".join(f"{w} ({s:.3g})" for w, s in top))
    for a in job.get("artifacts", []):
        lines.append(f"artifact {a['name']:<28} {a['bytes']:>9} B  {a['url']}")
    return "\n".join(lines)
