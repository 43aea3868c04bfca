"""indexes on a tenant's own jobs (not an audit's batches): those in flight, by status newest first, newest first

What the API reads per tenant. Without them every submit's count of the tenant's jobs in flight read every queued
job of every tenant, or the whole table (25-35 ms a submit at 6,000 queued jobs, measured), a listing of one status
read the tenant's history newest first until it had a page of it, and the per-minute limit (which counts
submissions, not an audit's batch jobs) would step over every batch job of the last minute.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

OWN_JOBS = sa.text("audit_id IS NULL")
IN_FLIGHT_ROWS = sa.text("status IN ('queued', 'running') AND audit_id IS NULL")


def upgrade() -> None:
    op.create_index('ix_jobs_tenant_in_flight', 'jobs', ['tenant_id', 'created_at'],
                    postgresql_where=IN_FLIGHT_ROWS, sqlite_where=IN_FLIGHT_ROWS)
    op.create_index('ix_jobs_own_status', 'jobs', ['tenant_id', 'status', 'created_at', 'id'],
                    postgresql_where=OWN_JOBS, sqlite_where=OWN_JOBS)
    op.create_index('ix_jobs_own_created', 'jobs', ['tenant_id', 'created_at'],
                    postgresql_where=OWN_JOBS, sqlite_where=OWN_JOBS)


def downgrade() -> None:
    op.drop_index('ix_jobs_own_created', table_name='jobs')
    op.drop_index('ix_jobs_own_status', table_name='jobs')
    op.drop_index('ix_jobs_tenant_in_flight', table_name='jobs')
