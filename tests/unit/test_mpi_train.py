"""EM training: m recovered from unlabelled vectors with u fixed; deterministic model files."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hub.mpi.compare import features
from hub.mpi.model import load_model
from hub.mpi.train import FIELDS, LEVELS, estimate_m, estimate_u, train
from tests.unit.test_mpi_compare import pt

TRUE_PRIOR = 0.3


def _true_m_u() -> tuple[dict, dict]:
    m, u = {}, {}
    for f in FIELDS:
        levels = LEVELS[f]
        m[f] = {lv: (0.85 if i == 0 else 0.15 / (len(levels) - 1)) for i, lv in enumerate(levels)}
        u[f] = {lv: (0.9 if lv == "different" else 0.1 / (len(levels) - 1)) for lv in levels}
    return m, u


def _sample(rng: random.Random, dist: dict[str, float]) -> str:
    return rng.choices(list(dist), list(dist.values()))[0]


def test_em_recovers_m_and_prior_with_u_fixed():
    m_true, u = _true_m_u()
    rng = random.Random(3)
    vectors: Counter = Counter()
    for _ in range(20_000):
        source = m_true if rng.random() < TRUE_PRIOR else u
        vectors[tuple(_sample(rng, source[f]) for f in FIELDS)] += 1
    start = {f: {lv: 1 / len(LEVELS[f]) for lv in LEVELS[f]} for f in FIELDS}
    m, prior, iterations = estimate_m(vectors, u, start, prior0=0.1)
    assert prior == pytest.approx(TRUE_PRIOR, abs=0.02)
    for f in FIELDS:
        for lv in LEVELS[f]:
            assert m[f][lv] == pytest.approx(m_true[f][lv], abs=0.03), (f, lv)
    assert iterations < 100


def test_em_ignores_the_fields_pairs_were_blocked_on():
    _m_true, u = _true_m_u()
    start = {f: {lv: 1 / len(LEVELS[f]) for lv in LEVELS[f]} for f in FIELDS}
    vectors = Counter({tuple("exact" for _ in FIELDS): 10, tuple("different" for _ in FIELDS): 10})
    m, _, _ = estimate_m(vectors, u, start, skip=frozenset({"birth_date"}))
    assert m["birth_date"] == start["birth_date"]


def _records():
    people = [
        ("Wilbur", "Quennell", "1980-04-12", "900-12-3456"),
        ("Ottilie", "Abernathy", "1955-09-30", "911-55-0000"),
        ("Cyrus", "Marchetti", "1991-01-05", "922-33-4444"),
        ("Perpetua", "Oyelaran", "1964-07-21", "933-44-5555"),
    ]
    recs = []
    for given, family, dob, nid in people:
        recs.append(features(pt(given, family, dob, nid=nid)))
        recs.append(features(pt(given.upper(), family, dob, nid=nid, phone="212-555-0142")))
        recs.append(features(pt(given[:-1] + "e", family, dob)))
    return recs


def test_u_from_random_pairs_is_a_distribution():
    u = estimate_u(_records(), n_pairs=2000, seed=1)
    for f in FIELDS:
        assert sum(u[f].values()) == pytest.approx(1.0)
        assert all(p > 0 for p in u[f].values())
    assert u["given"]["different"] > u["given"]["exact"]


def test_train_is_deterministic_and_keeps_thresholds():
    base = load_model()
    recs = _records()
    pairs = [(i, j) for i in range(len(recs)) for j in range(i + 1, len(recs))]
    one = train(recs, base, pairs, seed=5, u_pairs=3000, trained_on="unit test")
    two = train(recs, base, pairs, seed=5, u_pairs=3000, trained_on="unit test")
    assert one.to_dict() == two.to_dict()
    assert one.version.startswith("fs-em-") and one.version != base.version
    assert one.link_weight == base.link_weight and one.groups == base.groups
    assert one.trained_on["records"] == len(recs) and one.trained_on["seed"] == 5
    for f in FIELDS:
        assert sum(v["m"] for v in one.fields[f].values()) == pytest.approx(1.0, abs=1e-3)
