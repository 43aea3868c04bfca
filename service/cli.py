"""The `lantern` command (docs/api.md): embedded stack, production processes, keys, jobs, zoo, demo."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from service.config import Settings
from service.domain import JobStatus
from service.terminal import summary, wait_with_progress


def _settings(data_dir: str | None) -> Settings:
    return Settings.from_env(data_dir=data_dir)


def _export(data_dir: str | None) -> None:
    """Child processes and modules that read the environment see --data-dir too."""
    if data_dir:
        os.environ["LANTERN_DATA_DIR"] = str(Path(data_dir).resolve())


def setup_logging(settings: Settings) -> None:
    from service.logs import configure

    configure(settings.log_level, settings.log_json)


@click.group()
def main() -> None:
    """Lantern: explanations for PyTorch NLP models, as a service."""


# --- processes -------------------------------------------------------------------------------------------

data_dir_option = click.option("--data-dir", default=None, help="data directory (default $LANTERN_DATA_DIR)")


@main.command()
@data_dir_option
def migrate(data_dir: str | None) -> None:
    """Create or upgrade the database schema."""
    from service.migrate import upgrade

    settings = _settings(data_dir)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    click.echo("database at head")


@main.command()
@data_dir_option
def purge(data_dir: str | None) -> None:
    """Remove what is older than its retention (LANTERN_RETAIN_*_DAYS): rows and stored objects together."""
    from service.retention import purge as run_purge
    from service.runtime import Runtime

    rt = Runtime(_settings(data_dir))
    try:
        counts = run_purge(rt.db, rt.store, rt.settings)
    finally:
        rt.close()
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()) + " purged")


@main.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
@data_dir_option
def up(host: str, port: int, data_dir: str | None) -> None:
    """Embedded default: migrations, then the API and one worker on this machine."""
    from werkzeug.serving import make_server

    from service.app import create_app
    from service.auth import create_key
    from service.migrate import upgrade
    from service.runtime import Runtime

    _export(data_dir)
    settings = _settings(data_dir)
    setup_logging(settings)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    runtime = Runtime(settings)
    with runtime.db.session() as s:
        _, key = create_key(s, "default")
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=dict(os.environ))
    server = make_server(host, port, create_app(runtime=runtime), threaded=True)
    click.echo(f"Lantern is up at http://{host}:{server.server_port} (data in {settings.data_path})")
    click.echo("Development key for tenant 'default':")
    click.echo(key, color=False)
    sys.stdout.flush()

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    # both explicitly: a process started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt (the embedded demo stops this process with SIGINT)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        _stop_process(worker)
        runtime.close()
        click.echo("Lantern stopped")


def _stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Warm shutdown: SIGTERM lets Celery finish or hand back its task; SIGKILL after the grace period."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@main.command()
@click.option("--bind", default="127.0.0.1:8000")
@click.option("--workers", default=2, type=int)
def serve(bind: str, workers: int) -> None:
    """Production API under gunicorn (settings from the environment)."""
    import tempfile

    # request metrics summed over gunicorn's worker processes (service/metrics.py)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="lantern-api-metrics-"))
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf",
                               "--bind", bind, "--workers", str(workers),
                               "--graceful-timeout", "30", "--timeout", "60", "--access-logfile", "-",
                               "service.wsgi:app"])


@main.command()
@click.option("--queues", default=None, help="comma-separated queues (default: the job and cpu queues)")
@click.option("--concurrency", default=1, type=int, help="processes; keep 1 per GPU")
@data_dir_option
def worker(queues: str | None, concurrency: int, data_dir: str | None) -> None:
    """A Celery worker (settings from the environment)."""
    _export(data_dir)
    settings = _settings(data_dir)
    setup_logging(settings)
    from worker.celery_app import app

    queues = queues or f"{settings.job_queue},{settings.cpu_queue}"
    app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", "prefork",
                     "--loglevel", settings.log_level, "-n", f"lantern-{os.getpid()}@%h", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])


# --- keys ------------------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys: create, list, revoke."""


def _db(data_dir: str | None):
    from service.db import Database
    from service.migrate import upgrade

    settings = _settings(data_dir)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    return Database(settings.db_url)


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--expires", type=float, default=None,
              help="days until the key expires (more than 0); omit it for a key that never expires")
@data_dir_option
def keys_create(tenant: str, expires: float | None, data_dir: str | None) -> None:
    """Make a key (and the tenant if needed). The key is printed alone on the last line."""
    from service.auth import check_expiry, create_key

    try:
        check_expiry(expires)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--expires") from None
    db = _db(data_dir)
    with db.session() as s:
        row, plain = create_key(s, tenant, expires)
    click.echo(f"key id {row.id} for tenant {tenant}" + (f", expires {row.expires_at:%Y-%m-%d %H:%M}Z"
                                                          if row.expires_at else ""), err=False)
    click.echo(plain)


@keys.command("list")
@data_dir_option
def keys_list(data_dir: str | None) -> None:
    from service.auth import describe_key, list_keys

    db = _db(data_dir)
    with db.session() as s:
        for key, tenant in list_keys(s):
            d = describe_key(key, tenant)
            click.echo(f"{d['id']}  {d['tenant']:<20} {d['state']:<8} created {d['created_at'][:19]}"
                       f"  expires {(d['expires_at'] or '-')[:19]}")


@keys.command("revoke")
@click.argument("key_id")
@data_dir_option
def keys_revoke(key_id: str, data_dir: str | None) -> None:
    from service.auth import revoke_key
    from service.errors import Problem

    db = _db(data_dir)
    try:
        with db.session() as s:
            revoke_key(s, key_id)
    except Problem as e:
        raise click.ClickException(e.detail) from None
    click.echo(f"revoked {key_id}")


# --- jobs ------------------------------------------------------------------------------------------------


def _client():
    from service.client import Client

    return Client()


def _param(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in values:
        name, _, raw = item.partition("=")
        method, _, key = name.partition(".")
        if not (method and key and _):
            raise click.BadParameter(f"{item!r}: use METHOD.KEY=VALUE", param_hint="--param")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params.setdefault(method, {})[key] = value
    return params


@main.command()
@click.option("--model", required=True)
@click.option("--text")
@click.option("--premise")
@click.option("--hypothesis")
@click.option("--method", "methods", multiple=True, required=True)
@click.option("--layer", "layers", multiple=True)
@click.option("--target", default="predicted")
@click.option("--param", "params", multiple=True, help="METHOD.KEY=VALUE (JSON values)")
@click.option("--seed", default=0, type=int)
@click.option("--compare-with", "compare", multiple=True)
@click.option("--wait", is_flag=True, help="poll until the job finishes, with a progress bar")
@click.option("--json", "as_json", is_flag=True)
def submit(model: str, text: str | None, premise: str | None, hypothesis: str | None, methods: tuple[str, ...],
           layers: tuple[str, ...], target: str, params: tuple[str, ...], seed: int, compare: tuple[str, ...],
           wait: bool, as_json: bool) -> None:
    """Submit an explanation job."""
    from service.client import ApiError

    if text is not None:
        inputs = {"text": text}
    elif premise is not None and hypothesis is not None:
        inputs = {"premise": premise, "hypothesis": hypothesis}
    else:
        raise click.UsageError("give --text, or --premise and --hypothesis")
    request: dict[str, Any] = {"model": model, "inputs": inputs, "methods": list(methods), "target": target,
                               "params": _param(params), "seed": seed}
    if layers:
        request["layers"] = list(layers)
    if compare:
        request["compare_with"] = list(compare)
    client = _client()
    try:
        job = client.submit(request)
        if wait:
            job = wait_with_progress(client, job, quiet=as_json)
    except ApiError as e:
        raise click.ClickException(_problem_text(e)) from None
    click.echo(json.dumps(job, indent=2) if as_json else summary(job))
    if job["status"] in (JobStatus.FAILED, JobStatus.CANCELLED):
        sys.exit(1)


def _problem_text(e) -> str:
    text = str(e)
    if e.problem.get("errors"):
        text += "\n" + json.dumps(e.problem["errors"], indent=2)
    return text


@main.group()
def jobs() -> None:
    """Read jobs."""


@jobs.command("get")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def jobs_get(job_id: str, as_json: bool) -> None:
    from service.client import ApiError

    try:
        job = _client().get(job_id)
    except ApiError as e:
        raise click.ClickException(_problem_text(e)) from None
    click.echo(json.dumps(job, indent=2) if as_json else summary(job))


@jobs.command("list")
@click.option("--status", default=None)
@click.option("--limit", default=20, type=int)
def jobs_list(status: str | None, limit: int) -> None:
    params = {"limit": limit} | ({"status": status} if status else {})
    for job in _client().list(**params)["items"]:
        click.echo(f"{job['id']}  {job['status']:<10} {job['model']['name']:<18} {job['created_at'][:19]}")


# --- models and zoo --------------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Models known to the service."""


@models.command("list")
def models_list() -> None:
    for m in _client().models():
        click.echo(f"{m['name']:<20} {m['revision'][:12]}  {'zoo' if m['zoo'] else 'registered'}")


@models.command("register")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="model name (default: the directory's name)")
def models_register(path: str, name: str | None) -> None:
    """Upload a model bundle directory (config JSON + safetensors + vocabulary; never pickle)."""
    from service.client import ApiError

    try:
        card = _client().register_model(path, name or Path(path).resolve().name)
    except ApiError as e:
        raise click.ClickException(_problem_text(e)) from None
    click.echo(f"registered {card['name']} revision {card['revision'][:12]} (layers: {', '.join(card['layers'])})")


@models.command("import-esim")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--vocab", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the checkpoint's vocabulary: one word per line, line number = id (padding 0, unknown 1)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the bundle directory to write")
@click.option("--name", default=None, help="model name (default: the output directory's name)")
@click.option("--labels", default="entailment,neutral,contradiction", show_default=True,
              help="class names in logit order")
@click.option("--bos", default=None, help="a token the checkpoint puts before each sentence (e.g. _BOS_)")
@click.option("--eos", default=None, help="a token it puts after each sentence (e.g. _EOS_)")
@click.option("--cased", is_flag=True, help="do not lower-case words")
def models_import_esim(checkpoint: str, vocab: str, out: str, name: str | None, labels: str, bos: str | None,
                       eos: str | None, cased: bool) -> None:
    """Convert a TRUSTED ESIM checkpoint (the common public PyTorch layout) into a safetensors bundle.

    An operator's command: the file is read with torch.load(weights_only=True), which unpickles tensors and plain
    containers only; the service itself never accepts pickled files. Register the bundle with `models register`."""
    from worker.models.base import InputError
    from worker.models.esim import import_checkpoint

    try:
        info = import_checkpoint(checkpoint, vocab, out, name or Path(out).resolve().name, labels.split(","),
                                 bos, eos, lowercase=not cased)
    except InputError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {out}: {json.dumps(info)}")


@main.group()
def zoo() -> None:
    """Train and register the bundled zoo models."""


@zoo.command("train")
@click.argument("name")
@click.option("--out", default=None, help="bundle directory (default: the zoo's own)")
@click.option("--seed", default=0, type=int)
def zoo_train(name: str, out: str | None, seed: int) -> None:
    """Train a zoo model reproducibly on this machine and write its bundle."""
    from worker.zoo.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    metrics = train(name, out, seed=seed)
    click.echo(json.dumps(metrics, indent=2))


# --- audits ---------------------------------------------------------------------------------------------


@main.command()
@click.argument("corpus")
@click.option("--model", "models", multiple=True, required=True, help="repeat to compare models")
@click.option("--method", "methods", multiple=True, required=True)
@click.option("--layer", "layers", multiple=True)
@click.option("--param", "params", multiple=True, help="METHOD.KEY=VALUE (JSON values)")
@click.option("--sample", type=int, default=None, help="audit a seeded sample of N items")
@click.option("--seed", default=0, type=int)
@click.option("--follow", is_flag=True, help="show live progress until the audit ends")
@click.option("--out", default=None, help="write the report artifacts to this folder (implies --follow)")
def audit(corpus: str, models: tuple[str, ...], methods: tuple[str, ...], layers: tuple[str, ...],
          params: tuple[str, ...], sample: int | None, seed: int, follow: bool, out: str | None) -> None:
    """Audit CORPUS (a JSONL/CSV file, or a built-in name such as rt-test) with one or more models."""
    from service.client import ApiError

    client = _client()
    request: dict[str, Any] = {"models": list(models), "methods": list(methods), "params": _param(params),
                               "seed": seed}
    if layers:
        request["layers"] = list(layers)
    if sample:
        request["sample"] = sample
    try:
        if Path(corpus).is_file():
            request["corpus"] = {"upload": client.upload_corpus(corpus)["upload"]}
        else:
            request["corpus"] = {"name": corpus}
        doc = client.audit(request)
        click.echo(f"audit {doc['id']}: {doc['counts']['total']} items", err=True)
        if follow or out:
            doc = follow_audit(client, doc)
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                for a in doc["artifacts"]:
                    click.echo(f"saved {client.download_url(a['url'], Path(out) / a['name'])}")
    except ApiError as e:
        raise click.ClickException(_problem_text(e)) from None
    c = doc["counts"]
    click.echo(f"audit {doc['id']}: {doc['status']} — {c['done']} done, {c['failed']} failed of {c['total']}")
    if doc["status"] in (JobStatus.FAILED, JobStatus.CANCELLED):
        sys.exit(1)


def follow_audit(client, doc: dict[str, Any]) -> dict[str, Any]:
    with click.progressbar(length=doc["counts"]["total"], label="auditing", file=sys.stderr,
                           show_eta=False) as bar:
        shown = [0]

        def update(d: dict[str, Any]) -> None:
            finished = d["counts"]["done"] + d["counts"]["failed"]
            ips = d.get("items_per_second")
            bar.label = f"auditing {d['status']:<9} {ips or 0:5.2f} items/s, ETA {d.get('eta_seconds') or 0:.0f}s"
            bar.update(finished - shown[0])
            shown[0] = finished

        return client.wait_audit(doc, on_update=update)


# --- demo ------------------------------------------------------------------------------------------------


@main.command()
@click.option("--data-dir", default="./lantern-data/demo")
@click.option("--out", default="./demo-output")
@click.option("--text", default="A gripping, beautifully acted film that never lets go.")
def demo(data_dir: str, out: str, text: str) -> None:
    """Start the embedded stack, explain one sentence with minilm-rt, print the result, shut down."""
    from service.demo import run_demo

    sys.exit(run_demo(Path(data_dir), Path(out), text))


if __name__ == "__main__":
    main()
