"""Outbox: outbound messages per destination and every delivery attempt (issue 5)

Revision ID: 0004_outbox
Revises: 0003_mpi
Create Date: 2026-11-25 19:10:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0004_outbox'
down_revision = '0003_mpi'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
OPEN = "state IN ('pending', 'sending')"


def upgrade() -> None:
    op.create_table(
        'outbox',
        sa.Column('id', Id, primary_key=True, autoincrement=True),
        sa.Column('message_id', Id, nullable=True),
        sa.Column('event_index', sa.Integer(), server_default='0', nullable=False),
        sa.Column('destination', sa.String(length=100), nullable=False),
        sa.Column('route', sa.String(length=100), nullable=False),
        sa.Column('ordering_key', sa.String(length=700), nullable=False),
        sa.Column('idempotency_key', sa.String(length=200), nullable=False),
        sa.Column('content_type', sa.String(length=100), nullable=False),
        sa.Column('payload', sa.LargeBinary(), nullable=False),
        sa.Column('summary', sa.String(length=200), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('blocking', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_code', sa.String(length=32), nullable=True),
        sa.Column('last_detail', sa.String(length=500), nullable=True),
        sa.Column('resent_from', Id, nullable=True),
    )
    op.create_index('ix_outbox_message', 'outbox', ['message_id', 'event_index'])
    op.create_index('ix_outbox_state', 'outbox', ['state', 'id'])
    op.create_index('ix_outbox_open', 'outbox', ['destination', 'ordering_key', 'id'],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    op.create_index('ix_outbox_queue', 'outbox', ['destination', 'id'],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    op.create_index('ix_outbox_due', 'outbox', ['destination', 'next_attempt_at'],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    op.create_index('ix_outbox_blocking', 'outbox', ['destination', 'ordering_key', 'id'],
                    postgresql_where=sa.text('blocking'), sqlite_where=sa.text('blocking'))
    op.create_table(
        'outbox_attempts',
        sa.Column('id', Id, primary_key=True, autoincrement=True),
        sa.Column('outbox_id', Id, sa.ForeignKey('outbox.id', ondelete='CASCADE'), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('code', sa.String(length=32), nullable=False),
        sa.Column('detail', sa.String(length=500), nullable=True),
        sa.Column('duration', sa.Float(), nullable=False),
        sa.Column('worker', sa.String(length=100), nullable=True),
    )
    op.create_index('ix_outbox_attempts_row', 'outbox_attempts', ['outbox_id', 'attempt'])


def downgrade() -> None:
    op.drop_index('ix_outbox_attempts_row', table_name='outbox_attempts')
    op.drop_table('outbox_attempts')
    for name in ('ix_outbox_blocking', 'ix_outbox_due', 'ix_outbox_queue', 'ix_outbox_open', 'ix_outbox_state', 'ix_outbox_message'):
        op.drop_index(name, table_name='outbox')
    op.drop_table('outbox')
