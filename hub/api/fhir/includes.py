"""Search result parameters beyond the matches: `_include` (the subject Patient), `_revinclude` (records that
point at the matched patients), and what the CapabilityStatement says about search.

Every reference search parameter of the hub points at a Patient (the canonical `patient_id`), so
`_include` and `_revinclude` are defined for those only: `Observation?_include=Observation:subject`,
`Patient?_revinclude=Encounter:subject`. Included resources are not paged (FHIR does not page them);
`_revinclude` adds at most `REVINCLUDE_LIMIT` resources of each type, and says so in the searchset's
OperationOutcome when it left some out (a client must not take a cut list for the whole).
"""

from __future__ import annotations

import json
from typing import Any

from hub.access import PatientData
from hub.api.fhir.render import KINDS, row_resource
from mappings.fhir import search

REVINCLUDE_LIMIT = 1000
MODIFIERS = {
    "string": "modifiers :exact (family, given, name), :contains, :missing; comma-separated values are OR",
    "token": "modifiers :not, :missing; comma-separated values are OR",
    "date": "prefixes eq, lt, gt, le, ge; modifier :missing; comma-separated values are OR",
    "reference": "a Patient (id or Patient/id); :Patient, :missing; chained: {name}.<Patient parameter>",
}


def parse(resource_type: str, pairs: list[tuple[str, str]]) -> tuple[bool, list[str], list[str]]:
    """(whether to include the subject patients, the types to revinclude, unsupported parameters)."""
    include, revinclude, unknown = False, [], []
    for name, value in pairs:
        if name == "_include":
            if value in (f"{resource_type}:subject", f"{resource_type}:patient") and "patient" in search.PARAMS[resource_type]:
                include = True
            else:
                unknown.append("_include")
        elif name == "_revinclude":
            type_, _, param = value.partition(":")
            if resource_type == "Patient" and type_ != "Patient" and search.PARAMS.get(type_, {}).get(param) == "reference":
                revinclude.append(type_)
            else:
                unknown.append("_revinclude")
        elif name == "_elements" or (name == "_summary" and value != "count"):
            unknown.append(name)
    return include, list(dict.fromkeys(revinclude)), unknown


def revinclude_entries(
    data: PatientData, base: str, types: list[str], patient_ids: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Entries (mode include) for the records of these types that belong to these patients, and an
    OperationOutcome issue (warning) for each type cut at `REVINCLUDE_LIMIT`."""
    entries: list[dict[str, Any]] = []
    issues: list[dict[str, Any]] = []
    if not patient_ids:
        return entries, issues
    criteria = [("patient_id", "in", json.dumps(patient_ids))]
    limit = REVINCLUDE_LIMIT
    for type_ in types:
        rows = data.search(KINDS[type_], criteria, limit, 0)
        entries += [
            {"fullUrl": f"{base}/{type_}/{row.id}", "resource": row_resource(row), "search": {"mode": "include"}}
            for row in rows
        ]
        total = data.count(KINDS[type_], criteria) if len(rows) >= limit else len(rows)
        if total > limit:
            issues.append({
                "severity": "warning", "code": "incomplete", "expression": ["_revinclude"],
                "diagnostics": f"_revinclude: only {limit} of the {total} {type_} resources of the matched patients "
                               f"are included (the limit is {limit} per type)",
            })
    return entries, issues


def capability(name: str, params: dict[str, str]) -> dict[str, Any]:
    """The search part of a CapabilityStatement resource entry."""
    references = [n for n, t in params.items() if t == "reference"]
    return {
        "searchInclude": [f"{name}:{n}" for n in references if n in ("subject", "patient")],
        "searchRevInclude": (
            [f"{type_}:{n}" for type_, p in search.PARAMS.items() for n, t in p.items() if t == "reference"]
            if name == "Patient" else []
        ),
        "searchParam": [
            {"name": n, "type": t} | ({"documentation": MODIFIERS[t].format(name=n)} if not n.startswith("_") else {})
            for n, t in params.items()
        ],
    }
