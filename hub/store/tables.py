"""The database schema (SQLAlchemy Core). Changes here need an Alembic migration (`hub/store/migrations`)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.expression import false

metadata = MetaData()

Id = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid alias
Json = JSON().with_variant(JSONB(), "postgresql")

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("feed", String(64), nullable=False),
    Column("format", String(16), nullable=False),
    Column("sender", String(512)),
    Column("control_id", String(200)),
    Column("message_type", String(32)),
    Column("dedupe_key", String(800), unique=True),
    Column("status", String(16), nullable=False),
    Column("problems", Json),
    Column("duplicate_of", Id),
    Column("state", String(16), nullable=False),
    Column("processing_error", String(300)),
    Column("raw", LargeBinary, nullable=False),
    Column("context", Json),
    Column("result", Json),
    Index("ix_messages_received_at", "received_at"),
    Index("ix_messages_state", "state"),
    Index("ix_messages_type", "message_type"),
)
"""Every frame as received, rejected ones too: the raw bytes are the source of truth.

`context` is what a door needs besides the bytes to read the message again (for FHIR: method,
target, conditions); `result` is what processing made of it (for FHIR: per entry status and ids)."""

records = Table(
    "records",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("source_system", String(300), nullable=False),
    Column("source_value", String(300), nullable=False),
    Column("patient_id", String(64)),
    Column("version", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("data", Json, nullable=False),
    Column("feed", String(64), nullable=False),
    Column("message_id", Id),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("resource", Json),
    Column("deleted", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("source_value", "source_system", "kind", name="uq_records_source"),  # value first: lookups by value
    Index("ix_records_patient", "patient_id"),
    Index("ix_records_kind_updated", "kind", "updated_at"),
)
"""Canonical records, current version. A record is keyed by the source's own identifier.

`resource` is the FHIR resource as submitted (minus meta) for records written over FHIR, so a read
returns what was written; records from other feeds are rendered from `data`. `deleted` marks a
record deleted over FHIR (its last version; reads answer 410)."""

record_versions = Table(
    "record_versions",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("data", Json, nullable=False),
    Column("message_id", Id),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("resource", Json),
    Column("deleted", Boolean),
    Column("feed", String(64)),
)
"""Every version a record has had (history, vread, and what a replay would have sent)."""

record_index = Table(
    "record_index",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("param", String(32), primary_key=True),
    Column("value", String(300), primary_key=True),
    Column("kind", String(24), nullable=False),
    Index("ix_record_index_lookup", "kind", "param", "value"),
    sqlite_with_rowid=False,
)
"""Search values (normalised) per record: identifier, family, given, birthdate, gender …

On SQLite the table is its primary key's B-tree (WITHOUT ROWID): a row is written once, not into a
rowid table and again into the key's index (about a dozen rows a patient; see migration 0006)."""
