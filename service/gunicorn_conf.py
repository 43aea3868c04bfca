"""gunicorn settings for `lantern serve`.

The app loads in the master before the port opens (preload), so a client never connects to a server that cannot
answer yet (without it the port accepted connections ~16 s before the first answer, while torch imported). The
master also warms the model adapters before the port opens (`on_starting`): every worker inherits them, instead of
stalling its first submits 2-4 s while it imports a tokenizer library, hashes a bundle and imports the database
driver and the broker's transport (the "2 s stall" of an open-loop run on a fresh API). Each worker then drops the
database connections the master may have opened while loading: a pool must not cross a fork.
"""
import logging

preload_app = True

# Worker class: sync (gunicorn's default), which answers every request with `Connection: close`. Threaded workers
# (gthread, 4 threads) served 100 req/s on 2 busy cores at p50 27-29 ms where sync took 510-580 ms
# (benchmarks/bench_api.py), but they keep connections alive for 2 s, and a client that reuses a pooled connection
# just as gunicorn closes it gets "Remote end closed connection without response" (seen once in the 50-job
# production-stack test). Opt in where the client retries, or behind a proxy that holds the keep-alive:
# GUNICORN_CMD_ARGS="--worker-class gthread --threads 4".


def on_starting(server) -> None:  # gunicorn calls it after the preload, before it binds the port
    from service.wsgi import app

    runtime = app.extensions["lantern"]
    warm_adapters(runtime)
    try:
        warm_clients(runtime)
    except Exception as e:  # best effort: a client that cannot load here gets its error (or 503) at first use
        logging.getLogger("lantern.api").warning("could not warm the database/broker clients: %s", type(e).__name__)


def warm_adapters(runtime) -> None:
    """Load every zoo model's adapter as a submit would (its revision hashed, its tokenizer read; weights stay
    lazy), so the first submits do not pay for it. The model cache keeps the last few; the imports and revision
    hashes that cost the most stay for all. Best effort, and without the database: a model that cannot load here
    gets its error at submit, as before, and a database that is down gets its 503s."""
    from service.models import ModelRef
    from worker.models import zoo_names, zoo_revision

    for name in zoo_names():
        try:
            runtime.adapters.get(ModelRef(name, zoo_revision(name), True))
        except Exception as e:
            logging.getLogger("lantern.api").warning("could not warm model %s: %s", name, type(e).__name__)


def warm_clients(runtime) -> list[object]:
    """Import the database driver and the broker's transport (psycopg, redis, kombu's and Celery's publishing
    code: ~1.5 s) as the first submit would, without connecting: connections must not cross a fork. Returns what
    it loaded."""
    loaded = [runtime.db.engine.dialect.dbapi]  # the engine imports its driver; it connects on first use
    with runtime.celery.connection_for_write() as conn:
        loaded.append(conn.transport)  # imports the transport module; it connects on first use
    return [*loaded, runtime.celery.amqp.router, runtime.celery.backend]  # Celery's message, routing, result code


def post_fork(server, worker) -> None:  # gunicorn calls it with these two
    from service.wsgi import app

    app.extensions["lantern"].close()


# Header limits above the app's own (service.app.MAX_HEADER_BYTES, 16 KiB in all): an oversized header then gets
# the app's 431 problem+json, not gunicorn's plain-text page. Still bounded, so a client cannot make a worker
# buffer without end.
limit_request_field_size = 32 * 1024
limit_request_fields = 200
limit_request_line = 8190
