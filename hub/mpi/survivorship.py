"""Golden records: one value per field out of a person's source records, by configurable rules.

Pure: the rules come from `mappings/mpi/survivorship.yaml`, the records are handed in. Each golden
field remembers the source record it came from (its provenance), so a steward can see why the
golden birth date is what it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from hub.model import Patient
from hub.mpi.compare import DATA_DIR

RULES = ("source_priority", "most_recent", "most_frequent", "union")


@dataclass(frozen=True)
class SourceRecord:
    record_id: str
    feed: str
    updated_at: datetime
    data: dict[str, Any]
    """The record's canonical Patient as stored (JSON)."""


@dataclass(frozen=True)
class Rules:
    source_priority: tuple[str, ...]
    default: str
    fields: dict[str, str]

    def rule(self, field_name: str) -> str:
        return self.fields.get(field_name, self.default)


@lru_cache(maxsize=4)
def load_rules(path: Path = DATA_DIR / "survivorship.yaml") -> Rules:
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    fields = {str(k): str(v) for k, v in (raw.get("fields") or {}).items()}
    default = str(raw.get("default", "most_recent"))
    unknown = {r for r in [default, *fields.values()] if r not in RULES}
    if unknown:
        raise ValueError(f"survivorship.yaml: unknown rule(s) {sorted(unknown)}; known: {', '.join(RULES)}")
    bad_fields = set(fields) - set(Patient.model_fields)
    if bad_fields:
        raise ValueError(f"survivorship.yaml: not Patient fields: {sorted(bad_fields)}")
    return Rules(tuple(raw.get("source_priority") or ()), default, fields)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == "" or value == {}


def _recency(record: SourceRecord) -> tuple[datetime, str]:
    return record.updated_at, record.record_id


def golden(records: Sequence[SourceRecord], rules: Rules | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(golden Patient data, provenance: field → source record id, or for `union` a list per value)."""
    rules = rules or load_rules()
    if len(records) == 1:  # every rule agrees on a single source (most persons have one): skip the ranking
        only = records[0]
        data = {k: v for k, v in only.data.items() if k in Patient.model_fields and k != "active" and not _empty(v)}
        sources: dict[str, Any] = {}
        for k in data:
            if rules.rule(k) == "union":  # union also drops repeated values: the same as for many sources
                data[k], sources[k] = _union(k, [only])
            else:
                sources[k] = only.record_id
        return data | {"active": True}, sources
    newest_first = sorted(records, key=_recency, reverse=True)
    data: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    for name in Patient.model_fields:
        if name == "active":
            continue
        rule = rules.rule(name)
        having = [r for r in newest_first if not _empty(r.data.get(name))]
        if not having:
            continue
        if rule == "union":
            data[name], provenance[name] = _union(name, having)
            continue
        winner = _pick(rule, name, having, rules)
        data[name], provenance[name] = winner.data[name], winner.record_id
    data["active"] = True
    return data, provenance


def _pick(rule: str, name: str, having: list[SourceRecord], rules: Rules) -> SourceRecord:
    if rule == "source_priority":
        rank = {feed: n for n, feed in enumerate(rules.source_priority)}
        return min(having, key=lambda r: rank.get(r.feed, len(rank)))  # min is stable: newest among equals
    if rule == "most_frequent":
        counts: dict[str, int] = {}
        for r in having:
            key = json.dumps(r.data[name], sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
        return max(having, key=lambda r: counts[json.dumps(r.data[name], sort_keys=True)])  # first max: newest
    return having[0]


def _union(name: str, having: list[SourceRecord]) -> tuple[list[Any], list[str]]:
    """Every distinct value, oldest source first (so the golden list does not reorder on each update)."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for r in reversed(having):
        for value in r.data[name]:
            key = json.dumps({k: value.get(k) for k in ("system", "value")} if isinstance(value, dict) and "value" in value
                             else value, sort_keys=True)
            if key not in values:
                values[key], origin[key] = value, r.record_id
    return list(values.values()), [origin[k] for k in values]
