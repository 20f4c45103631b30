"""bandit allocation: experiments.allocation and versioned weight periods

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allocation', JSON_TYPE, nullable=True))
    op.create_table('allocation_periods',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('period', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('weights', JSON_TYPE, nullable=False),
    sa.Column('p_best', JSON_TYPE, nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('experiment_id', 'period', name='uq_allocation_periods_experiment_period')
    )


def downgrade() -> None:
    op.drop_table('allocation_periods')
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_column('allocation')
