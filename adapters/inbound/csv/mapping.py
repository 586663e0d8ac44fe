"""CSV mapping files: which columns feed which canonical fields, validated with errors that name the key.

A mapping is data (YAML, `mappings/csv/*.yaml`). Minimal form::

    feed: registry
    resource: patient
    identifier: {column: rec_id, system: "urn:hub:registry"}
    family: surname
    birth_date: {column: date_of_birth, formats: ["%Y%m%d", "%Y-%m-%d"]}
    gender: {column: sex, map: {M: male, F: female, U: unknown}}

A field is either a column name (`family: surname`) or a table with `column` and, depending on
the field, `formats` (dates: strptime formats tried in order; full dates only), `map` (a code
table: cell value → canonical code) and `system` (identifiers). Every key but `identifier` may be
absent. See `mappings/csv/README.md` for the full list of keys.

Mappings are found by their `feed` (the processing stage re-reads stored chunks with it): the
ones registered in this process by an import first (they carry the import's encoding and
delimiter overrides), then the files in `mappings/csv/`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

import mappings.csv as _csv_mappings

MAPPINGS_DIR = Path(_csv_mappings.__file__).resolve().parent
"""`mappings/csv/`: the mapping files, found by name or by feed."""

GENDERS = ("male", "female", "other", "unknown")
ENCOUNTER_STATUSES = ("planned", "arrived", "in-progress", "finished", "cancelled", "unknown")
RESOURCES = ("patient", "encounter", "charge")
ON_INVALID = ("drop_value", "reject_row")
DELIMITERS = {",": ",", ";": ";", "\t": "\t", "tab": "\t", "\\t": "\t", "|": "|"}
_FEED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the key (and the file)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One canonical field fed by one column."""

    key: str
    """Where in the mapping (`birth_date`, `address.city`): used in reports."""
    column: str
    formats: tuple[str, ...] = ()
    codes: dict[str, str] | None = None
    system: str | None = None
    type: str | None = None
    use: str | None = None


@dataclass(frozen=True, slots=True)
class Mapping:
    name: str
    feed: str
    resource: str
    identifier: Column
    patient: dict[str, Column] = field(default_factory=dict)
    """family, given, middle, birth_date, gender, phone, mobile, email, national_id, …"""
    address_lines: tuple[Column, ...] = ()
    address: dict[str, Column] = field(default_factory=dict)
    encounter: dict[str, Column] = field(default_factory=dict)
    charge: dict[str, Column] = field(default_factory=dict)
    on_invalid: str = "drop_value"
    encoding: str | None = None
    delimiter: str | None = None
    source: str = ""

    def columns(self) -> list[Column]:
        return [
            self.identifier, *self.patient.values(), *self.address_lines, *self.address.values(),
            *self.encounter.values(), *self.charge.values(),
        ]

    def with_overrides(self, encoding: str | None = None, delimiter: str | None = None) -> Mapping:
        return replace(self, encoding=encoding or self.encoding, delimiter=delimiter or self.delimiter)


# key → (kind): "text", "date", "datetime", "code", "identifier", "decimal"
_PATIENT_KEYS = {
    "family": "text", "given": "text", "middle": "text", "prefix": "text", "suffix": "text",
    "birth_date": "date", "gender": "code", "phone": "text", "mobile": "text", "work_phone": "text",
    "email": "text", "national_id": "identifier", "marital_status": "code", "language": "code",
}
_ADDRESS_KEYS = {"city": "text", "state": "text", "postal_code": "text", "country": "text"}
_ENCOUNTER_KEYS = {
    "visit_number": "identifier", "patient_class": "code", "status": "code", "location": "text",
    "attending": "text", "admitted_at": "datetime", "discharged_at": "datetime",
}
_CHARGE_KEYS = {
    "transaction_id": "text", "code": "identifier", "display": "text", "quantity": "decimal",
    "amount": "decimal", "date": "datetime",
}
_TOP_KEYS = {"feed", "resource", "identifier", "address", "encounter", "charge", "on_invalid", "encoding", "delimiter", "description"}
_ALLOWED_IN_COLUMN = {
    "text": {"column", "map", "use"},
    "code": {"column", "map"},
    "date": {"column", "formats"},
    "datetime": {"column", "formats"},
    "identifier": {"column", "system", "type"},
    "decimal": {"column"},
}


def _column(key: str, kind: str, spec: Any, where: str) -> Column:
    if isinstance(spec, str):
        spec = {"column": spec}
    if not isinstance(spec, dict):
        raise MappingError(f"{where}: '{key}' must be a column name or a table with 'column'")
    unknown = set(spec) - _ALLOWED_IN_COLUMN[kind]
    if unknown:
        raise MappingError(f"{where}: '{key}' has unknown key(s) {sorted(unknown)} (allowed: {sorted(_ALLOWED_IN_COLUMN[kind])})")
    column = spec.get("column")
    if not isinstance(column, str) or not column.strip():
        raise MappingError(f"{where}: '{key}.column' must be a non-empty column name")
    formats: tuple[str, ...] = ()
    if kind in ("date", "datetime"):
        raw_formats = spec.get("formats", ["%Y-%m-%d"] if kind == "date" else ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"])
        if isinstance(raw_formats, str):
            raw_formats = [raw_formats]
        if not isinstance(raw_formats, list) or not raw_formats or not all(isinstance(f, str) and "%" in f for f in raw_formats):
            raise MappingError(f"{where}: '{key}.formats' must be a non-empty list of strptime formats (e.g. \"%Y%m%d\")")
        if kind == "date" and not all("%Y" in f or "%y" in f for f in raw_formats):
            raise MappingError(f"{where}: '{key}.formats': every date format needs a year (%Y or %y)")
        formats = tuple(raw_formats)
    codes = None
    if "map" in spec:
        raw_map = spec["map"]
        if not isinstance(raw_map, dict) or not raw_map:
            raise MappingError(f"{where}: '{key}.map' must be a non-empty table of code: value")
        codes = {str(k).strip(): str(v) for k, v in raw_map.items() if v is not None}
        allowed = {"gender": GENDERS, "status": ENCOUNTER_STATUSES}.get(key)
        if allowed:
            bad = sorted({v for v in codes.values() if v not in allowed})
            if bad:
                raise MappingError(f"{where}: '{key}.map' values must be among {list(allowed)}; got {bad}")
    system = spec.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise MappingError(f"{where}: '{key}.system' must be a non-empty string (a URI or urn:oid:…)")
    id_type = spec.get("type")
    if id_type is not None and not isinstance(id_type, str):
        raise MappingError(f"{where}: '{key}.type' must be an identifier type code (MR, PI, SS …)")
    use = spec.get("use")
    if use is not None and use not in ("home", "work", "mobile", "temp", "old"):
        raise MappingError(f"{where}: '{key}.use' must be one of home, work, mobile, temp, old")
    return Column(key, column.strip(), formats, codes, system, id_type, use)


def _section(data: Any, keys: dict[str, str], prefix: str, where: str) -> dict[str, Column]:
    if not isinstance(data, dict):
        raise MappingError(f"{where}: '{prefix}' must be a table")
    unknown = set(data) - set(keys)
    if unknown:
        raise MappingError(f"{where}: '{prefix}' has unknown key(s) {sorted(unknown)} (allowed: {sorted(keys)})")
    return {k: _column(f"{prefix}.{k}", keys[k], v, where) for k, v in data.items() if v is not None}


def parse_mapping(data: Any, name: str, source: str = "<mapping>") -> Mapping:
    """Validate a loaded YAML document; `MappingError` names the offending key."""
    where = source
    if not isinstance(data, dict):
        raise MappingError(f"{where}: a mapping must be a YAML table of key: value")
    known = _TOP_KEYS | set(_PATIENT_KEYS)
    unknown = set(data) - known
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {sorted(map(str, unknown))}")
    feed = data.get("feed", name)
    if not isinstance(feed, str) or not _FEED.match(feed):
        raise MappingError(f"{where}: 'feed' must be 1–64 letters, digits, '_', '.' or '-'")
    resource = data.get("resource", "patient")
    if resource not in RESOURCES:
        raise MappingError(f"{where}: 'resource' must be one of {list(RESOURCES)}")
    if "identifier" not in data:
        raise MappingError(f"{where}: 'identifier' is required (the column that identifies each row's patient)")
    identifier = _column("identifier", "identifier", data["identifier"], where)
    if identifier.system is None:
        identifier = replace(identifier, system=f"urn:hub:csv:{feed}")
    patient = {k: _column(k, _PATIENT_KEYS[k], v, where) for k, v in data.items() if k in _PATIENT_KEYS and v is not None}
    if "national_id" in patient and patient["national_id"].system is None:
        raise MappingError(f"{where}: 'national_id.system' is required (e.g. \"urn:hub:ssn\")")
    address_lines: tuple[Column, ...] = ()
    address: dict[str, Column] = {}
    if data.get("address") is not None:
        raw_address = dict(data["address"]) if isinstance(data["address"], dict) else data["address"]
        if not isinstance(raw_address, dict):
            raise MappingError(f"{where}: 'address' must be a table (line, city, state, postal_code, country)")
        lines = raw_address.pop("line", None)
        if lines is not None:
            lines = [lines] if isinstance(lines, str) else lines
            if not isinstance(lines, list) or not all(isinstance(c, str) and c.strip() for c in lines):
                raise MappingError(f"{where}: 'address.line' must be a column name or a list of column names")
            address_lines = tuple(Column("address.line", c.strip()) for c in lines)
        address = _section(raw_address, _ADDRESS_KEYS, "address", where)
    encounter = _section(data["encounter"], _ENCOUNTER_KEYS, "encounter", where) if data.get("encounter") is not None else {}
    charge = _section(data["charge"], _CHARGE_KEYS, "charge", where) if data.get("charge") is not None else {}
    if resource == "encounter" and not encounter:
        raise MappingError(f"{where}: 'resource: encounter' needs an 'encounter' section")
    if resource == "charge" and "code" not in charge:
        raise MappingError(f"{where}: 'resource: charge' needs a 'charge' section with 'code'")
    on_invalid = data.get("on_invalid", "drop_value")
    if on_invalid not in ON_INVALID:
        raise MappingError(f"{where}: 'on_invalid' must be one of {list(ON_INVALID)}")
    encoding = data.get("encoding")
    if encoding is not None:
        encoding = check_encoding(encoding, f"{where}: 'encoding'")
    delimiter = data.get("delimiter")
    if delimiter is not None:
        delimiter = check_delimiter(delimiter, f"{where}: 'delimiter'")
    return Mapping(
        name=name, feed=feed, resource=resource, identifier=identifier, patient=patient,
        address_lines=address_lines, address=address, encounter=encounter, charge=charge,
        on_invalid=on_invalid, encoding=encoding, delimiter=delimiter, source=source,
    )


def check_encoding(encoding: Any, what: str = "encoding") -> str:
    import codecs

    try:
        name = codecs.lookup(str(encoding)).name
    except LookupError:
        raise MappingError(f"{what}: unknown encoding") from None
    if "\n".encode(name) != b"\n" or name.startswith(("utf-16", "utf-32")):
        raise MappingError(f"{what}: only ASCII-compatible encodings are supported (UTF-8, Latin-1, cp1252 …)")
    return name


def check_delimiter(delimiter: Any, what: str = "delimiter") -> str:
    if not isinstance(delimiter, str) or delimiter not in DELIMITERS:
        raise MappingError(f"{what} must be ',', ';', '|' or 'tab'")
    return DELIMITERS[delimiter]


def load_mapping(path: Path) -> Mapping:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{path}: cannot be read ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise MappingError(f"{path}: not valid YAML{at}") from None
    return parse_mapping(data, path.stem, str(path))


# ---- finding mappings: by name (the API, the CLI) and by feed (processing a stored chunk) ----

_registered: dict[str, Mapping] = {}
_lock = threading.Lock()


def register(mapping: Mapping) -> None:
    """Make a mapping findable by its feed in this process (an import registers the one it uses)."""
    with _lock:
        _registered[mapping.feed] = mapping


def find_by_name(name: str, directory: Path | None = None) -> Mapping | None:
    """`mappings/csv/<name>.yaml`; None when there is no such file. Raises MappingError when invalid."""
    if not _NAME.match(name):
        return None
    path = (directory or MAPPINGS_DIR) / f"{name}.yaml"
    if not path.is_file():
        return None
    return load_mapping(path)


def find_by_feed(feed: str, directory: Path | None = None) -> Mapping | None:
    """The mapping a stored chunk of this feed is re-read with: registered in-process first,
    then the (valid) files in `mappings/csv/` whose `feed:` is this feed."""
    with _lock:
        if feed in _registered:
            return _registered[feed]
    for path in sorted((directory or MAPPINGS_DIR).glob("*.yaml")):
        try:
            mapping = load_mapping(path)
        except MappingError:
            continue
        if mapping.feed == feed:
            return mapping
    return None
