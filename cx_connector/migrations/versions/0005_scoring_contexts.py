"""score contexts: what the explanations of a scoring run share, stored once

Revision ID: 0005_scoring_contexts
Revises: 0004_admin
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cx_connector.models

revision = '0005_scoring_contexts'
down_revision = '0004_admin'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('score_contexts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', cx_connector.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('context', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_score_contexts')),
    sa.UniqueConstraint('digest', name=op.f('uq_score_contexts_digest'))
    )


def downgrade() -> None:
    op.drop_table('score_contexts')
