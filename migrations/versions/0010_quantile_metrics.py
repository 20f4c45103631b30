"""quantile metrics: a metric's quantile level and value source (SPEC §11)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quantile', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('source', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_column('source')
        batch_op.drop_column('quantile')
