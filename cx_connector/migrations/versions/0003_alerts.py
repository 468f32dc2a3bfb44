"""alerts: rules seen and the alerts' outbox

Revision ID: 0003_alerts
Revises: 0002_metrics
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cx_connector.models

revision = '0003_alerts'
down_revision = '0002_metrics'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alert_rules',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('condition', sa.String(length=32), nullable=False),
    sa.Column('first_evaluated_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_evaluated_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_alert_rules'))
    )
    op.create_table('alert_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('condition', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('fired_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=80), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('uncertain', sa.Boolean(), nullable=False),
    sa.Column('claimed_at', cx_connector.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=128), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('result', sa.String(length=255), nullable=True),
    sa.Column('created_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('done_at', cx_connector.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_alert_deliveries_customer_id_customers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_deliveries'))
    )
    with op.batch_alter_table('alert_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_deliveries_customer_id_rule'), ['customer_id', 'rule'], unique=False)
        batch_op.create_index(batch_op.f('ix_alert_deliveries_status_next_attempt_at'), ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('alert_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_deliveries_status_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_alert_deliveries_customer_id_rule'))

    op.drop_table('alert_deliveries')
    op.drop_table('alert_rules')
