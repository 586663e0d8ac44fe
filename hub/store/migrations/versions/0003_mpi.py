"""Master patient index: persons, links, blocking keys, link events, reviews, decisions, pending merges

Revision ID: 0003_mpi
Revises: 0002
Create Date: 2026-11-25 18:58:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003_mpi'
down_revision = '0002'
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
At = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'mpi_persons',
        sa.Column('id', sa.String(64), primary_key=True),
        sa.Column('data', Json, nullable=False),
        sa.Column('provenance', Json, nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('merged_into', sa.String(64), nullable=True),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('created_at', At, nullable=False),
        sa.Column('updated_at', At, nullable=False),
    )
    op.create_table(
        'mpi_links',
        sa.Column('record_id', sa.String(64), primary_key=True),
        sa.Column('person_id', sa.String(64), nullable=False),
        sa.Column('how', sa.String(16), nullable=False),
        sa.Column('score', sa.Float(), nullable=True),
        sa.Column('model_version', sa.String(64), nullable=True),
        sa.Column('replaced_by', sa.String(64), nullable=True),
        sa.Column('updated_at', At, nullable=False),
    )
    op.create_index('ix_mpi_links_person', 'mpi_links', ['person_id'])
    op.create_table(
        'mpi_keys',
        sa.Column('key', sa.String(200), primary_key=True),
        sa.Column('record_id', sa.String(64), primary_key=True),
    )
    op.create_index('ix_mpi_keys_record', 'mpi_keys', ['record_id'])
    op.create_table(
        'mpi_link_events',
        sa.Column('id', Id, primary_key=True, autoincrement=True),
        sa.Column('at', At, nullable=False),
        sa.Column('actor', sa.String(100), nullable=False),
        sa.Column('action', sa.String(32), nullable=False),
        sa.Column('record_id', sa.String(64), nullable=True),
        sa.Column('from_person', sa.String(64), nullable=True),
        sa.Column('to_person', sa.String(64), nullable=True),
        sa.Column('score', sa.Float(), nullable=True),
        sa.Column('model_version', sa.String(64), nullable=True),
        sa.Column('detail', Json, nullable=True),
    )
    op.create_index('ix_mpi_link_events_record', 'mpi_link_events', ['record_id'])
    op.create_index('ix_mpi_link_events_at', 'mpi_link_events', ['at'])
    op.create_table(
        'mpi_reviews',
        sa.Column('id', Id, primary_key=True, autoincrement=True),
        sa.Column('record_id', sa.String(64), nullable=False),
        sa.Column('candidates', Json, nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('created_at', At, nullable=False),
        sa.Column('resolved_at', At, nullable=True),
        sa.Column('resolved_by', sa.String(100), nullable=True),
    )
    op.create_index('ix_mpi_reviews_status', 'mpi_reviews', ['status', 'id'])
    op.create_index('ix_mpi_reviews_record', 'mpi_reviews', ['record_id'])
    op.create_table(
        'mpi_decisions',
        sa.Column('id', Id, primary_key=True, autoincrement=True),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('record_id', sa.String(64), nullable=False),
        sa.Column('other_record_id', sa.String(64), nullable=True),
        sa.Column('person_id', sa.String(64), nullable=True),
        sa.Column('actor', sa.String(100), nullable=False),
        sa.Column('at', At, nullable=False),
    )
    op.create_index('ix_mpi_decisions_record', 'mpi_decisions', ['record_id', 'kind'])
    op.create_index('ix_mpi_decisions_other', 'mpi_decisions', ['other_record_id'])
    op.create_table(
        'mpi_pending_merges',
        sa.Column('id', Id, primary_key=True, autoincrement=True),
        sa.Column('source_system', sa.String(300), nullable=False),
        sa.Column('source_value', sa.String(300), nullable=False),
        sa.Column('survivor_record_id', sa.String(64), nullable=False),
        sa.Column('message_id', Id, nullable=True),
        sa.Column('at', At, nullable=False),
    )
    op.create_index('ix_mpi_pending_merges_source', 'mpi_pending_merges', ['source_value', 'source_system'])


def downgrade() -> None:
    op.drop_table('mpi_pending_merges')
    op.drop_table('mpi_decisions')
    op.drop_table('mpi_reviews')
    op.drop_table('mpi_link_events')
    op.drop_table('mpi_keys')
    op.drop_table('mpi_links')
    op.drop_table('mpi_persons')
