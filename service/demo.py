"""`make demo`: the embedded stack end to end, on a real bundled model, then a clean shutdown."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from service.client import Client
from service.terminal import summary, wait_with_progress


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_embedded(data_dir: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`lantern up` in a child process; returns it and the development key it printed."""
    env = dict(os.environ, LANTERN_DATA_DIR=str(data_dir.resolve()), PYTHONUNBUFFERED="1",
               LANTERN_LOG_LEVEL=os.environ.get("LANTERN_LOG_LEVEL", "WARNING"))  # the demo prints its own story
    # its own process group, so that a stack that does not stop in time goes down whole (no orphaned worker)
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    key = None
    assert proc.stdout is not None  # stdout=PIPE
    for line in proc.stdout:
        click.echo(f"  [up] {line.rstrip()}")
        if line.startswith("lt_"):
            key = line.strip()
            break
    if key is None:
        raise click.ClickException("`lantern up` exited before printing a key")
    return proc, key


def run_demo(data_dir: Path, out: Path, text: str) -> int:
    t0 = time.monotonic()
    port = _free_port()
    click.echo(f"Starting the embedded stack (SQLite, server-less broker, local objects) in {data_dir}")
    proc, key = start_embedded(data_dir, port)
    try:
        client = Client(f"http://127.0.0.1:{port}", key)
        for _ in range(100):
            try:
                client.session.get(f"{client.url}/readyz", timeout=2).raise_for_status()
                break
            except Exception:
                time.sleep(0.2)
        request = {"model": "minilm-rt", "inputs": {"text": text}, "methods": ["gradient"]}
        click.echo(f"POST /v1/jobs {request}")
        job = wait_with_progress(client, client.submit(request))
        click.echo(summary(job))
        out.mkdir(parents=True, exist_ok=True)
        for artifact in job.get("artifacts", []):
            path = client.download(job["id"], artifact["name"], out)
            click.echo(f"saved {path.resolve()}  (from {client.url}{artifact['url']})")
        click.echo(f"demo finished in {time.monotonic() - t0:.1f}s")
        return 0 if job["status"] == "succeeded" else 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        click.echo("embedded stack shut down")
