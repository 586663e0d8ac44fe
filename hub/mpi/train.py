"""Estimating m and u from unlabelled records (what `hub mpi train` will run).

- u = P(level | different persons) is counted on random pairs: almost every random pair is two
  different persons, so their level frequencies are u (the few true matches among them bias u up
  a little, which is conservative).
- m = P(level | same person) and the prior are estimated by expectation–maximisation on the
  blocked candidate pairs with u held fixed (as Splink does): holding u fixed keeps EM from
  drifting to a "household" cluster instead of the "same person" one.

Identical comparison vectors are grouped first, so EM iterates over a few thousand distinct
vectors whatever the number of pairs. Deterministic: same records, pairs and seed → same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from hub.mpi.compare import LEVELS, MISSING, Features, compare_pair
from hub.mpi.model import Model

FIELDS = tuple(LEVELS)
_SMOOTH = 0.5  # pseudo-count per level so that no m or u is ever exactly 0
M_FLOOR = 0.005  # no disagreement is impossible for a true match (gender is miscoded too)


def _vector(a: Features, b: Features) -> tuple[str, ...]:
    levels, _ = compare_pair(a, b)
    return tuple(levels[f] for f in FIELDS)


def estimate_u(records: Sequence[Features], n_pairs: int = 50_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """u per field and level, from `n_pairs` random pairs of distinct records."""
    rng = random.Random(seed)
    counts = {f: Counter() for f in FIELDS}
    n = len(records)
    for _ in range(n_pairs):
        i, j = rng.randrange(n), rng.randrange(n)
        if i == j:
            continue
        for f, level in zip(FIELDS, _vector(records[i], records[j])):
            if level != MISSING:
                counts[f][level] += 1
    return {f: _normalise(counts[f], LEVELS[f]) for f in FIELDS}


def _normalise(counts: Counter | dict[str, float], levels: Sequence[str]) -> dict[str, float]:
    total = sum(counts.get(level, 0.0) for level in levels) + _SMOOTH * len(levels)
    return {level: (counts.get(level, 0.0) + _SMOOTH) / total for level in levels}


def _monotone(m: dict[str, float], u: dict[str, float]) -> dict[str, float]:
    """Raise u where a partial agreement would weigh more than exact agreement.

    Rare levels (an initial against a full name) are seen a handful of times in the random pairs,
    so their u is mostly smoothing; no partial agreement is better evidence than an exact one.
    """
    if "exact" not in m:
        return u
    best = m["exact"] / u["exact"]
    return {lv: (max(u[lv], m[lv] / best) if lv != "exact" else u[lv]) for lv in u}


def _floor(levels: dict[str, float]) -> dict[str, float]:
    raised = {lv: max(p, M_FLOOR) for lv, p in levels.items()}
    total = sum(raised.values())
    return {lv: p / total for lv, p in raised.items()}


def estimate_m(
    vectors: Counter,
    u: dict[str, dict[str, float]],
    m0: dict[str, dict[str, float]],
    prior0: float = 0.3,
    skip: frozenset[str] = frozenset(),
    fix_m: bool = False,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[dict[str, dict[str, float]], float, int]:
    """EM over grouped comparison vectors with u fixed; returns (m, prior, iterations).

    Fields in `skip` (those the pairs were blocked on) take no part: among pairs that share a
    birth date, agreement on birth date says nothing, and counting it would make EM call every
    blocked pair a match. With `fix_m` only the prior is estimated.
    """
    m = {f: dict(m0[f]) for f in FIELDS}
    prior = prior0
    items = list(vectors.items())
    used = [i for i, f in enumerate(FIELDS) if f not in skip]
    iteration = 0
    for iteration in range(1, max_iter + 1):
        expected: dict[str, Counter] = {f: Counter() for f in FIELDS}
        total_p = total_n = 0.0
        for vector, count in items:
            log_m = math.log(prior)
            log_u = math.log(1.0 - prior)
            for i in used:
                level = vector[i]
                if level != MISSING:
                    log_m += math.log(m[FIELDS[i]][level])
                    log_u += math.log(u[FIELDS[i]][level])
            p = 1.0 / (1.0 + math.exp(max(min(log_u - log_m, 700.0), -700.0)))
            total_p += p * count
            total_n += count
            for i in used:
                if vector[i] != MISSING:
                    expected[FIELDS[i]][vector[i]] += p * count
        new_m = m if fix_m else {f: (_normalise(expected[f], LEVELS[f]) if f not in skip else m[f]) for f in FIELDS}
        new_prior = min(max(total_p / total_n, 1e-6), 1 - 1e-6)
        delta = max(abs(new_m[f][lv] - m[f][lv]) for f in FIELDS for lv in LEVELS[f])
        delta = max(delta, abs(new_prior - prior))
        m, prior = new_m, new_prior
        if delta < tol:
            break
    return m, prior, iteration


def training_sessions(
    records: Sequence[Features],
) -> list[tuple[frozenset[str], list[tuple[int, int]]]]:
    """Pairs for EM, Splink-style: each session blocks on some fields and estimates the others.

    - same full birth date → estimates names, ids, contacts, address, gender;
    - same surname and given-name codes → estimates birth date, ids, contacts, address, gender;
    - same national id → estimates everything else. Its pairs are nearly all matches, which
      offsets the name session's households (a Jr and a Sr share names, not birth dates).
    """
    from itertools import combinations

    from hub.mpi.blocking import _given_key

    by_dob: dict[str, list[int]] = defaultdict(list)
    by_name: dict[str, list[int]] = defaultdict(list)
    by_nid: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(records):
        if f.national_id:
            by_nid[f.national_id].append(i)
        if len(f.dob) == 10:
            by_dob[f.dob].append(i)
        if f.family_phon and len(f.given) > 1:
            by_name[f"{f.family_phon}|{_given_key(f)}"].append(i)
    sessions = []
    plan = (
        (frozenset({"birth_date"}), by_dob),
        (frozenset({"given", "family"}), by_name),
        (frozenset({"national_id"}), by_nid),
    )
    for skip, index in plan:
        pairs = [pair for members in index.values() if len(members) <= 200 for pair in combinations(members, 2)]
        sessions.append((skip, pairs))
    return sessions


def train(
    records: Sequence[Features],
    base: Model,
    candidate_pairs: Iterable[tuple[int, int]] = (),
    seed: int = 0,
    u_pairs: int = 50_000,
    version: str | None = None,
    trained_on: str = "",
) -> Model:
    """A new model: u from random pairs, m by EM over the training sessions, the prior by EM
    (m and u fixed) over `candidate_pairs` — the pairs blocking will produce online.

    Thresholds, term-frequency settings and the level layout come from `base`; re-tune the
    thresholds on reviewed decisions after training (their meaning moves with the weights).
    """
    u = estimate_u(records, u_pairs, seed)
    m0 = {f: {lv: base.fields[f][lv]["m"] for lv in LEVELS[f]} for f in FIELDS}
    estimates: dict[str, list[dict[str, float]]] = defaultdict(list)
    info_sessions = []
    for skip, pairs in training_sessions(records):
        vectors = Counter(_vector(records[i], records[j]) for i, j in pairs)
        m, prior, iterations = estimate_m(vectors, u, m0, prior0=0.1, skip=skip)
        for f in FIELDS:
            if f not in skip:
                estimates[f].append(m[f])
        info_sessions.append(
            {
                "blocked_on": sorted(skip),
                "pairs": len(pairs),
                "em_iterations": iterations,
            }
        )
    m = {
        f: {lv: sum(e[lv] for e in estimates[f]) / len(estimates[f]) for lv in LEVELS[f]} if estimates[f] else m0[f]
        for f in FIELDS
    }
    m = {f: _floor(m[f]) for f in FIELDS}
    candidates = Counter(_vector(records[i], records[j]) for i, j in candidate_pairs)
    prior = base.prior
    if candidates:
        _, prior, _ = estimate_m(candidates, u, m, prior0=base.prior, fix_m=True)
    u = {f: _monotone(m[f], u[f]) for f in FIELDS}
    fields = {f: {lv: {"m": round(m[f][lv], 6), "u": round(u[f][lv], 8)} for lv in LEVELS[f]} for f in FIELDS}
    info = {
        "source": trained_on,
        "records": len(records),
        "random_pairs_for_u": u_pairs,
        "em_sessions": info_sessions,
        "candidate_pairs_for_prior": sum(candidates.values()),
        "seed": seed,
        "base_version": base.version,
    }
    digest = hashlib.sha256(json.dumps([fields, round(prior, 8)], sort_keys=True).encode()).hexdigest()[:10]
    return Model(
        version=version or f"fs-em-{digest}",
        prior=round(prior, 8),
        fields=fields,
        link_weight=base.link_weight,
        review_weight=base.review_weight,
        tf_fields=base.tf_fields,
        tf_min_u=base.tf_min_u,
        trained_on=info,
        groups=base.groups,
        prior_population=len(records),
    )
