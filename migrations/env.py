"""Alembic environment: the URL comes from the caller (service.migrate), the metadata from service.db."""
from alembic import context

from service.db import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
connection = config.attributes.get("connection")


def run(conn) -> None:
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=conn.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    from service.db import make_engine

    with make_engine(url).connect() as conn:
        run(conn)
