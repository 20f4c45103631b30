"""warehouse sources and sync state

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table('warehouse_sources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('warehouse', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('events_sql', sa.Text(), nullable=False),
    sa.Column('columns', JSON_TYPE, nullable=False),
    sa.Column('validated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('warehouse', 'position', name='uq_warehouse_sources_position')
    )
    op.create_index(op.f('ix_warehouse_sources_warehouse'), 'warehouse_sources', ['warehouse'],
                    unique=False)
    op.create_table('warehouse_syncs',
    sa.Column('warehouse', sa.String(length=64), nullable=False),
    sa.Column('exposures_through', sa.BigInteger(), nullable=False),
    sa.Column('events_through', sa.BigInteger(), nullable=False),
    sa.Column('erasures_through', sa.Integer(), nullable=False),
    sa.Column('last_sync_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('warehouse')
    )


def downgrade() -> None:
    op.drop_table('warehouse_syncs')
    op.drop_index(op.f('ix_warehouse_sources_warehouse'), table_name='warehouse_sources')
    op.drop_table('warehouse_sources')
