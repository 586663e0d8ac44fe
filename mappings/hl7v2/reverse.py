"""Canonical → HL7 v2 codes: `tables.yaml` read backwards, so each mapping is written once.

Several HL7 codes often map to one canonical code (L, I, B … → official); the one sent back is the
first listed in `tables.yaml`, which is why the preferred code comes first there.
"""

from __future__ import annotations

from functools import cache

from mappings.hl7v2 import table


@cache
def reverse(name: str) -> dict[str, str]:
    """Canonical value → the first HL7 code that maps to it in table `name`."""
    out: dict[str, str] = {}
    for code, canonical in table(name).items():
        out.setdefault(str(canonical), str(code))
    return out


def to_hl7(name: str, canonical: str | None, default: str = "") -> str:
    """One canonical code in HL7 terms ('' or `default` when the table has none for it)."""
    if canonical is None:
        return default
    return reverse(name).get(canonical, default)
