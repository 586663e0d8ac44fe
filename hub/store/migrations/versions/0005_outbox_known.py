"""Outbox: which destinations know which patients (MPI link-change notices), kept across pruning

`ix_outbox_known` finds the destinations sent rows under a patient's ordering key in any state
(`ix_outbox_open` holds only open rows); `outbox_known` keeps that fact for delivered rows that
`hub outbox prune` deletes.

Revision ID: 0005_outbox_known
Revises: 0004_outbox
Create Date: 2026-11-25 22:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_outbox_known'
down_revision = '0004_outbox'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbox_known', 'outbox', ['ordering_key', 'destination', 'state'])
    op.create_table(
        'outbox_known',
        sa.Column('ordering_key', sa.String(length=700), primary_key=True),
        sa.Column('destination', sa.String(length=100), primary_key=True),
        sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('outbox_known')
    op.drop_index('ix_outbox_known', table_name='outbox')
