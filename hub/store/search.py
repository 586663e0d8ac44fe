"""Search criteria → SQL conditions over `records` and `record_index` (used by RecordRepository).

A criterion is `(param, op, value)`, all strings so that it travels in a message's context:
- `eq | lt | le | gt | ge | prefix | contains` compare the normalised index values of `param`
  (`_id` and `patient_id` are columns of `records`, `_lastUpdated` its `updated_at`);
- `missing` (value "true"/"false"): the record has no (or some) index value for `param`;
- `in` (`_id`, `patient_id`): value is a JSON list of ids;
- `or` (param `_or`): value is a JSON list of alternatives, each a list of criteria (all must hold);
- `not` (param `_not`): value is a JSON list of criteria that must not all hold;
- `patient` (param `_chain`): value is a JSON list of criteria on the record's patient (chained search).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, select

from hub.records import INDEX_UNIONS
from hub.store.tables import record_index, records

Criterion = tuple[str, str, str]

COMPARE: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "eq": lambda c, v: c == v, "lt": lambda c, v: c < v, "le": lambda c, v: c <= v,
    "gt": lambda c, v: c > v, "ge": lambda c, v: c >= v,
    "prefix": lambda c, v: c.startswith(v, autoescape=True),
    "contains": lambda c, v: c.contains(v, autoescape=True),
}


def conditions(table: Any, kinds: Sequence[str], criteria: Sequence[Criterion]) -> list[ColumnElement[bool]]:
    """One SQL condition per criterion, on `table` (`records` or an alias of it)."""
    return [condition(table, kinds, tuple(c)) for c in criteria]  # type: ignore[arg-type]


def condition(table: Any, kinds: Sequence[str], criterion: Criterion) -> ColumnElement[bool]:
    param, op, value = criterion
    if op == "or":
        return or_(*(and_(*conditions(table, kinds, alternative)) for alternative in json.loads(value)))
    if op == "not":
        return not_(and_(*conditions(table, kinds, json.loads(value))))
    if op == "patient":
        patients = records.alias("chained_patient")
        inner = select(patients.c.id).where(
            patients.c.kind == "patient", patients.c.deleted == false(), *conditions(patients, ["patient"], json.loads(value))
        )
        return table.c.patient_id.in_(inner)
    if param in ("_id", "patient_id"):
        column = table.c.id if param == "_id" else table.c.patient_id
        if op == "missing":
            return column.is_(None) if value == "true" else column.is_not(None)
        if op == "in":
            return column.in_(json.loads(value))
        return COMPARE[op](column, value)
    if param == "_lastUpdated":
        return COMPARE[op](table.c.updated_at, datetime.fromisoformat(value))
    kind_match = record_index.c.kind.in_(kinds) if len(kinds) > 1 else record_index.c.kind == kinds[0]
    params = INDEX_UNIONS.get(param)
    param_match = record_index.c.param.in_(params) if params else record_index.c.param == param
    if op == "missing":
        present = table.c.id.in_(select(record_index.c.record_id).where(kind_match, param_match))
        return not_(present) if value == "true" else present
    match = COMPARE[op](record_index.c.value, value)
    return table.c.id.in_(select(record_index.c.record_id).where(kind_match, param_match, match))
