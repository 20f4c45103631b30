"""holdouts and their exposures

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('holdouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('percent', sa.Float(), nullable=False),
    sa.Column('scope', JSON, nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('concluded_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('holdout_exposures',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('holdout_id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.String(length=200), nullable=False),
    sa.Column('group', sa.String(length=16), nullable=False),
    sa.Column('exposed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['holdout_id'], ['holdouts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('holdout_id', 'unit_id', name='uq_holdout_exposures_holdout_unit')
    )
    op.create_index('ix_holdout_exposures_unit_id', 'holdout_exposures', ['unit_id'])


def downgrade() -> None:
    op.drop_index('ix_holdout_exposures_unit_id', table_name='holdout_exposures')
    op.drop_table('holdout_exposures')
    op.drop_table('holdouts')
