"""MPI: the count of linked source records, kept by the match step (the size of the index the prior follows)

`Model.at_population` lowers the model's prior as the index grows; the match step reads the count for
every batch and adds its new links to it in the same transaction. Seeded from the links already stored.

Revision ID: 0007_mpi_counters
Revises: 0006_sqlite_without_rowid
Create Date: 2026-11-26 17:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007_mpi_counters'
down_revision = '0006_sqlite_without_rowid'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'mpi_counters',
        sa.Column('name', sa.String(length=32), primary_key=True),
        sa.Column('value', sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO mpi_counters (name, value) SELECT 'records', count(*) FROM mpi_links")


def downgrade() -> None:
    op.drop_table('mpi_counters')
