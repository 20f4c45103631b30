"""holdout reports: each analysis of a holdout, kept as history (SPEC §12)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 16:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table('holdout_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('holdout_id', sa.Integer(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('body', JSON, nullable=False),
    sa.ForeignKeyConstraint(['holdout_id'], ['holdouts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_holdout_reports_holdout_computed', 'holdout_reports',
                    ['holdout_id', 'computed_at'])


def downgrade() -> None:
    op.drop_index('ix_holdout_reports_holdout_computed', table_name='holdout_reports')
    op.drop_table('holdout_reports')
