"""admin console: expression index on scores' cx_health

Revision ID: 0004_admin
Revises: 0003_alerts
Create Date: 2026-12-06

The customer lists filtered by health (admin pages, JSON API, ``customers list
--health``) and the overview's customers at risk read ``scores`` by
``score_values ->> 'cx_health'``; without this index each is a scan of every
customer's scores. The expression is written exactly as cx_connector.customers.health_of
writes it, so each database matches it.
"""

from alembic import op

revision = '0004_admin'
down_revision = '0003_alerts'
branch_labels = None
depends_on = None

_EXPRESSION = {
    "sqlite": "json_extract(score_values, '$.cx_health')",
    "postgresql": "(score_values ->> 'cx_health')",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(f"CREATE INDEX ix_scores_health ON scores ({_EXPRESSION[dialect]}, customer_id)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_scores_health")
