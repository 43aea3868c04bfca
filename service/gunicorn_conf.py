"""gunicorn settings for `lantern serve`.

The app loads in the master before the port opens (preload), so a client never connects to a server that cannot
answer yet (without it the port accepted connections ~16 s before the first answer, while torch imported). The
master also warms the model adapters before the port opens (`on_starting`): every worker inherits them, instead of
stalling its first submits 2-4 s while it imports a tokenizer library, hashes a bundle and imports the database
driver and the broker's transport (the "2 s stall" of an open-loop run on a fresh API). Each worker then drops the
database connections the master may have opened while loading (a pool must not cross a fork) and, before it serves,
opens its own and compiles the submit path's reads (`warm_worker`).
"""
import gc
import logging
import threading
from contextlib import ExitStack

preload_app = True

# Threads in each worker process (gunicorn's gthread): a submit waits on PostgreSQL (its commit) and Redis for part
# of its time; a sync worker sits idle through those waits, a threaded one serves another request. The app is
# thread-safe: the embedded default already serves it from threads (service/cli.py), and each process's database
# pool (5 + 5 overflow) outnumbers its threads. Measured open loop (benchmarks/bench_api.py) in the commit that made
# this the default. GUNICORN_CMD_ARGS="--worker-class sync --threads 1" goes back to one request at a time per process
# (gunicorn runs gthread for "sync" while threads > 1).
worker_class = "gthread"
threads = 4

# Keep-alive: an idle connection is closed after this many seconds. A client that reuses a pooled connection just as
# the server closes it loses that request unanswered ("Remote end closed connection without response"); with 2 s
# (gunicorn's default) a client polling at the API's Retry-After (1 s) on a busy machine met that edge. 5 s keeps
# a polling client's connection well inside it, and the light client (service/client.py) sends a request lost that
# way again once: safe methods, and submits (it gives each an Idempotency-Key). Idle keep-alive connections wait in
# each worker's poller, not in a thread; a proxy in front should time out its idle upstream connections sooner.
keepalive = 5


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


def pre_fork(server, worker) -> None:  # gunicorn calls it in the master before each worker's fork
    """Move every object the master has made (the app, torch, the tokenizers: ~330k objects) to the collector's
    permanent generation. A full collection in a worker otherwise walks them all, ~135 ms with the GIL held, so
    every thread of that worker stalls; after the freeze it walks only the worker's own objects (~0.3 ms). The
    frozen objects are never freed, as a preloaded app's are not anyway, and a worker no longer writes to their
    pages (copy-on-write)."""
    gc.freeze()


def post_fork(server, worker) -> None:  # gunicorn calls it with these two
    from service.wsgi import app

    app.extensions["lantern"].close()


# How long a worker waits for its warm-up before it serves anyway (a database that is down or unreachable must not
# hold a worker's start: its requests get their 503s, and the warm-up goes on in the background)
WARM_SECONDS = 3.0


def post_worker_init(worker) -> None:  # gunicorn calls it in each worker before it accepts a connection
    """Each worker warms what its first submits would pay for (`warm_worker`) before it serves; the master answers
    no request, so until then the other workers take them."""
    from service.wsgi import app

    runtime = app.extensions["lantern"]
    # a connection for each thread that takes requests (1 with sync workers), at most what the pool keeps open
    pool = runtime.db.engine.pool
    connections = min(worker.cfg.threads, pool.size() if hasattr(pool, "size") else 1)
    warm = threading.Thread(target=warm_worker, args=(runtime, connections), name="lantern-warm", daemon=True)
    warm.start()
    warm.join(WARM_SECONDS)


def warm_worker(runtime, connections: int) -> None:
    """What a worker's first submits paid (the first one ~40-65 ms instead of ~5, and the burst behind it, measured
    in the first second of a fresh API driven at 200 req/s): connecting to PostgreSQL (`connections` at once, one
    for each thread that will take a submit, the first with SQLAlchemy's first-connect queries), compiling the
    submit path's reads (the key with its tenant, an Idempotency-Key's job, the model with the tenant limits: run
    once for a tenant that does not exist, so they read nothing) and connecting to the broker. Best effort: what
    fails here is met again, with its error or 503, by the request that needs it."""
    from service import auth, jobs, queue

    try:
        with ExitStack() as held:  # every session holds its own connection until all are back in the pool
            for _ in range(connections):  # on each (its PostgreSQL backend reads the tables' catalog entries once)
                s = held.enter_context(runtime.db.session())
                auth.key_and_tenant(s, "warm-up")
                jobs.find_idempotent(s, "", "warm-up", "")
                jobs.model_and_limits(s, "", "", runtime.settings)
    except Exception as e:
        logging.getLogger("lantern.api").warning("could not warm this worker's database connections: %s",
                                                 type(e).__name__)
    try:
        queue.connect_publisher(runtime.celery)
    except Exception as e:
        logging.getLogger("lantern.api").warning("could not connect this worker to the broker: %s", type(e).__name__)


# Header limits above the app's own (service.app.MAX_HEADER_BYTES, 16 KiB in all): an oversized header then gets
# the app's 431 problem+json, not gunicorn's plain-text page. Still bounded, so a client cannot make a worker
# buffer without end.
limit_request_field_size = 32 * 1024
limit_request_fields = 200
limit_request_line = 8190
