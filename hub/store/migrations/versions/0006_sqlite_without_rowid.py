"""SQLite: the search index, the MPI's blocking keys and links become WITHOUT ROWID tables

Their rows are small and always found by their primary key (or by an index that then needs it). As
rowid tables each row was written twice, into the table and into the key's automatic index, and a
look-up by key read both; a WITHOUT ROWID table is the key's B-tree itself. Every patient record
writes about a dozen search-index rows and half a dozen blocking keys, and every candidate read
goes through the keys and the links (docs/benchmarks.md, seventh session). PostgreSQL: nothing to do.

Revision ID: 0006_sqlite_without_rowid
Revises: 0005_outbox_known
Create Date: 2026-11-26 11:45:00
"""

from alembic import op

revision = '0006_sqlite_without_rowid'
down_revision = '0005_outbox_known'
branch_labels = None
depends_on = None

TABLES = ('record_index', 'mpi_keys', 'mpi_links')


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:  # copied into a new table with the same columns, key and indexes
        with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_with_rowid': with_rowid}):
            pass


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
