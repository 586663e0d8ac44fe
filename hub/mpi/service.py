"""The match step: every patient source record that a processing batch inserts or changes gets its
person, in the same transaction as the records themselves.

Batch-shaped on purpose (processing is one writer, many messages per transaction): the blocking keys
of all the batch's records are looked up in one query, then the records are decided one after the
other in memory, each one seeing those decided before it — two records of one new person in the
same batch make one person, not two. Links, keys, events, reviews and golden records are then
written with one statement per table.

Manual decisions are sticky: a record a steward linked (or that an A40 merged) is never moved by
automatic matching, and a pair declared "not a match" is never put together again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hub.messages import Refused
from hub.model import Patient, PatientEvent, source_identifier
from hub.mpi.blocking import blocking_keys
from hub.mpi.compare import Features, features, features_of_data
from hub.mpi.decide import Decision, decide
from hub.mpi.model import Explanation, Model, load_model
from hub.mpi.survivorship import SourceRecord, golden
from hub.records import new_record_id
from hub.recordset import RecordSet
from hub.store.driver import COPY_FROM
from hub.store.mpi import Candidate, LinkRow, Member, PersonRow
from hub.store.uow import RecordChanges, RecordRow, UnitOfWork

log = logging.getLogger("hub.mpi")

SYSTEM = "system"
STICKY = frozenset({"manual", "merge"})
"""Links automatic matching leaves alone: a steward's, and a source system's own merge (A40)."""

MAX_KEY_RECORDS = 1000
"""A blocking key naming this many records is too common to block on: it is left out (the record's
other keys still find its candidates). Keeps a batch's candidate look-up bounded whatever the data."""
MAX_PER_PERSON = 10
"""A person's records compared with an incoming one: its best pair is nearly always among the first few."""
MAX_SCORED = 30
"""Candidate records scored for one incoming record. Blocks stay small for most records, but among a
million persons a common surname and birth year names hundreds: those sharing the most keys with the
incoming record (then the rarest keys) are scored, the rest — found by one common key alone — are
not. Below this many candidates every one is scored, so decisions on small data are unchanged.
Measured (bench/mpi_link_cost.py, 20,000 synthetic persons, 47,898 records, where common-surname blocks
hold ~90 records): no cut 25,085 persons, pairwise precision 0.9920 / recall 0.7978; cut at 30:
25,084 persons, 0.9933 / 0.7982 — the records left unscored were not the ones that mattered."""

LARGE_BLOCK = 16
"""A block naming this many records nominates no candidate by itself: its records are scored when another
of the incoming record's keys finds them too (or two large blocks do). One shared weak key among many
records — a fictional 555-01xx phone, a common surname and birth year, a placeholder — is not a reason to
compare; those comparisons only ever made false links. Measured (bench/mpi_link_cost.py, 20,000 persons,
47,898 records, SQLite): no such rule 0.72 ms a record, pairwise precision 0.9928 / recall 0.7984; 64:
0.70 ms, 0.9937 / 0.7981; 31: 0.61 ms, 0.9956 / 0.7984; 16: 0.53 ms, 0.9970 / 0.7984; 8: 0.56 ms,
0.9974 / 0.7985. A large block is never read: its size is counted and only its records that the record's
other keys find are looked up (`_Batch._load_large`), so its cost does not grow with the block. Its size
is the stored one when the batch begins: records of the same batch do not count (the one order effect
between bulk and one-by-one arrival: a block crossing the bound inside a batch)."""

BULK_ROWS = 100
"""A batch this large (a CSV chunk, a re-match) is looked up with plain plans (see `MpiRepository.plain_plans`)."""

_model: Model | None = None
_frequent_keys: dict[str, set[str]] = {}
"""Per database: keys found naming MAX_KEY_RECORDS records or more (a key's records only grow; a restart
re-learns them)."""
_large_keys: dict[str, set[str]] = {}
"""Per database: keys found naming LARGE_BLOCK records or more (bounded: at most one per LARGE_BLOCK key rows)."""
_features: OrderedDict[tuple[str, int], Features] = OrderedDict()
_FEATURES_CACHE = 150_000
"""Normalised record versions kept (least recently used dropped first; ~0.8 KB each, ~120 MB at most):
candidates recur from batch to batch (a household's phone, a family name and birth year),
and one not kept costs its data read back and normalised again (~40 µs); but memory must stay flat over
a million rows (this cache was unbounded: 639 MB of RSS at 200,000 rows)."""


class MpiError(Refused):
    """A steward action that cannot be done."""


def current_model() -> Model:
    """The model online matching uses: `use_model`'s (start-up: Settings.mpi_model), else the shipped one."""
    return _model or load_model()


def model_for_index(uow: UnitOfWork) -> Model:
    """`current_model` at the size of the index as it stands (`Model.at_population`): what a record
    arriving now would be decided with ($match, `explain`)."""
    return current_model().at_population(uow.mpi.population())


def use_model(model: Model | None) -> None:
    """Replace the model used online (tests, `hub mpi rematch --model`); None: the shipped default."""
    global _model
    _model = model


def use_model_file(path: Path | None) -> None:
    """At start-up (`hub.bootstrap.build`): the model file the settings name (HUB_MPI_MODEL), else the
    shipped one. A file that cannot be read stops the start, rather than matching with another model."""
    use_model(load_model(path) if path else None)


def _load_features(uow: UnitOfWork, wanted: Collection[tuple[str, int]]) -> dict[str, Features]:
    """Features of stored record versions: from the cache (candidates recur from batch to batch), the
    rest read in one query and normalised once."""
    found: dict[str, Features] = {}
    missing = []
    for key in wanted:
        cached = _features.get(key)
        if cached is None:
            missing.append(key[0])
        else:
            _features.move_to_end(key)
            found[key[0]] = cached
    if missing:
        for record_id, (version, data) in uow.mpi.record_data(missing).items():
            found[record_id] = _remember_features(record_id, version, features_of_data(data))
    return found


def _remember_features(record_id: str, version: int, f: Features) -> Features:
    _features[(record_id, version)] = f
    _features.move_to_end((record_id, version))
    while len(_features) > _FEATURES_CACHE:
        _features.popitem(last=False)
    return f


def explanation_dict(e: Explanation) -> dict[str, Any]:
    """What a link event keeps of an explanation: levels and weights. Stored once per link (the largest
    table after a bulk load), so each field is a list — `[field, level, weight]`, `1` appended when the
    weight was adjusted for term frequency — 40 % of the bytes of a dict per field; `event_detail`
    gives readers the dicts back."""
    compact = {
        "weight": round(e.weight, 3), "probability": round(e.probability, 6), "band": e.band,
        "fields": [[f.field, f.level, round(f.weight, 3), 1] if f.tf_adjusted else [f.field, f.level, round(f.weight, 3)]
                   for f in e.fields],
        "guards": list(e.guards), "names_swapped": e.names_swapped, "model_version": e.model_version,
    }
    if e.population_shift:  # only then: most indexes keep the model as trained
        compact["population_shift"] = e.population_shift
    return compact


def event_detail(detail: Any) -> Any:
    """A link event's stored detail as readers see it: each explanation field a dict (`field`, `level`,
    `weight`, `tf_adjusted`), whether stored compact (`explanation_dict`) or as dicts (before it)."""
    explanation = detail.get("explanation") if isinstance(detail, dict) else None
    if not explanation or not explanation.get("fields"):
        return detail
    fields = [
        {"field": f[0], "level": f[1], "weight": f[2], "tf_adjusted": len(f) > 3 and bool(f[3])} if isinstance(f, list) else f
        for f in explanation["fields"]
    ]
    return {**detail, "explanation": {**explanation, "fields": fields}}


# --- the processing hooks ---------------------------------------------------------------------


def link_batch(uow: UnitOfWork, changes: RecordChanges, events: Iterable[tuple[int, PatientEvent]], at: datetime) -> None:
    """After a batch's records are written: link every changed patient record, then apply the
    batch's merges (ADT^A40: the record named in MRG-1 folds into the event's patient)."""
    rows = [r for r in (*changes.inserted, *changes.updated) if r.kind == "patient"]
    merges = [(m, e) for m, e in events if e.merged_identifier is not None and e.patient is not None]
    if rows or merges:  # records this write inserted were never linked: no link to look up
        link_patients(uow, rows, at, merges=merges, new={r.id for r in changes.inserted})


def link_patients(
    uow: UnitOfWork, rows: Sequence[RecordRow], at: datetime, *, actor: str = SYSTEM, force: bool = False,
    merges: Sequence[tuple[int, PatientEvent]] = (), new: Collection[str] = (),
) -> None:
    """Link (or re-evaluate) these patient records. `force`: re-evaluate even sticky links (rematch after
    a steward unlinked). `new`: ids of records the caller has just inserted, hence never linked (their
    link, decisions and reviews are not looked up: online, most records are new). Costs a fixed handful
    of queries per call, whatever the number of rows."""
    started = time.perf_counter()
    unique = list({r.id: r for r in rows if r.kind == "patient"}.values())
    batch = _Batch(uow, at, actor, current_model())
    batch.load(unique, force, new)
    for row in unique:
        batch.link(row)
    with uow.mpi.pipelined(batch.writes_only(merges)):  # PostgreSQL: the writes in one round trip or two
        batch.write_links()
        for message_id, event in merges:
            batch.merge_event(message_id, event)
        batch.apply_pending_merges(unique)
        for row in batch.reinactivate:  # merged away stays merged away: the update is kept, inactive
            _mark_inactive(uow, row, row.message_id, at)
        batch.write_links()
        batch.write_persons()
    if unique:
        log.debug("linked %d patient records in %.1f ms", len(unique), (time.perf_counter() - started) * 1000)


def enterprise_ids(uow: UnitOfWork, record_ids: Collection[str]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Record id → (its person's enterprise id, every source identifier (system, value) of that person).
    For the outbound side: a message about a source record can carry the enterprise id and the
    identifiers the destination knows the patient by. Records not linked are left out."""
    links = uow.mpi.links(record_ids)
    identifiers = uow.mpi.identifiers({link.person_id for link in links.values()})
    return {rid: (link.person_id, identifiers.get(link.person_id, [])) for rid, link in links.items()}


def match_candidates(uow: UnitOfWork, patient: Patient, limit: int = 10) -> list[tuple[str, Explanation]]:
    """Persons that `patient` (not stored) may be, best first, each with its best pair's explanation:
    blocking and scoring exactly as processing would decide, without linking anything (FHIR `$match`)."""
    model = model_for_index(uow)
    f = features(patient)
    keys = blocking_keys(f)
    frequent = {k for k, n in uow.mpi.key_counts(keys).items() if n >= MAX_KEY_RECORDS}
    kept = stored_candidates(None, keys, uow.mpi.candidates(set(keys) - frequent), frequent)
    stored = _load_features(uow, {(c.record_id, c.version) for c in kept})
    best: dict[str, Explanation] = {}
    for c in kept:
        other = stored.get(c.record_id)
        if other is None:
            continue
        e = model.score_features(f, other)
        if c.person_id not in best or e.weight > best[c.person_id].weight:
            best[c.person_id] = e
    return sorted(best.items(), key=lambda pe: -pe[1].weight)[:limit]


def stored_candidates(
    record_id: str | None, keys: Sequence[str], candidates: dict[str, list[Candidate]], frequent: Collection[str],
    sizes: Mapping[str, int] | None = None,
) -> list[Candidate]:
    """The stored records sharing a key with this one that `comparable` keeps, in first-seen order. Past
    MAX_SCORED, only the MAX_SCORED sharing the most keys (ties: found in the smaller block, then first
    seen) are kept. `sizes`: blocks' true sizes where `candidates` holds part of a block (`_Batch._load_large`)."""
    by_id = {c.record_id: c for key in keys if key not in frequent for c in candidates.get(key, ())}
    shared, rarest = comparable(
        keys, lambda key: [c.record_id for c in candidates.get(key, ())],
        lambda key: sizes.get(key, len(candidates.get(key, ()))) if sizes else len(candidates.get(key, ())),
        frequent, record_id,
    )
    kept = list(shared)
    if len(kept) > MAX_SCORED:
        keep = set(sorted(kept, key=lambda r: (-shared[r], rarest[r]))[:MAX_SCORED])
        kept = [r for r in kept if r in keep]
    return [by_id[r] for r in kept]


def comparable(
    keys: Sequence[str], members: Callable[[str], Sequence[str]], size: Callable[[str], int],
    frequent: Collection[str], itself: str | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """The records a record is compared with, first-seen order: those a block under LARGE_BLOCK records
    finds, or two blocks do (a large block nominates no record by itself). Record id → keys it shares,
    and → the size of the block it was first found in."""
    shared: dict[str, int] = {}
    rarest: dict[str, int] = {}
    nominated: set[str] = set()
    for key in keys:
        if key in frequent:
            continue
        block_size = size(key)
        for other in members(key):
            if other == itself:
                continue
            if other in shared:
                shared[other] += 1
            else:
                shared[other], rarest[other] = 1, block_size
            if block_size < LARGE_BLOCK:
                nominated.add(other)
    return {r: n for r, n in shared.items() if r in nominated or n >= 2}, rarest


# --- one batch ----------------------------------------------------------------------------------


@dataclass
class _Row:
    row: RecordRow
    features: Features | None
    keys: list[str]
    stored: list[Candidate] = field(default_factory=list)
    """Stored records sharing a key with this one, first-seen order, at most MAX_SCORED (`_stored_candidates`)."""


class _Batch:
    """What one call decides, in memory until written: later records see earlier ones."""

    def __init__(self, uow: UnitOfWork, at: datetime, actor: str, model: Model) -> None:
        self.uow, self.at, self.actor, self.model = uow, at, actor, model
        self.links: dict[str, LinkRow] = {}
        self.stored: set[str] = set()  # record ids whose link is in the database
        self.new_links: dict[str, LinkRow] = {}
        self.changed_links: dict[str, LinkRow] = {}
        self.rows: dict[str, _Row] = {}
        self.candidates: dict[str, list[Candidate]] = {}
        self.sizes: dict[str, int] = {}
        self.stored_features: dict[str, Features] = {}
        self.frequent: set[str] = set()
        self.batch_keys: dict[str, list[str]] = {}
        self.pins: set[str] = set()
        self.not_match: dict[str, set[str]] = {}
        self.open_reviews: set[str] = set()
        self.counts: dict[str, int] = {}
        self.emptied: dict[str, str | None] = {}
        self.new_persons: set[str] = set()
        self.touched: set[str] = set()
        self.rekeyed: set[str] = set()
        self.key_entries: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.reviews: list[dict[str, Any]] = []
        self.superseded_reviews: set[str] = set()
        self.sole: dict[str, str] = {}  # new person → the batch record it was made for
        self.reinactivate: list[RecordRow] = []
        self.waiting_merges: dict[tuple[str, str], tuple[int, str]] = {}  # A40s waiting for a batch record
        self.population = 0  # source records linked before this batch (`MpiRepository.population`)
        self.first_links = 0  # records this batch linked for the first time
        self.force = False
        self.folded = False  # a merge moved stored records: persons made by this batch may hold records outside it

    # loading: a fixed number of queries for the whole batch

    def load(self, rows: Sequence[RecordRow], force: bool, new: Collection[str] = ()) -> None:
        self.force = force
        if not rows:
            return
        ids = [r.id for r in rows]
        mpi = self.uow.mpi
        if len(rows) >= BULK_ROWS:
            mpi.plain_plans()
        maybe_linked = [i for i in ids if i not in new]
        if maybe_linked:
            self._remember_links(mpi.links(maybe_linked))
        known = [i for i in ids if i in self.links]  # a record never linked has no decisions nor reviews yet
        if known:
            self.pins = set(mpi.pins(known))
            self.not_match = mpi.not_matches(known)
            others = set().union(*self.not_match.values()) - set(self.links) if self.not_match else set()
            if others:
                self._remember_links(mpi.links(others))
            self.open_reviews = mpi.open_review_records(known)
        all_keys: set[str] = set()
        for row in rows:
            f = None if row.deleted else features_of_data(row.data)
            if f is not None:  # the next batches find this version as a candidate: normalise it once
                _remember_features(row.id, row.version, f)
            keys = blocking_keys(f) if f is not None else []
            self.rows[row.id] = _Row(row, f, keys)
            all_keys.update(keys)
        url = str(self.uow.engine.url)
        frequent, large_keys = _frequent_keys.setdefault(url, set()), _large_keys.setdefault(url, set())
        self.frequent = all_keys & frequent
        large = (all_keys - self.frequent) & large_keys
        self.candidates, self.waiting_merges, self.sizes, self.population = mpi.candidates_and_pending_merges(
            all_keys - self.frequent - large, {(r.source_system, r.source_value) for r in rows}, large,
        )  # merges are applied after linking; reading them now saves PostgreSQL a round trip
        shrunk = {key for key in large if self.sizes.get(key, 0) < LARGE_BLOCK}  # records left it: read it whole
        if shrunk:
            self.candidates.update(mpi.candidates(shrunk))
        for key, n in ({key: len(found) for key, found in self.candidates.items()} | self.sizes).items():
            if n >= MAX_KEY_RECORDS:  # from now on left out before the query
                frequent.add(key)
                self.frequent.add(key)
            elif n >= LARGE_BLOCK:  # from now on never read: only what other keys also find
                large_keys.add(key)
            else:
                large_keys.discard(key)
        large -= self.frequent | shrunk
        if large:
            self._load_large(large)
        wanted: set[tuple[str, int]] = set()
        for item in self.rows.values():  # only the candidates that will be scored are read and normalised
            item.stored = self._stored_candidates(item.row.id, item.keys)
            wanted.update((c.record_id, c.version) for c in item.stored if c.record_id not in self.rows)
        self.stored_features = _load_features(self.uow, wanted)
        self.counts = mpi.member_counts({link.person_id for rid, link in self.links.items() if rid in self.rows})

    def _load_large(self, large: set[str]) -> None:
        """What the large blocks contribute (`stored_candidates` scores no record found by a large block
        alone): their records that another, smaller block of the batch also names (found by the record id
        index, not by reading the block) and, for a record with two large blocks, the records in both.
        Kept in block order (record ids), as a whole read would give them."""
        mpi = self.uow.mpi
        parts: dict[str, dict[str, Candidate]] = {}
        known: dict[str, Candidate] = {}  # candidates, by their smaller blocks, of the records with a large block
        for item in self.rows.values():
            if not large.isdisjoint(item.keys):
                for key in item.keys:
                    if key not in large and key not in self.frequent:
                        known.update((c.record_id, c) for c in self.candidates.get(key, ()))
        for key, record_id in mpi.in_keys(large, known):
            parts.setdefault(key, {})[record_id] = known[record_id]
        pairs = set()
        for item in self.rows.values():
            mine = sorted((k for k in item.keys if k in large), key=lambda k: self.sizes.get(k, 0))
            pairs.update((a, b) for i, a in enumerate(mine) for b in mine[i + 1 :])
        for a, b in pairs:  # a: the smaller block, scanned
            for c in mpi.in_both(a, b):
                parts.setdefault(a, {})[c.record_id] = c
                parts.setdefault(b, {})[c.record_id] = c
        for key, part in parts.items():
            self.candidates[key] = [part[r] for r in sorted(part)]

    def _remember_links(self, found: dict[str, LinkRow]) -> None:
        self.links.update(found)
        self.stored.update(found)

    # deciding

    def link(self, row: RecordRow) -> None:
        item = self.rows[row.id]
        link = self.links.get(row.id)
        self.rekeyed.add(row.id)
        self.key_entries.extend((key, row.id) for key in item.keys)
        if link is not None:
            self.touched.add(link.person_id)
            if link.replaced_by and row.active and not row.deleted:  # a late update to a merged-away record
                self.reinactivate.append(row)
        if item.features is None:  # deleted: no longer a candidate, still linked (history)
            return
        sticky = link is not None and (link.how in STICKY or row.id in self.pins)
        if not sticky or self.force:
            self._decide(row.id, item, link)
        for key in item.keys:
            self.batch_keys.setdefault(key, []).append(row.id)

    def _decide(self, record_id: str, item: _Row, link: LinkRow | None) -> None:
        assert item.features is not None
        # the index as one-by-one arrival would find it: what was linked before, and this batch's earlier records
        model = self.model.at_population(self.population + self.first_links)
        decision = decide(model, item.features, self._candidate_groups(record_id, item))
        current = link.person_id if link else None
        if decision.band == "link" and decision.person_id is not None:
            if decision.person_id != current:
                self.move(record_id, current, decision.person_id, "auto", decision.explanation, decision)
            return
        plausible = {decision.person_id, *(p for p, _ in decision.others)} if decision.band == "review" else set()
        if current is not None and current in plausible:
            return  # still among the plausible persons: a review would not add anything
        target = self._own_person(current)
        how = "review" if decision.band == "review" else "new"
        if target != current:
            self.move(record_id, current, target, how, decision.explanation, decision)
        if decision.band == "review" and record_id not in self.open_reviews:
            self._review(record_id, decision)

    def _stored_candidates(self, record_id: str, keys: Sequence[str]) -> list[Candidate]:
        return stored_candidates(record_id, keys, self.candidates, self.frequent, self.sizes)

    def _candidate_groups(self, record_id: str, item: _Row) -> dict[str, list[Features]]:
        """Candidate person → features of its records sharing a key (the stored ones `_stored_candidates`
        kept and this batch's records decided before), minus persons holding a record declared not to
        be this one."""
        excluded = {self.links[o].person_id for o in self.not_match.get(record_id, ()) if o in self.links}
        groups: dict[str, list[Features]] = {}
        seen = {record_id}

        def add(person: str, f: Features | None) -> None:
            if f is not None:
                group = groups.setdefault(person, [])
                if len(group) < MAX_PER_PERSON:
                    group.append(f)

        kept = {c.record_id for c in item.stored}
        mates = self._batch_mates(item.keys)
        for key in item.keys:  # key by key, stored then batch: the order ties between equal weights follow
            if key in self.frequent:
                continue
            for c in self.candidates.get(key, ()):
                if c.record_id in kept and c.record_id not in seen:
                    seen.add(c.record_id)
                    person = self.links[c.record_id].person_id if c.record_id in self.links else c.person_id
                    mate = self.rows.get(c.record_id)
                    add(person, mate.features if mate else self.stored_features.get(c.record_id))
            for other in self.batch_keys.get(key, ()):
                if other not in seen and other in mates and other in self.links:
                    seen.add(other)
                    add(self.links[other].person_id, self.rows[other].features)
        for person in excluded:
            groups.pop(person, None)
        return groups

    def _batch_mates(self, keys: Sequence[str]) -> set[str]:
        """This batch's earlier records that would be compared were they stored (as they are when records
        arrive one by one): `comparable`, with each block's stored size when the batch began (see LARGE_BLOCK)."""
        shared, _ = comparable(
            keys, lambda key: self.batch_keys.get(key, ()),
            lambda key: self.sizes.get(key, len(self.candidates.get(key, ()))), self.frequent,
        )
        return set(shared)

    def _own_person(self, current: str | None) -> str:
        """The person a record keeps when it matches no one: its own, if it is alone in it."""
        if current is not None and self.counts.get(current, 0) == 1:
            return current
        person = new_record_id()  # time-ordered: persons and the links' person index grow at their end
        self.new_persons.add(person)
        self.counts[person] = 0
        return person

    def move(
        self, record_id: str, current: str | None, target: str, how: str, explanation: Explanation | None,
        decision: Decision | None = None, action: str | None = None, replaced_by: str | None = None,
    ) -> None:
        """Link the record to `target` (from `current`, or for the first time) and record why."""
        score = round(explanation.weight, 4) if explanation else None
        version = explanation.model_version if explanation else None
        link = LinkRow(record_id, target, how, score, version, replaced_by, self.at)
        (self.changed_links if record_id in self.stored else self.new_links)[record_id] = link
        self.links[record_id] = link
        self.counts[target] = self.counts.get(target, 0) + 1
        self.touched.add(target)
        if current is None:
            self.first_links += 1
        if target in self.new_persons and record_id in self.rows:
            self.sole.setdefault(target, record_id)
        if current is not None and current != target:
            self.counts[current] = self.counts.get(current, 1) - 1
            self.touched.add(current)
            if self.counts[current] <= 0:
                self.emptied[current] = target
        detail: dict[str, Any] = {"how": how}
        if decision is not None:
            detail |= {"band": decision.band, "reason": decision.reason}
        if explanation is not None:
            detail["explanation"] = explanation_dict(explanation)
        if how == "auto" and record_id in self.open_reviews:  # matching has since become certain
            self.superseded_reviews.add(record_id)
            self.open_reviews.discard(record_id)
        self.events.append({
            "at": self.at, "actor": self.actor, "action": action or ("link" if current is None else "relink"),
            "record_id": record_id, "from_person": current, "to_person": target, "score": score,
            "model_version": version or self.model.version, "detail": detail,
        })

    def _review(self, record_id: str, decision: Decision) -> None:
        candidates = [(decision.person_id, decision.explanation), *decision.others]
        self.reviews.append({
            "record_id": record_id, "status": "open", "created_at": self.at,
            "candidates": [
                {"person_id": p, "weight": round(e.weight, 4), "probability": round(e.probability, 6), "band": e.band,
                 "guards": list(e.guards)}
                for p, e in candidates if p is not None and e is not None
            ],
        })
        self.open_reviews.add(record_id)

    # merges (ADT^A40)

    def merge_event(self, message_id: int, event: PatientEvent) -> None:
        assert event.patient is not None and event.merged_identifier is not None
        survivor_id = source_identifier(event.patient)
        merged = event.merged_identifier
        if survivor_id is None or not merged.value:
            return
        survivor_key = ("patient", survivor_id.system or "", survivor_id.value)
        merged_key = ("patient", merged.system or "", merged.value)
        if merged_key == survivor_key:
            return
        found = self.uow.records.by_sources([survivor_key, merged_key])
        if survivor_key not in found:
            return
        if merged_key not in found:  # never seen: kept until that record arrives
            self.uow.mpi.add_pending_merge(merged_key[1], merged_key[2], found[survivor_key].id, message_id, self.at)
            self.events.append({
                "at": self.at, "actor": self.actor, "action": "merge_pending", "record_id": found[survivor_key].id,
                "model_version": self.model.version, "detail": {"message_id": message_id},
            })
            return
        self.fold(found[merged_key], found[survivor_key].id, message_id)

    def apply_pending_merges(self, rows: Sequence[RecordRow]) -> None:
        if not rows:
            return
        waiting = self.uow.mpi.take_pending_merges(self.waiting_merges)  # read by `load`
        for row in rows:
            survivor = waiting.get((row.source_system, row.source_value))
            if survivor is not None and survivor != row.id:
                self.fold(row, survivor, None)

    def fold(self, merged: RecordRow, survivor_id: str, message_id: int | None) -> None:
        """The merged-away record joins the survivor's person (with every record of its own person: the
        source says they are one patient), is marked inactive and points at the survivor."""
        self.folded = True
        self.write_links()
        links = self.uow.mpi.links([merged.id, survivor_id])
        if survivor_id not in links:
            return
        target = links[survivor_id].person_id
        current = links[merged.id].person_id if merged.id in links else None
        self.stored.update(links)
        self.links.update(links)
        if current is not None and current != target:
            self.merge_persons(current, target, pin=False, action="a40_merge")
        self.move(merged.id, target if current is not None else None, target, "merge", None,
                  action="a40_merge", replaced_by=survivor_id)
        self.counts[target] -= 1 if current is not None else 0
        self.write_links()
        _mark_inactive(self.uow, merged, message_id, self.at)

    def merge_persons(self, source: str, target: str, *, pin: bool, action: str) -> None:
        """Every record of `source` moves to `target`; `source` stays, inactive, pointing at `target`."""
        self.folded = True
        self.write_links()
        members = self.uow.mpi.record_ids_of(source)
        existing = self.uow.mpi.links(members)
        self._remember_links(existing)
        self.counts[source] = len(members)
        for record_id in members:
            link = existing[record_id]
            self.move(record_id, source, target, "manual" if pin else link.how, None, action=action)
            if pin:
                self.uow.mpi.add_decision("pin", record_id, self.actor, self.at, person_id=target)

    def _made_persons(self, touched: set[str]) -> dict[str, list[Member]]:
        """Persons this batch made → their records (as `persons_and_members` reads them: in record id order)."""
        if self.folded:
            sole = {p: r for p, r in self.sole.items() if p in touched and self.counts.get(p) == 1}
            return {p: [_member(self.rows[r].row, p)] for p, r in sole.items()}
        made: dict[str, list[Member]] = {p: [] for p in touched & self.new_persons}
        for record_id in sorted(self.rows):
            link = self.links.get(record_id)
            if link is not None and link.person_id in made:
                made[link.person_id].append(_member(self.rows[record_id].row, link.person_id))
        # a record linked from outside this batch's rows (a steward's move): read that person back
        return {p: members for p, members in made.items() if len(members) == self.counts.get(p, 0)}

    # writing

    def writes_only(self, merges: Sequence[tuple[int, PatientEvent]]) -> bool:
        """Whether what is left to do is writes and `persons_and_members` (may be pipelined): no merge
        to apply (those read records and links), and few rows (larger ones go by COPY)."""
        if merges or self.waiting_merges or self.reinactivate:
            return False
        rows = (len(self.key_entries), len(self.events), len(self.new_links) + len(self.changed_links),
                len(self.reviews), len(self.touched))
        return max(rows) < COPY_FROM

    def write_links(self) -> None:
        if self.rekeyed:  # a record linked before has stored keys to replace; a new one has none
            self.uow.mpi.replace_keys(self.rekeyed & self.stored, self.key_entries)
            self.rekeyed, self.key_entries = set(), []
        self.uow.mpi.write_links(list(self.new_links.values()), list(self.changed_links.values()))
        self.stored.update(self.new_links)
        self.new_links, self.changed_links = {}, {}
        self.uow.mpi.add_events(self.events)
        self.uow.mpi.add_reviews(self.reviews)
        if self.superseded_reviews:
            self.uow.mpi.resolve_reviews(self.superseded_reviews, self.actor, self.at, status="superseded")
        self.events, self.reviews, self.superseded_reviews = [], [], set()

    def write_persons(self) -> None:
        """Golden records of every person this batch touched, rebuilt from their records."""
        touched = {p for p in self.touched if p}
        if not touched:
            return
        mpi = self.uow.mpi
        # a person made by this batch holds records of this batch only (unless a merge moved others in):
        # no look-up, and its records' data need not be read back
        made = self._made_persons(touched)
        existing, members = mpi.persons_and_members(touched - set(made))
        inserted, updated = [], []
        for person_id in sorted(touched):
            records = made[person_id] if person_id in made else members.get(person_id, [])
            person = existing.get(person_id)
            if not records:
                if person is not None and person.active:
                    person.active, person.merged_into = False, self.emptied.get(person_id)
                    person.version, person.updated_at = person.version + 1, self.at
                    updated.append(person)
                continue
            live = [m for m in records if m.active and not m.deleted] or [m for m in records if not m.deleted] or records
            data, provenance = golden([SourceRecord(m.record_id, m.feed, m.updated_at, m.data) for m in live])
            if person is None:
                inserted.append(PersonRow(person_id, data, provenance, True, None, 1, self.at, self.at))
            elif (person.data, person.provenance, person.active) != (data, provenance, True):
                person.data, person.provenance, person.active, person.merged_into = data, provenance, True, None
                person.version, person.updated_at = person.version + 1, self.at
                updated.append(person)
        mpi.write_persons(inserted, updated)


def _member(row: RecordRow, person_id: str) -> Member:
    return Member(row.id, person_id, row.source_system, row.source_value, row.feed, row.active, row.data,
                  row.updated_at, row.deleted)


def _mark_inactive(uow: UnitOfWork, row: RecordRow, message_id: int | None, at: datetime) -> None:
    """A new version of the merged-away record with `active: false` (its history stays readable)."""

    key = (row.kind, row.source_system, row.source_value)
    record_set = RecordSet(uow.records, [key])
    current = record_set.rows.get(key)
    if current is None or not current.active:
        return
    patient = Patient.model_validate(current.data)
    patient.active = False
    record_set.put(key, patient, None, current.feed, message_id or current.message_id or 0, at,
                   resource=current.resource)
    uow.records.write(record_set.changes())
