"""Route filters: a route's `when:` block compiled once into plain predicates on a `RoutedEvent`.

Why predicates rather than an expression language: routes come from files anyone with repository
access can edit, so the only operations are the ones listed here (no eval, no attribute access
beyond the canonical model's declared fields). Field paths and regular expressions are checked
when the file is loaded, so a typo fails `hub routes check`, not the 3 a.m. message.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel

from hub.model import PatientEvent
from hub.outbound import RoutedEvent

Predicate = Callable[[RoutedEvent], bool]

OPERATORS = ("equals", "not_equals", "in", "not_in", "exists", "matches")
"""Every operator a field expression may use; exactly one per expression."""


class ConditionError(ValueError):
    """A `when:` entry that cannot be compiled. The text names keys and paths, never values."""

    def __init__(self, text: str, *path: str | int) -> None:
        super().__init__(text)
        self.path: tuple[str | int, ...] = path
        """Where in the `when:` block (keys, list indexes), so the loader can point at its line."""


# --- field paths ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A dotted path into the canonical event (`encounter.patient_class`, `observations.code.code`)."""

    parts: tuple[str, ...]
    leaf: type
    """The leaf's scalar type (str, Decimal, bool, int, datetime): expected values are coerced to it."""

    def values(self, event: PatientEvent) -> list[Any]:
        """Every value at the path; lists along the way are flattened, absent values dropped."""
        current: list[Any] = [event]
        for name in self.parts:
            following: list[Any] = []
            for item in current:
                value = getattr(item, name, None)
                if isinstance(value, list):
                    following.extend(v for v in value if v is not None)
                elif value is not None:
                    following.append(value)
            current = following
        return current


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The inner type of `X | None`, `list[X]`, `Annotated[X, …]`, `Literal[…]`; and whether a list was crossed."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else _widest(args)
        elif origin is list:
            annotation, many = typing.get_args(annotation)[0], True
        elif origin is typing.Literal:
            return str, many
        else:
            return annotation, many


def _widest(args: list[Any]) -> Any:
    """`bool | int` (multiple_birth) compares as text: both spellings are meaningful."""
    return str


def parse_path(path: str) -> FieldPath:
    """Check a dotted path against the canonical model (`hub.model.PatientEvent`)."""
    if not isinstance(path, str) or not path or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", path):
        raise ConditionError("`field` must be a dotted path of canonical field names, e.g. encounter.patient_class")
    model: Any = PatientEvent
    parts = tuple(path.split("."))
    for n, name in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if name not in fields or name == "request":
            where = ".".join(parts[:n]) or "the event"
            raise ConditionError(f"`{path}`: {where} has no field `{name}`")
        model, _ = _unwrap(fields[name].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        raise ConditionError(f"`{path}` names a structure, not a value: add one of its fields")
    leaf = model if model in (str, Decimal, bool, int, datetime) else str
    return FieldPath(parts, leaf)


# --- field expressions ----------------------------------------------------------------------


def _coerce(value: Any, leaf: type, op: str) -> Any:
    """An expected value from YAML → the leaf's type (so `equals: 125` matches Decimal('125.00'))."""
    if isinstance(value, (dict, list)):
        raise ConditionError(f"`{op}` takes a single value here, not a list or a mapping", op)
    if leaf is Decimal:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise ConditionError(f"`{op}` compares a number: the value is not one", op) from None
    if leaf is bool:
        if not isinstance(value, bool):
            raise ConditionError(f"`{op}` compares a yes/no field: use true or false", op)
        return value
    if leaf is datetime:
        raise ConditionError(f"`{op}` is not available for date/time fields (use exists)", op)
    if leaf is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value).lower() if isinstance(value, bool) else str(value)


def _normal(actual: Any, leaf: type) -> Any:
    if leaf is str and not isinstance(actual, str):
        return str(actual).lower() if isinstance(actual, bool) else str(actual)
    return actual


def field_predicate(spec: Any) -> Predicate:
    """`{field: path, <operator>: value}` → predicate. Along a list, a positive operator holds if any
    element satisfies it; `not_equals` / `not_in` are their exact negations (no element matches)."""
    if not isinstance(spec, dict):
        raise ConditionError("a field expression is a mapping like {field: encounter.patient_class, in: [I, E]}")
    unknown = sorted(set(spec) - {"field", *OPERATORS})
    if unknown:
        raise ConditionError(f"unknown key `{unknown[0]}` in a field expression (operators: {', '.join(OPERATORS)})", unknown[0])
    if "field" not in spec:
        raise ConditionError("a field expression needs `field`")
    try:
        path = parse_path(spec["field"])
    except ConditionError as exc:
        raise ConditionError(str(exc), "field") from None
    ops = [k for k in OPERATORS if k in spec]
    if len(ops) != 1:
        raise ConditionError(f"a field expression needs exactly one operator ({', '.join(OPERATORS)})")
    op, arg = ops[0], spec[ops[0]]
    return _compile(path, op, arg)


def _compile(path: FieldPath, op: str, arg: Any) -> Predicate:
    leaf = path.leaf
    if op == "exists":
        if not isinstance(arg, bool):
            raise ConditionError("`exists` takes true or false", op)
        return lambda e: (any(v != "" for v in path.values(e.event))) is arg
    if op in ("equals", "not_equals"):
        expected = _coerce(arg, leaf, op)
        hit = lambda e: any(_normal(v, leaf) == expected for v in path.values(e.event))  # noqa: E731
        return hit if op == "equals" else (lambda e: not hit(e))
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg:
            raise ConditionError(f"`{op}` takes a non-empty list", op)
        allowed = frozenset(_coerce(a, leaf, op) for a in arg)
        hit = lambda e: any(_normal(v, leaf) in allowed for v in path.values(e.event))  # noqa: E731
        return hit if op == "in" else (lambda e: not hit(e))
    if not isinstance(arg, str):
        raise ConditionError("`matches` takes a regular expression (a string)", op)
    try:
        pattern = re.compile(arg)
    except re.error as exc:
        raise ConditionError(f"`matches` is not a valid regular expression ({exc.msg} at position {exc.pos})", op) from None
    return lambda e: any(pattern.search(str(v)) is not None for v in path.values(e.event))


# --- the `when:` block ----------------------------------------------------------------------

_ATTRIBUTES: dict[str, Callable[[RoutedEvent], str | None]] = {
    "event": lambda e: e.event.event,
    "message_type": lambda e: e.message_type,
    "trigger": lambda e: e.trigger,
    "feed": lambda e: e.feed,
    "format": lambda e: e.format,
    "facility": lambda e: e.facility,
    "patient_class": lambda e: e.event.encounter.patient_class if e.event.encounter else None,
}
"""Shorthand keys: each takes one value or a list of values (any of them matches)."""

WHEN_KEYS = (*_ATTRIBUTES, "has_open_orders", "fields")


def compile_when(when: Any) -> tuple[list[Predicate], list[ConditionError]]:
    """A `when:` block → its predicates (all must hold) and every problem found (each with its path)."""
    if when is None:
        return [], []
    if not isinstance(when, dict):
        return [], [ConditionError("`when` is a mapping of conditions (or omitted: every event)")]
    predicates: list[Predicate] = []
    problems: list[ConditionError] = []
    for key, value in when.items():
        try:
            if key == "fields":
                predicate, errors = _fields_predicate(value)
                problems += errors
            else:
                predicate = _key_predicate(key, value)
            predicates.append(predicate)
        except ConditionError as exc:
            problems.append(exc)
    return predicates, problems


def _key_predicate(key: Any, value: Any) -> Predicate:
    if key in _ATTRIBUTES:
        return _attribute_predicate(key, value)
    if key == "has_open_orders":
        if not isinstance(value, bool):
            raise ConditionError("`has_open_orders` takes true or false", key)
        return lambda e: e.has_open_orders is value
    raise ConditionError(f"unknown condition `{key}` (known: {', '.join(WHEN_KEYS)})", str(key))


def _attribute_predicate(key: str, value: Any) -> Predicate:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
        raise ConditionError(f"`{key}` takes a value or a list of values", key)
    allowed = frozenset(str(v) for v in values)
    get = _ATTRIBUTES[key]
    if key == "facility":  # MSH-4 is an HD: `NFGH` matches `NFGH^2.999.1.1^ISO` too
        return lambda e: (f := e.facility) is not None and (f in allowed or f.split("^", 1)[0] in allowed)
    return lambda e: get(e) in allowed


def _fields_predicate(value: Any) -> tuple[Predicate, list[ConditionError]]:
    specs = value if isinstance(value, list) else [value]
    predicates: list[Predicate] = []
    problems: list[ConditionError] = []
    for n, spec in enumerate(specs):
        try:
            predicates.append(field_predicate(spec))
        except ConditionError as exc:
            where = ("fields", n) if isinstance(value, list) else ("fields",)
            problems.append(ConditionError(str(exc), *where, *exc.path))
    return (lambda e: all(p(e) for p in predicates)), problems
