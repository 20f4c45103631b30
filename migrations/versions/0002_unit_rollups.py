"""per-unit analysis rollups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOTS = {"w": sa.BigInteger, "v": sa.Float, "t": lambda: sa.DateTime(timezone=True),
         "a": lambda: sa.ARRAY(sa.BigInteger()).with_variant(sa.Text(), "sqlite")}
SIZES = {"w": 8, "v": 16, "t": 4, "a": 4}


def upgrade() -> None:
    op.create_table('unit_rollups',
    sa.Column('exposure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('variant_key', sa.String(length=64), nullable=False),
    sa.Column('exposed_at', sa.DateTime(timezone=True), nullable=False),
    *[sa.Column(f'{prefix}{i}', SLOTS[prefix](), nullable=True)
      for prefix, size in SIZES.items() for i in range(size)],
    sa.PrimaryKeyConstraint('exposure_id')
    )
    with op.batch_alter_table('unit_rollups', schema=None) as batch_op:
        batch_op.create_index('ix_unit_rollups_experiment_id', ['experiment_id'], unique=False)

    op.create_table('rollup_states',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('plan_key', sa.String(length=64), nullable=False),
    sa.Column('events_through', sa.BigInteger(), nullable=False),
    sa.Column('exposures_through', sa.BigInteger(), nullable=False),
    sa.Column('events_seen', sa.BigInteger(), nullable=False),
    sa.Column('exposures_seen', sa.BigInteger(), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id')
    )


def downgrade() -> None:
    op.drop_table('rollup_states')
    with op.batch_alter_table('unit_rollups', schema=None) as batch_op:
        batch_op.drop_index('ix_unit_rollups_experiment_id')
    op.drop_table('unit_rollups')
