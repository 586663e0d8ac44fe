"""The MPI quality bench's generator and metrics stay deterministic, fictional and correct."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mpi_quality import bcubed, evaluate, true_pairs
from mpi_synth import generate


def test_generator_is_seeded_and_fictional():
    one, two = generate(200, seed=1), generate(200, seed=1)
    assert [r.patient for r in one.records] == [r.patient for r in two.records]
    assert len(one.persons) == 200 and len(one.records) >= 200 and one.hard_negatives
    for record in one.records:
        for contact in record.patient.telecoms:
            if contact.system == "phone":
                digits = "".join(ch for ch in contact.value if ch.isdigit())[-7:]
                assert digits.startswith("55501") or digits == "0000000"
            else:
                assert contact.value.lower().split("@")[1].startswith("example.")
        assert all(i.system.startswith("urn:hub:") for i in record.patient.identifiers)


def test_perfect_links_score_one_and_no_links_score_zero_recall():
    data = generate(200, seed=2)
    truth = true_pairs(data)
    perfect = evaluate(data, set(truth), set(), truth)
    assert perfect["precision"] == perfect["recall"] == perfect["b3_precision"] == perfect["b3_recall"] == 1.0
    assert not perfect["hard_direct"] and not perfect["hard_merged"]
    nothing = evaluate(data, set(), set(), truth)
    assert nothing["recall"] == 0.0 and nothing["b3_precision"] == 1.0


def test_bcubed_of_one_wrong_merge():
    precision, recall = bcubed([1, 1, 2], [0, 0, 0])
    assert recall == 1.0 and abs(precision - (2 / 3 + 2 / 3 + 1 / 3) / 3) < 1e-9
