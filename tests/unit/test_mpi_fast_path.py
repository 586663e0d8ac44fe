"""The online decision's shortcuts give what the long way gives: normalising stored JSON without
validating it, ranking pairs by weight before explaining them, and which candidates found by one
common key alone are scored. Synthetic, fictional data (bench/mpi_synth.py)."""

from __future__ import annotations

from bench.mpi_synth import generate
from hub.model import Patient
from hub.mpi.compare import features, features_of_data
from hub.mpi.decide import decide
from hub.mpi.model import load_model
from hub.mpi.service import LARGE_BLOCK, MAX_SCORED, stored_candidates
from hub.store.mpi import Candidate

DATA = generate(150, seed=5)


def test_features_of_stored_json_equal_features_of_the_validated_patient() -> None:
    for rec in DATA.records:
        for data in (rec.patient.model_dump(mode="json", exclude_none=True), rec.patient.model_dump(mode="json")):
            assert features_of_data(data) == features(Patient.model_validate(data))


def test_weight_alone_is_the_explained_weight() -> None:
    model = load_model()
    feats = [features(r.patient) for r in DATA.records[:80]]
    for a in feats[:20]:
        for b in feats:
            assert model.weight(a, b) == model.score_features(a, b).weight


def _decide_the_long_way(model, record, candidates):  # type: ignore[no-untyped-def]
    """The decision as it was before the shortcut: every pair explained, best per person, sorted."""
    best = []
    for person, records in candidates.items():
        scored = [model.score_features(record, other) for other in records]
        best.append((person, max(scored, key=lambda e: e.weight)))
    best.sort(key=lambda pe: -pe[1].weight)
    return [(p, e.band, e.weight) for p, e in best if e.band != "new"], best[0] if best else None


def test_decide_explains_only_what_it_reads_and_decides_the_same() -> None:
    model = load_model()
    by_person: dict[str, list] = {}
    for rec in DATA.records:
        by_person.setdefault(str(rec.person_id), []).append(features(rec.patient))
    persons = list(by_person)
    checked = 0
    for rec in DATA.records[:120]:
        record = features(rec.patient)
        candidates = {p: by_person[p] for p in persons[max(0, rec.person_id - 3) : rec.person_id + 3]}
        decision = decide(model, record, candidates)
        plausible, top = _decide_the_long_way(model, record, candidates)
        shown = [(decision.person_id, decision.explanation.band, decision.explanation.weight)] if plausible else []
        shown += [(p, e.band, e.weight) for p, e in decision.others]
        if plausible:
            assert shown == plausible and decision.band != "new"
        elif top is not None:
            assert decision.band == "new" and decision.explanation == top[1]
        checked += 1
    assert checked == 120


def _candidate(n: int) -> Candidate:
    return Candidate(f"r{n:04d}", f"p{n:04d}", 1)


def test_below_the_cut_every_candidate_is_kept_in_first_seen_order() -> None:
    candidates = {"a": [_candidate(i) for i in range(5)], "b": [_candidate(3), _candidate(9)]}
    kept = stored_candidates("r0001", ["a", "b"], candidates, set())
    assert [c.record_id for c in kept] == ["r0000", "r0002", "r0003", "r0004", "r0009"]  # itself left out
    assert [c.record_id for c in stored_candidates(None, ["a", "b"], candidates, {"a"})] == ["r0003", "r0009"]


def test_past_the_cut_the_records_sharing_most_keys_then_the_rarest_are_kept() -> None:
    blocks = {f"b{b}": [_candidate(100 * b + i) for i in range(LARGE_BLOCK - 1)] for b in range(3)}  # 45 records
    both = blocks["b2"][-1]  # shares a block and the phone
    blocks["phone"] = [_candidate(5000), _candidate(5001), both]  # the rarest block
    keys = ["b0", "b1", "b2", "phone"]
    kept = [c.record_id for c in stored_candidates("incoming", keys, blocks, set())]
    assert len(kept) == MAX_SCORED
    assert {both.record_id, "r5000", "r5001"} <= set(kept)
    first_seen = [c.record_id for key in keys for c in blocks[key]]
    assert kept == sorted(kept, key=first_seen.index)  # order kept
    assert kept[: LARGE_BLOCK - 1] == first_seen[: LARGE_BLOCK - 1]  # then the first block, whole


def test_a_large_block_scores_only_what_another_key_also_finds() -> None:
    """Of a large block, only records another key finds (or a second large block) are scored — the same
    whether the block was read whole or only those records with the block's true size."""
    whole = [_candidate(i) for i in range(200)]  # a common surname and birth year, in block (record id) order
    phone = [_candidate(150), _candidate(5000)]  # r0150 is in both blocks
    switchboard = [_candidate(7), _candidate(150), *(_candidate(8000 + i) for i in range(100))]  # large too
    for rival_blocks in (1, 4):  # other small blocks: under the cut, or past it
        rivals = {f"r{b}": [_candidate(7000 + 10 * b + i) for i in range(10)] for b in range(rival_blocks)}
        for keys in (["fam", "phone", *rivals, "sw"], ["sw", "phone", "fam", *rivals]):
            full = stored_candidates("incoming", keys, {"fam": whole, "phone": phone, "sw": switchboard, **rivals}, set())
            part = {"fam": [whole[7], whole[150]], "phone": phone, "sw": switchboard[:2], **rivals}
            read = stored_candidates("incoming", keys, part, set(), {"fam": 200, "sw": 102})
            assert read == full
            ids = {c.record_id for c in full}
            assert {"r0150", "r5000", "r0007"} <= ids  # shared with the phone; in both large blocks
            assert not ids & {"r0000", "r0199", "r8000"}  # found by one large block alone
            assert len(full) == min(MAX_SCORED, 10 * rival_blocks + 3)


def test_normalised_records_kept_for_reuse_stay_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Memory stays flat over a million-row import: the least recently used versions are dropped."""
    from collections import OrderedDict

    from hub.mpi import service

    monkeypatch.setattr(service, "_features", OrderedDict())
    monkeypatch.setattr(service, "_FEATURES_CACHE", 100)
    f = features(DATA.records[0].patient)
    for n in range(1000):
        service._remember_features(f"r{n}", 1, f)
        if n % 10 == 0:
            service._remember_features("r0", 1, f)  # in use: kept
    assert len(service._features) == 100
    assert ("r0", 1) in service._features and ("r999", 1) in service._features and ("r500", 1) not in service._features
