"""outbox: index of the open writes by status, attempts and platform

Revision ID: 0006_outbox_open_writes
Revises: 0005_scoring_contexts
Create Date: 2026-12-06

The Operations page, ``cx-connector outbox`` and ``GET /metrics`` count the open writes
by platform, status and attempts (and /metrics their oldest due time), and the page
lists the retried ones (pending with attempts). Through ``(status, next_attempt_at)``
each of these read every pending write's row: after the first full scoring pass,
100,000 of them, about 0.2 s of CPU per page on SQLite. With this index the counts are
read from the index alone and the retried writes are a range of it (see BENCHMARKS.md,
"Operations page with a full outbox").

PostgreSQL also gets statistics of status and attempts together
(cx_connector.models.OUTBOX_STATUS_ATTEMPTS_STATISTICS): without them its planner takes
the retried writes for a quarter of the table and walks the primary key through every
done write instead of reading the index range. The table is analysed at once so that
they apply from the start.
"""

from alembic import op

# spelt as cx_connector.models.OUTBOX_STATUS_ATTEMPTS_STATISTICS spells it today
_STATISTICS = "CREATE STATISTICS st_outbox_status_attempts (mcv) ON status, attempts FROM outbox"

revision = '0006_outbox_open_writes'
down_revision = '0005_scoring_contexts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f('ix_outbox_status_attempts_source_next_attempt_at'), 'outbox',
                    ['status', 'attempts', 'source', 'next_attempt_at'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_STATISTICS)
        op.execute("ANALYZE outbox")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS st_outbox_status_attempts")
    op.drop_index(op.f('ix_outbox_status_attempts_source_next_attempt_at'), table_name='outbox')
