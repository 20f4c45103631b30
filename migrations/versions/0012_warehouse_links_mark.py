"""warehouse syncs: the last identity link copied (the lag counts the links still waiting)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 21:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('warehouse_syncs', sa.Column('identity_links_through', sa.BigInteger(),
                                               nullable=False, server_default='0'))


def downgrade() -> None:
    op.drop_column('warehouse_syncs', 'identity_links_through')
