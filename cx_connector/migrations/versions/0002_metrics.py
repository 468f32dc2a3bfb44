"""metric_values: counters for /metrics recorded by jobs and the CLI

Revision ID: 0002_metrics
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

import cx_connector.models

revision = '0002_metrics'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('metric_values',
    sa.Column('name', sa.String(length=96), nullable=False),
    sa.Column('labels', sa.String(length=255), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.Column('updated_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', 'labels', name=op.f('pk_metric_values'))
    )


def downgrade() -> None:
    op.drop_table('metric_values')
