"""model revisions cover every byte a loader may read

Before this revision a bundle's dot-files were left out of its revision (and of its stored copy), so a config that
pointed at one let two different bundles share a revision. Every registered model's revision is recomputed from its
stored files (service.registry.reidentify says what happens to rows that change or no longer load).

Revision ID: 0002
Revises: 0001
"""
from alembic import context, op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    import sqlalchemy as sa

    conn = op.get_bind()
    if not conn.execute(sa.text("SELECT 1 FROM models LIMIT 1")).first():
        return  # nothing registered: no store to open
    from service.registry import reidentify

    store = context.config.attributes.get("store")
    if store is None:
        from service.config import Settings
        from service.storage import open_store

        s = Settings.from_env()
        store = open_store(s.storage, s.s3_endpoint_url, s.s3_region, s.s3_public_url)
    counts = reidentify(conn, store)
    print(f"model revisions re-identified: {counts}")


def downgrade() -> None:
    pass  # the old revisions were a weaker hash of the same files; nothing to restore
