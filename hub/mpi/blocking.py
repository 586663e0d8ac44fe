"""Blocking keys: the few strings under which a record is indexed to find its candidates.

A candidate is any stored record sharing at least one key, so the keys must together survive the
errors real feeds make (a surname typo still shares the given-name key; a move still shares the
national-id key) while each stays selective enough that a key never names thousands of persons
among a million. Placeholders were already dropped by `features`, so they never form a key:
"UNKNOWN|1900" would otherwise make every unnamed newborn a candidate of every other.
"""

from __future__ import annotations

from hub.model import Patient
from hub.mpi.compare import Features, features, nysiis


def _given_key(f: Features) -> str:
    """The given name's nickname root when it has exactly one (BILL → WILLIAM), else its NYSIIS code."""
    if len(f.given_roots) == 1 and len(f.given) > 1:
        return next(iter(f.given_roots))
    return f.given_phon


def blocking_keys(record: Patient | Features) -> list[str]:
    """The record's blocking keys, `kind:value`, without duplicates, in a stable order."""
    f = record if isinstance(record, Features) else features(record)
    keys: list[str] = []
    year = f.dob[:4]
    if year:
        for part in f.family_parts:
            keys.append(f"fam_ny:{nysiis(part)}|{year}")
    if len(f.dob) == 10 and f.postal:
        keys.append(f"dob_pc:{f.dob}|{f.postal}")
    if f.national_id:
        keys.append(f"nid:{f.national_id}")
    keys.extend(f"phone:{p}" for p in f.phones if len(p) == 10)
    keys.extend(f"email:{e}" for e in f.emails)
    if len(f.dob) == 10 and len(f.given) > 1:
        keys.append(f"given_dob:{_given_key(f)}|{f.dob}")
    return list(dict.fromkeys(keys))
