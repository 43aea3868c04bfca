"""Schema migrations (Alembic), run by `lantern migrate` and on start in embedded mode."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

import migrations

SCRIPTS = Path(migrations.__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head", store: Any = None) -> None:
    """Migrate the database at url; `store` is the object store that data migrations read (by default the one
    the LANTERN_* environment names)."""
    from service.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # one migrator at a time across processes
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7412)")
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            cfg.attributes["store"] = store
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()
