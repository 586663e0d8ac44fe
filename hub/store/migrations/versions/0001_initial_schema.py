"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 16:35:01.177263
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('feed', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('sender', sa.String(length=512), nullable=True),
    sa.Column('control_id', sa.String(length=200), nullable=True),
    sa.Column('message_type', sa.String(length=32), nullable=True),
    sa.Column('dedupe_key', sa.String(length=800), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('problems', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('duplicate_of', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('processing_error', sa.String(length=300), nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedupe_key')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_received_at', ['received_at'], unique=False)
        batch_op.create_index('ix_messages_state', ['state'], unique=False)
        batch_op.create_index('ix_messages_type', ['message_type'], unique=False)

    op.create_table('record_index',
    sa.Column('record_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.PrimaryKeyConstraint('record_id', 'param', 'value')
    )
    with op.batch_alter_table('record_index', schema=None) as batch_op:
        batch_op.create_index('ix_record_index_lookup', ['kind', 'param', 'value'], unique=False)

    op.create_table('record_versions',
    sa.Column('record_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('record_id', 'version')
    )
    op.create_table('records',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('source_system', sa.String(length=300), nullable=False),
    sa.Column('source_value', sa.String(length=300), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('feed', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_value', 'source_system', 'kind', name='uq_records_source')
    )
    with op.batch_alter_table('records', schema=None) as batch_op:
        batch_op.create_index('ix_records_kind_updated', ['kind', 'updated_at'], unique=False)
        batch_op.create_index('ix_records_patient', ['patient_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('records', schema=None) as batch_op:
        batch_op.drop_index('ix_records_patient')
        batch_op.drop_index('ix_records_kind_updated')

    op.drop_table('records')
    op.drop_table('record_versions')
    with op.batch_alter_table('record_index', schema=None) as batch_op:
        batch_op.drop_index('ix_record_index_lookup')

    op.drop_table('record_index')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_type')
        batch_op.drop_index('ix_messages_state')
        batch_op.drop_index('ix_messages_received_at')

    op.drop_table('messages')
