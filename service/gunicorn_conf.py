"""gunicorn settings for `lantern serve`.

The app loads in the master before the port opens (preload), so a client never connects to a server that cannot
answer yet (without it the port accepted connections ~16 s before the first answer, while torch imported). Each
worker then drops the database connections the master may have opened while loading: a pool must not cross a fork.
"""
preload_app = True


def post_fork(server, worker) -> None:  # gunicorn calls it with these two
    from service.wsgi import app

    app.extensions["lantern"].close()


# Header limits above the app's own (service.app.MAX_HEADER_BYTES, 16 KiB in all): an oversized header then gets
# the app's 431 problem+json, not gunicorn's plain-text page. Still bounded, so a client cannot make a worker
# buffer without end.
limit_request_field_size = 32 * 1024
limit_request_fields = 200
limit_request_line = 8190
