"""raw client times of events and exposures (clock-skew correction, SPEC §5)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 12:40:00

Both columns are nullable: existing rows keep their stored (server-clock) times and
simply have no raw client time.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client_occurred_at', sa.DateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client_exposed_at', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.drop_column('client_exposed_at')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('client_occurred_at')
