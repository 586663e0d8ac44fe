"""FHIR write side: stored resources, deletion, version provenance, message context and result

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:30:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('context', Json, nullable=True))
        batch_op.add_column(sa.Column('result', Json, nullable=True))
    with op.batch_alter_table('records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resource', Json, nullable=True))
        batch_op.add_column(sa.Column('deleted', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('record_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resource', Json, nullable=True))
        batch_op.add_column(sa.Column('deleted', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('feed', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('record_versions', schema=None) as batch_op:
        batch_op.drop_column('feed')
        batch_op.drop_column('deleted')
        batch_op.drop_column('resource')
    with op.batch_alter_table('records', schema=None) as batch_op:
        batch_op.drop_column('deleted')
        batch_op.drop_column('resource')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('result')
        batch_op.drop_column('context')
