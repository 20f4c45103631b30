"""identity links: anonymous ids seen as customer ids (SPEC §14)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 15:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('identity_links',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('anonymous_id', sa.String(length=200), nullable=False),
    sa.Column('user_id', sa.String(length=200), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('anonymous_id', 'user_id', name='uq_identity_links_pair')
    )
    op.create_index('ix_identity_links_user_id', 'identity_links', ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_identity_links_user_id', table_name='identity_links')
    op.drop_table('identity_links')
