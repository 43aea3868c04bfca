"""audit progress on the audit row: done/failed counts, a version for ETags, the running aggregates' state

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audits') as batch:
        batch.add_column(sa.Column('done', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('failed', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('aggregate_state', sa.JSON(), nullable=True))
    # audits made before this revision: their counts from their items (their running aggregates stay empty;
    # the finaliser computes the final ones from the items as before)
    for status in ('done', 'failed'):
        op.execute(f"UPDATE audits SET {status} = (SELECT count(*) FROM audit_items "
                   f"WHERE audit_items.audit_id = audits.id AND audit_items.status = '{status}')")


def downgrade() -> None:
    with op.batch_alter_table('audits') as batch:
        batch.drop_column('aggregate_state')
        batch.drop_column('version')
        batch.drop_column('failed')
        batch.drop_column('done')
