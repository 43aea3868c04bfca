"""The `lantern` command (docs/api.md): embedded stack, production processes, keys, jobs, audits, zoo, demo.

The client commands (submit, jobs, audits, methods, models list) need only `pip install lantern`; the others
import the server or the engine inside their function and say which extra to install when it is missing.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click
import requests

from service.client import FAITHFULNESS_LEVELS
from service.config import Settings, SettingsError, warn_unknown
from service.domain import JobStatus
from service.terminal import follow_audit, summary, wait_with_progress

# exit codes (README "Exit codes"; `lantern --help`)
OK, FAILED, USAGE, NOT_FOUND, AUTH, UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_CODES = """\b
Exit codes:
  0  ok
  1  the job or audit failed or was cancelled; the server refused (409, 429, 500)
  2  usage: bad arguments, a bad setting, a missing extra, an invalid request (400, 413, 422)
  3  not found (404, or no id starts with the prefix given)
  4  authentication (401, 403)
  5  the server is unreachable (connection refused, timeout, 503)"""


class Failure(click.ClickException):
    """An error the CLI reports as one line on stderr (`Error: ...`) with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the server's detail held
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class; per error here


def api_failure(e: Any) -> Failure:
    """An ApiError as one line: the problem's title and detail, and for a validation error its fields."""
    detail = e.problem.get("detail") or e.problem.get("title") or ""
    text = f"{e.status} {e.problem.get('title') or ''}: {detail}"
    if e.field_errors:
        text += " (" + "; ".join(e.field_errors) + ")"
    if e.status in (401, 403):
        return Failure(text + " — check --api-key or LANTERN_API_KEY", AUTH)
    code = {404: NOT_FOUND, 400: USAGE, 413: USAGE, 415: USAGE, 422: USAGE, 503: UNREACHABLE}.get(e.status, FAILED)
    return Failure(text, code)


class Lantern(click.Group):
    """Every known failure of any subcommand becomes one line on stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from service.client import ApiError

        try:
            return super().invoke(ctx)
        except ApiError as e:
            raise api_failure(e) from None
        except (requests.ConnectionError, requests.Timeout) as e:
            url = (ctx.obj or {}).get("url") or os.environ.get("LANTERN_URL", "http://127.0.0.1:8000")
            why = "timed out" if isinstance(e, requests.Timeout) else "connection refused or no route"
            raise Failure(f"cannot reach the Lantern server at {url} ({why}); is it running? (--url, "
                          "LANTERN_URL)", UNREACHABLE) from None
        except SettingsError as e:
            raise Failure(str(e), USAGE) from None
        except TimeoutError as e:
            raise Failure(str(e), FAILED) from None
        except BrokenPipeError:  # `lantern jobs list | head -1`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(OK)
        except OSError as e:  # a download's folder not writable, a file not readable, ...
            raise Failure(f"{e.strerror or e}: {e.filename or ''}", FAILED) from None


def needs(extra: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A server or engine command: a missing package is one line naming the extra to install (exit 2)."""
    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except ModuleNotFoundError as e:
                path = click.get_current_context().command_path
                raise Failure(f"`{path}` needs lantern[{extra}] ({e.name} is not installed): "
                              f"pip install 'lantern[{extra}]'", USAGE) from None
        return run
    return wrap


def _require(*modules: str) -> None:
    """Say which extra is missing before starting any process (the import itself happens later, or in a child)."""
    from importlib.util import find_spec

    for name in modules:
        if find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


SERVER, ENGINE = ("flask", "sqlalchemy", "celery"), ("torch", "transformers")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lantern")
    except PackageNotFoundError:
        return "unknown"


def _settings(data_dir: str | None) -> Settings:
    return Settings.from_env(data_dir=data_dir)


def _export(data_dir: str | None) -> None:
    """Child processes and modules that read the environment see --data-dir too."""
    if data_dir:
        os.environ["LANTERN_DATA_DIR"] = str(Path(data_dir).resolve())


def setup_logging(settings: Settings) -> None:
    from service.logs import configure

    configure(settings.log_level, settings.log_json)


@click.group(cls=Lantern, epilog=EXIT_CODES)
@click.version_option(_version(), "--version", prog_name="lantern")
@click.option("--url", envvar="LANTERN_URL", default=None,
              help="the API for client commands (default $LANTERN_URL, else http://127.0.0.1:8000)")
@click.option("--api-key", envvar="LANTERN_API_KEY", default=None, help="API key (default $LANTERN_API_KEY)")
@click.pass_context
def main(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Lantern: explanations for PyTorch NLP models, as a service.

    Ids can be given in full or as any unique prefix. Read commands take --json (one JSON document on stdout).
    Errors are one line on stderr. Shell completion (bash; zsh_source, fish_source likewise):
    eval "$(_LANTERN_COMPLETE=bash_source lantern)"
    """
    ctx.obj = {"url": url, "key": api_key}
    warn_unknown(os.environ)


json_option = click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


# --- processes -------------------------------------------------------------------------------------------

data_dir_option = click.option("--data-dir", default=None, help="data directory (default $LANTERN_DATA_DIR)")


@main.command()
@data_dir_option
@needs("server")
def migrate(data_dir: str | None) -> None:
    """Create or upgrade the database schema."""
    settings = _settings(data_dir)
    from service.migrate import upgrade

    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    click.echo("database at head")


@main.command()
@data_dir_option
@needs("server")
def purge(data_dir: str | None) -> None:
    """Remove what is older than its retention (LANTERN_RETAIN_*_DAYS): rows and stored objects together."""
    settings = _settings(data_dir)
    from service.retention import purge as run_purge
    from service.runtime import Runtime

    rt = Runtime(settings)
    try:
        counts = run_purge(rt.db, rt.store, rt.settings)
    finally:
        rt.close()
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()) + " purged")


@main.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
@data_dir_option
@needs("all")
def up(host: str, port: int, data_dir: str | None) -> None:
    """Embedded default: migrations, then the API and one worker on this machine."""
    _export(data_dir)
    settings = _settings(data_dir)
    _require(*SERVER, *ENGINE)
    from werkzeug.serving import make_server

    from service.app import create_app
    from service.auth import create_key
    from service.migrate import upgrade
    from service.runtime import Runtime

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
@needs("all")
def serve(bind: str, workers: int) -> None:
    """Production API under gunicorn (settings from the environment)."""
    import tempfile

    _settings(None)  # a bad setting is one line and exit 2 here, not a traceback in every gunicorn worker
    _require("gunicorn", *SERVER, *ENGINE)

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
@needs("all")
def worker(queues: str | None, concurrency: int, data_dir: str | None) -> None:
    """A Celery worker (settings from the environment)."""
    _export(data_dir)
    settings = _settings(data_dir)
    setup_logging(settings)
    _require(*SERVER, *ENGINE)
    from worker.celery_app import app

    queues = queues or f"{settings.job_queue},{settings.cpu_queue}"
    app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", "prefork",
                     "--loglevel", settings.log_level, "-n", f"lantern-{os.getpid()}@%h", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])


# --- keys ------------------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys: create, list, revoke (on the server: needs lantern[server])."""


def _db(data_dir: str | None):
    settings = _settings(data_dir)
    from service.db import Database
    from service.migrate import upgrade

    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    return Database(settings.db_url)


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--expires", type=float, default=None,
              help="days until the key expires (more than 0); omit it for a key that never expires")
@data_dir_option
@needs("server")
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
@json_option
@needs("server")
def keys_list(data_dir: str | None, as_json: bool) -> None:
    from service.auth import describe_key, list_keys

    db = _db(data_dir)
    with db.session() as s:
        described = [describe_key(key, tenant) for key, tenant in list_keys(s)]
    if as_json:
        return _print_json({"keys": described})
    for d in described:
        click.echo(f"{d['id']}  {d['tenant']:<20} {d['state']:<8} created {d['created_at'][:19]}"
                   f"  expires {(d['expires_at'] or '-')[:19]}")


@keys.command("revoke")
@click.argument("key_id")
@data_dir_option
@needs("server")
def keys_revoke(key_id: str, data_dir: str | None) -> None:
    from service.auth import revoke_key
    from service.errors import Problem

    db = _db(data_dir)
    try:
        with db.session() as s:
            revoke_key(s, key_id)
    except Problem as e:
        raise Failure(e.detail, NOT_FOUND if e.status == 404 else FAILED) from None
    click.echo(f"revoked {key_id}")


# --- client commands -------------------------------------------------------------------------------------


def _client():
    from service.client import Client

    obj = click.get_current_context().find_root().obj or {}
    return Client(obj.get("url"), obj.get("key"))


def resolve(kind: str, given: str, candidates: Callable[[], Iterable[Any]]) -> str:
    """A full id, or the one id of the caller's that starts with `given` (ids are printed in full, and any unique
    prefix of one is accepted): no match is not found (3), several a usage error (2)."""
    given = given.strip().lower()
    if len(given) == 36:
        return given
    if not given or set(given) - set("0123456789abcdef-"):
        raise Failure(f"{kind} {given!r} not found (ids are hexadecimal UUIDs)", NOT_FOUND)
    matches = [doc.id for doc in candidates() if doc.id.startswith(given)]
    if not matches:
        raise Failure(f"no {kind} with an id starting {given!r}", NOT_FOUND)
    if len(matches) > 1:
        raise Failure(f"{len(matches)} {kind}s have ids starting {given!r} ({', '.join(matches[:3])}"
                      f"{', …' if len(matches) > 3 else ''}): give more characters", USAGE)
    return matches[0]


def _job_id(client, given: str) -> str:
    return resolve("job", given, lambda: client.jobs(limit=100))


def _audit_id(client, given: str) -> str:
    return resolve("audit", given, lambda: client.audits(limit=100))


def _exit_for(doc: Any) -> None:
    if doc["status"] in (JobStatus.FAILED, JobStatus.CANCELLED):
        sys.exit(FAILED)


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


FAITHFULNESS_OPTION = click.option(
    "--faithfulness", type=click.Choice(FAITHFULNESS_LEVELS), default=None,
    help="faithfulness work per method: full (the server's default), basic (no normalised AOPC's bound search), "
         "none")


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
@FAITHFULNESS_OPTION
@click.option("--compare-with", "compare", multiple=True)
@click.option("--wait", is_flag=True, help="poll until the job finishes, with a progress bar (exit 1 if it fails)")
@json_option
def submit(model: str, text: str | None, premise: str | None, hypothesis: str | None, methods: tuple[str, ...],
           layers: tuple[str, ...], target: str, params: tuple[str, ...], seed: int, faithfulness: str | None,
           compare: tuple[str, ...], wait: bool, as_json: bool) -> None:
    """Submit an explanation job; prints its id (in full) and, with --wait, its summary."""
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
    if faithfulness:
        request["faithfulness"] = faithfulness
    client = _client()
    job = client.submit(request)
    if wait:
        job = wait_with_progress(client, job, quiet=as_json)
    _print_json(job.raw) if as_json else click.echo(summary(job))
    _exit_for(job)


@main.group()
def jobs() -> None:
    """Jobs: list, get (--follow), cancel, download."""


@jobs.command("get")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="show progress until the job ends (exit 1 if it fails)")
@json_option
def jobs_get(job_id: str, follow: bool, as_json: bool) -> None:
    """One job: status, prediction, top words, artifacts."""
    client = _client()
    job = client.get(_job_id(client, job_id))
    if follow:
        job = wait_with_progress(client, job, quiet=as_json)
    _print_json(job.raw) if as_json else click.echo(summary(job))
    if follow:
        _exit_for(job)


@jobs.command("list")
@click.option("--status", default=None, type=click.Choice([s.value for s in JobStatus]))
@click.option("--model", default=None)
@click.option("--limit", default=20, type=click.IntRange(1), help="how many, newest first")
@json_option
def jobs_list(status: str | None, model: str | None, limit: int, as_json: bool) -> None:
    listed = _first(_client().jobs(status=status, model=model, limit=min(limit, 100)), limit)
    if as_json:
        return _print_json({"items": [j.raw for j in listed]})
    for job in listed:
        click.echo(f"{job.id}  {job.status:<10} {(job.model or {}).get('name', ''):<18} {(job.created_at or '')[:19]}")


@jobs.command("cancel")
@click.argument("job_id")
@json_option
def jobs_cancel(job_id: str, as_json: bool) -> None:
    """Cancel a queued job at once, a running one at its next step."""
    client = _client()
    job = client.cancel(_job_id(client, job_id))
    if as_json:
        return _print_json(job.raw)
    state = "cancel requested (it stops at its next step)" if job.status == JobStatus.RUNNING else job.status
    click.echo(f"job {job.id}: {state}")


@jobs.command("download")
@click.argument("job_id")
@click.argument("names", nargs=-1)
@click.option("--out", default=".", type=click.Path(file_okay=False), show_default=True, help="folder")
def jobs_download(job_id: str, names: tuple[str, ...], out: str) -> None:
    """Save the job's artifacts NAMES (default: all of them) into --out."""
    client = _client()
    job = client.get(_job_id(client, job_id))
    for path in _download(job, names, out, lambda name, dest: client.download(job, name, dest)):
        click.echo(f"saved {path}")


def _download(doc: Any, names: tuple[str, ...], out: str, save: Callable[[str, Path], Path]) -> Iterator[Path]:
    have = [a.name for a in doc.artifacts]
    missing = [n for n in names if n not in have]
    if missing:
        raise Failure(f"{doc.id} has no artifact {missing[0]!r} (it has: {', '.join(have) or 'none yet'})",
                      NOT_FOUND)
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in names or have:
        yield save(name, Path(out))


def _first(items: Iterator[Any], n: int) -> list[Any]:
    return [item for _, item in zip(range(n), items, strict=False)]


# --- models, methods and zoo -----------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Models known to the service."""


@models.command("list")
@json_option
def models_list(as_json: bool) -> None:
    found = _client().models()
    if as_json:
        return _print_json({"models": found})
    for m in found:
        click.echo(f"{m['name']:<20} {m['revision'][:12]}  {'zoo' if m['zoo'] else 'registered'}")


@models.command("register")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="model name (default: the directory's name)")
def models_register(path: str, name: str | None) -> None:
    """Upload a model bundle directory (config JSON + safetensors + vocabulary; never pickle)."""
    card = _client().register_model(path, name or Path(path).resolve().name)
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
@needs("worker")
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
def methods() -> None:
    """Explanation methods the service offers."""


@methods.command("list")
@json_option
def methods_list(as_json: bool) -> None:
    """Every method, its summary, and whether it needs a model with a head."""
    found = _client().methods()
    if as_json:
        return _print_json({"methods": found})
    for m in found:
        click.echo(f"{m['name']:<22} {m.get('summary', '')}")


@main.group()
def zoo() -> None:
    """Train and register the bundled zoo models."""


@zoo.command("train")
@click.argument("name")
@click.option("--out", default=None, help="bundle directory (default: the zoo's own)")
@click.option("--seed", default=0, type=int)
@needs("worker")
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
@FAITHFULNESS_OPTION
@click.option("--follow", is_flag=True, help="show live progress until the audit ends")
@click.option("--out", default=None, help="write the report artifacts to this folder (implies --follow)")
@json_option
def audit(corpus: str, models: tuple[str, ...], methods: tuple[str, ...], layers: tuple[str, ...],
          params: tuple[str, ...], sample: int | None, seed: int, faithfulness: str | None, follow: bool,
          out: str | None, as_json: bool) -> None:
    """Audit CORPUS (a JSONL/CSV file, or a built-in name such as rt-test) with one or more models."""
    client = _client()
    request: dict[str, Any] = {"models": list(models), "methods": list(methods), "params": _param(params),
                               "seed": seed}
    if layers:
        request["layers"] = list(layers)
    if sample:
        request["sample"] = sample
    if faithfulness:
        request["faithfulness"] = faithfulness
    if Path(corpus).is_file():
        request["corpus"] = {"upload": client.upload_corpus(corpus)["upload"]}
    else:
        request["corpus"] = {"name": corpus}
    doc = client.audit(request)
    click.echo(f"audit {doc.id}: {doc.counts['total']} items", err=True)
    if follow or out:
        doc = follow_audit(client, doc, quiet=as_json)
        if out:
            for path in _download(doc, (), out, lambda name, dest: client.download_audit(doc, name, dest)):
                click.echo(f"saved {path}", err=as_json)
    if as_json:
        _print_json(doc.raw)
    else:
        click.echo(_audit_line(doc))
    _exit_for(doc)


def _audit_line(doc: Any) -> str:
    c = doc.counts
    return f"audit {doc.id}: {doc.status} — {c['done']} done, {c['failed']} failed of {c['total']}"


@main.group()
def audits() -> None:
    """Audits: list, get (--follow), cancel, download (start one with `lantern audit`)."""


@audits.command("list")
@click.option("--status", default=None, type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", default=20, type=click.IntRange(1), help="how many, newest first")
@json_option
def audits_list(status: str | None, limit: int, as_json: bool) -> None:
    listed = _first(_client().audits(status=status, limit=min(limit, 100)), limit)
    if as_json:
        return _print_json({"items": [a.raw for a in listed]})
    for a in listed:
        click.echo(f"{a.id}  {a.status:<10} {','.join(a.models or []):<24} {a.counts['done']}/{a.counts['total']}"
                   f"  {(a.created_at or '')[:19]}")


@audits.command("get")
@click.argument("audit_id")
@click.option("--follow", is_flag=True, help="show progress until the audit ends (exit 1 if it fails)")
@json_option
def audits_get(audit_id: str, follow: bool, as_json: bool) -> None:
    client = _client()
    doc = client.get_audit(_audit_id(client, audit_id))
    if follow:
        doc = follow_audit(client, doc, quiet=as_json)
    if as_json:
        return _print_json(doc.raw)
    click.echo(_audit_line(doc))
    for a in doc.artifacts:
        click.echo(f"artifact {a.name:<28} {a.bytes:>9} B  {a.url}")
    if follow:
        _exit_for(doc)


@audits.command("cancel")
@click.argument("audit_id")
@json_option
def audits_cancel(audit_id: str, as_json: bool) -> None:
    client = _client()
    doc = client.cancel_audit(_audit_id(client, audit_id))
    _print_json(doc.raw) if as_json else click.echo(f"audit {doc.id}: {doc.status}")


@audits.command("download")
@click.argument("audit_id")
@click.argument("names", nargs=-1)
@click.option("--out", default=".", type=click.Path(file_okay=False), show_default=True, help="folder")
def audits_download(audit_id: str, names: tuple[str, ...], out: str) -> None:
    """Save the audit's report files NAMES (default: all of them) into --out."""
    client = _client()
    doc = client.get_audit(_audit_id(client, audit_id))
    for path in _download(doc, names, out, lambda name, dest: client.download_audit(doc, name, dest)):
        click.echo(f"saved {path}")


# --- demo ------------------------------------------------------------------------------------------------


@main.command()
@click.option("--data-dir", default="./lantern-data/demo")
@click.option("--out", default="./demo-output")
@click.option("--text", default="A gripping, beautifully acted film that never lets go.")
@needs("all")
def demo(data_dir: str, out: str, text: str) -> None:
    """Start the embedded stack, explain one sentence with minilm-rt, print the result, shut down."""
    _require(*SERVER, *ENGINE)
    from service.demo import run_demo

    sys.exit(run_demo(Path(data_dir), Path(out), text))


if __name__ == "__main__":
    main()
