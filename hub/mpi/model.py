"""Fellegi–Sunter scoring: per-field levels → match weight → band, with an explanation.

The model is data (`mappings/mpi/model.json`, versioned): for each field, per level, m = P(level |
same person) and u = P(level | different persons). A pair's match weight is the prior's log-odds
plus Σ log2(m/u) over the fields that are present in both records (missing adds 0). Term-frequency
adjustment replaces u of an exact name agreement by that name's frequency, so sharing SMITH is
worth less than sharing a rare surname. Hard-negative guards (twins, Jr/Sr, spouses) look at the
levels, not the weight: however high the weight, such a pair goes to review, never auto-link.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from hub.model import Patient
from hub.mpi.compare import (
    DATA_DIR,
    DIFFERENT,
    LEVELS,
    MISSING,
    Features,
    compare_pair,
    features,
)

MODEL_PATH = DATA_DIR / "model.json"
BANDS = ("link", "review", "new")
_INCOMPATIBLE_GIVEN = frozenset({"jw85", "phonetic", DIFFERENT})
_SAME_FAMILY = frozenset({"exact", "jw92", "partial"})


class FieldScore(NamedTuple):
    """One field's part of a decision (a tuple: built ~10 times per pair on the hot path)."""

    field: str
    level: str
    weight: float
    tf_adjusted: bool = False


@dataclass(frozen=True)
class Explanation:
    """Why a pair got its band. Carries levels and weights only, never patient values, so it
    can be logged and stored with the link decision."""

    weight: float
    probability: float
    band: str
    fields: list[FieldScore]
    guards: list[str] = field(default_factory=list)
    names_swapped: bool = False
    model_version: str = ""
    population_shift: float = 0.0  # bits taken off the prior for the size of the index (`Model.at_population`)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fields"] = [
            {
                "field": f.field,
                "level": f.level,
                "weight": round(f.weight, 3),
                "tf_adjusted": f.tf_adjusted,
            }
            for f in self.fields
        ]
        return data


@dataclass
class TermFrequencies:
    """Relative frequency of each normalised value of a field (SMITH → 0.01).

    Built from the person store (later) or a training set; values never seen get `floor`
    (by default 1 / number of records), i.e. they count as rare.
    """

    tables: dict[str, dict[str, float]]
    floor: float = 1e-5

    @classmethod
    def from_features(
        cls, records: list[Features], fields: tuple[str, ...] = ("family", "given"), min_count: int = 1,
    ) -> TermFrequencies:
        """`min_count` > 1 leaves out values seen fewer times (they get `floor`, i.e. count as rare):
        a model file then carries the common names only, not every surname of a million records."""
        tables: dict[str, dict[str, float]] = {}
        for name in fields:
            counts: dict[str, int] = {}
            total = 0
            for rec in records:
                value = getattr(rec, name)
                if value:
                    counts[value] = counts.get(value, 0) + 1
                    total += 1
            tables[name] = {v: c / total for v, c in counts.items() if c >= min_count} if total else {}
        return cls(tables, floor=1.0 / max(len(records), 1))

    def get(self, field_name: str, value: str) -> float | None:
        table = self.tables.get(field_name)
        if table is None:
            return None
        return table.get(value, self.floor)


Scored = tuple[float, tuple[dict[str, str], bool]]
"""A pair's weight and the comparison behind it (`Model.compared`): `score_features` explains it as is."""


@dataclass
class Model:
    version: str
    prior: float  # P(same person) for a candidate pair found by blocking
    fields: dict[str, dict[str, dict[str, float]]]  # field → level → {"m": …, "u": …}
    link_weight: float  # at or above: auto-link (unless a guard fires)
    review_weight: float  # at or above: review; below: new person
    tf_fields: tuple[str, ...] = ("family", "given")
    tf_min_u: float = 1e-4  # floor on a term-frequency u, bounding the bonus of a rare name
    trained_on: dict[str, Any] = field(default_factory=dict)
    term_frequencies: TermFrequencies | None = None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Correlated fields whose agreements are capped together: {"household": {"fields": [...], "max_weight": 14}}.
    Phone, address and postal code all say "lives here"; summed as if independent they would
    link any two members of a household on 30+ bits."""
    prior_population: int | None = None
    """Records in the index `prior` was estimated for (None: the prior is used whatever the size)."""
    population_shift: float = 0.0
    """Bits taken off the prior's log-odds: set by `at_population`, never stored in the file."""

    def __post_init__(self) -> None:
        self._weights = {
            name: {level: math.log2(p["m"] / p["u"]) for level, p in levels.items()}
            for name, levels in self.fields.items()
        }
        self._prior_weight = math.log2(self.prior / (1.0 - self.prior)) - self.population_shift
        self._at_population: dict[float, Model] = {}
        self._tf_m = {name: self.fields[name]["exact"]["m"] for name in self.tf_fields}
        self._group_of = {member: group for group, spec in self.groups.items() for member in spec["fields"]}

    def at_population(self, records: int) -> Model:
        """This model for an index holding `records` source records.

        The prior is P(same person) for a pair that blocking finds. A record's true matches do not grow
        with the index, its namesakes do: every birth date and name key names a number of strangers
        proportional to the records held, so the prior odds fall by log2(records / prior_population) bits.
        A pair that links among 5,000 persons on given name, surname and birth date alone is one of
        several people among 400,000 (docs/benchmarks.md, eighth to tenth sessions). Quarter-bit steps,
        never a rise above the trained prior: a small index keeps the model as trained."""
        if not self.prior_population or records <= self.prior_population:
            return self
        shift = math.floor(4 * math.log2(records / self.prior_population)) / 4
        if shift <= 0:
            return self
        model = self._at_population.get(shift)
        if model is None:
            model = self._at_population[shift] = replace(self, population_shift=shift)
        return model

    # --- persistence ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        for name, levels in data["fields"].items():
            unknown = set(levels) - set(LEVELS.get(name, ()))
            if name not in LEVELS or unknown:
                raise ValueError(f"model field {name!r} has unknown levels {sorted(unknown)}")
        tf = data.get("term_frequencies")
        return cls(
            version=data["version"],
            prior=data["prior"],
            fields=data["fields"],
            link_weight=data["thresholds"]["link_weight"],
            review_weight=data["thresholds"]["review_weight"],
            tf_fields=tuple(data.get("tf_fields", ("family", "given"))),
            tf_min_u=data.get("tf_min_u", 1e-4),
            trained_on=data.get("trained_on", {}),
            term_frequencies=TermFrequencies(tf["tables"], tf["floor"]) if tf else None,
            groups=data.get("groups", {}),
            prior_population=data.get("prior_population"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The model file's content, a copy: changing it leaves this model (shared by every decision) as it was."""
        data: dict[str, Any] = {
            "format": "hub-mpi-fellegi-sunter/1",
            "version": self.version,
            "trained_on": self.trained_on,
            "prior": self.prior,
            "prior_population": self.prior_population,
            "thresholds": {
                "link_weight": self.link_weight,
                "review_weight": self.review_weight,
            },
            "tf_fields": list(self.tf_fields),
            "tf_min_u": self.tf_min_u,
            "groups": self.groups,
            "fields": self.fields,
        }
        if self.term_frequencies is not None:
            data["term_frequencies"] = {
                "tables": self.term_frequencies.tables,
                "floor": self.term_frequencies.floor,
            }
        return copy.deepcopy(data)

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n",
            encoding="utf-8",
        )

    # --- scoring ----------------------------------------------------------------------------

    def level_weight(self, field_name: str, level: str) -> float:
        if level == MISSING:
            return 0.0
        return self._weights[field_name].get(level, 0.0)

    def probability(self, weight: float) -> float:
        odds = 2.0**weight
        return odds / (1.0 + odds)

    def _total(
        self, a: Features, levels: dict[str, str], names_swapped: bool, tf: TermFrequencies | None,
        scores: list[FieldScore] | None = None,
    ) -> float:
        """The pair's match weight; with `scores`, each field's part is appended to it. One code path
        for ranking every candidate pair (the hot path: ~30 pairs per incoming record, no `scores`) and
        for `score_features`, so that both give the very same float."""
        total = self._prior_weight
        weights, group_of, tf_m = self._weights, self._group_of, self._tf_m
        use_tf = tf is not None and not names_swapped
        positive: dict[str, float] | None = None  # made on the first positive grouped weight
        for name, level in levels.items():
            if level == MISSING:
                if scores is not None:
                    scores.append(FieldScore(name, level, 0.0))
                continue
            weight = None
            if use_tf and level == "exact" and name in tf_m:
                freq = tf.get(name, getattr(a, name))  # type: ignore[union-attr]
                if freq is not None:
                    weight = math.log2(tf_m[name] / max(freq, self.tf_min_u))
            adjusted = weight is not None
            if weight is None:
                weight = weights[name].get(level, 0.0)
            total += weight
            if weight > 0 and name in group_of:
                if positive is None:
                    positive = dict.fromkeys(self.groups, 0.0)
                positive[group_of[name]] += weight
            if scores is not None:
                scores.append(FieldScore(name, level, weight, adjusted))
        for group, summed in (positive or {}).items():
            cap = self.groups[group]["max_weight"]
            if summed > cap:
                total += cap - summed
                if scores is not None:
                    scores.append(FieldScore(f"{group}_cap", "capped", cap - summed))
        return total

    def weight(self, a: Features, b: Features, tf: TermFrequencies | None = None) -> float:
        """The pair's match weight alone (no explanation, no guards): what `score_features` would give
        as `.weight`. The online decision ranks a person's records by it and explains only the best."""
        return self.compared(a, b, tf)[0]

    def compared(
        self, a: Features, b: Features, tf: TermFrequencies | None = None,
    ) -> Scored:
        """(weight, the comparison behind it): `score_features(a, b, tf, comparison)` explains it without
        comparing the pair again."""
        comparison = compare_pair(a, b)
        return self._total(a, comparison[0], comparison[1], tf or self.term_frequencies), comparison

    def score_features(
        self, a: Features, b: Features, tf: TermFrequencies | None = None,
        comparison: tuple[dict[str, str], bool] | None = None,
    ) -> Explanation:
        tf = tf or self.term_frequencies
        levels, names_swapped = comparison or compare_pair(a, b)
        scores: list[FieldScore] = []
        total = self._total(a, levels, names_swapped, tf, scores)
        guards = hard_negative_guards(a, b, levels)
        if total >= self.link_weight:
            band = "review" if guards else "link"
        elif total >= self.review_weight and not RELATION_GUARDS.intersection(guards):
            band = "review"
        else:
            # below auto-link, a pair that looks like two relatives (twin, Jr/Sr, spouse, sibling)
            # has its weight explained by the shared household: a new person, not a review task
            band = "new"
        return Explanation(
            total,
            self.probability(total),
            band,
            scores,
            guards,
            names_swapped,
            self.version,
            self.population_shift,
        )

    def score(
        self,
        a: Patient | Features,
        b: Patient | Features,
        tf: TermFrequencies | None = None,
    ) -> Explanation:
        """Score a pair of records (normalise Patients first; pass Features to reuse the work)."""
        fa = a if isinstance(a, Features) else features(a)
        fb = b if isinstance(b, Features) else features(b)
        return self.score_features(fa, fb, tf)


RELATION_GUARDS = frozenset({"twin", "generation", "spouse", "given_mismatch"})
_DOB_CLOSE = frozenset({"exact", "transposed", "one_off", "year_off"})
_IDENTITY = {
    "birth_date": frozenset({"exact", "transposed", "one_off", "year_off"}),
    "national_id": frozenset({"exact", "typo", "transposed"}),
    "email": frozenset({"exact"}),
}


def shares_personal(levels: dict[str, str]) -> bool:
    """The national id or the e-mail agrees: what twins, namesakes and relatives do not share."""
    return levels["national_id"] in _IDENTITY["national_id"] or levels["email"] in _IDENTITY["email"]


_CONFIRMING = {
    "national_id": _IDENTITY["national_id"],
    "email": _IDENTITY["email"],
    "phone": frozenset({"exact"}),
    "address": frozenset({"exact", "fuzzy"}),
    "postal_code": frozenset({"exact"}),
}
"""What confirms a record whose surname differs: an identifier, or the same way to reach or find the person."""


def hard_negative_guards(a: Features, b: Features, levels: dict[str, str]) -> list[str]:
    """Reasons this pair must not be auto-linked, whatever its weight.

    - twin: given names that are neither equal, typo-close, nicknames nor initials of each other
      with (nearly) the same birth date, or different multiple-birth orders; or typo-close or nickname
      given names (TERESA and THERESA, ELIZABETH and LISA) with the same birth date and no national id
      or e-mail agreeing; or, when either record says it is one of a multiple birth, any given name but
      the same one (nicknames included) with no national id or e-mail agreeing;
    - generation: different Jr/Sr/II/III, or birth years 20 or more apart (parent and child);
    - spouse: same surname and address or phone, different given name and birth date;
    - given_mismatch: any other pair whose given names clearly differ (siblings, relatives);
    - given_missing: one record has no given name (or a placeholder: BABY GIRL): newborn twins
      share everything else;
    - id_conflict: both carry a national id and they differ beyond a one-digit typo (twins
      with near-identical names, TERESA and THERESA, differ here);
    - no_identity: nothing personal agrees (full birth date, national id, e-mail; a partial birth
      date only together with the same phone or address): the rest (names, address, phone) is
      shared by a Jr and a Sr whose birth date one feed left out, and MARY JOHNSON born 1991 is
      several people in one city.
    - surname_unconfirmed: the surnames differ and nothing but given name, birth date and sex agrees
      (no national id, e-mail, phone, address or postal code): a married name, or another FRANK born
      the same day — among a million persons there are dozens of each birth date, and a common given
      name makes the namesake likelier than the marriage (1,000,000 synthetic records: 26 % of such
      auto-links were two people, half of all false auto-links; docs/benchmarks.md, eighth session).
    """
    guards = []
    given_incompatible = levels["given"] in _INCOMPATIBLE_GIVEN
    if (
        given_incompatible
        and levels["birth_date"] in _DOB_CLOSE
        or a.multiple_birth
        and b.multiple_birth
        and a.multiple_birth != b.multiple_birth
    ):
        guards.append("twin")
    elif levels["given"] in ("jw92", "nickname") and levels["birth_date"] == "exact" and not shares_personal(levels):
        # TERESA and THERESA, or ELIZABETH and LISA, born the same day: a typo, a nickname or twins,
        # and nothing personal (national id, e-mail) to tell which
        guards.append("twin")
    elif (
        (a.multiple_birth or b.multiple_birth)
        and levels["given"] != "exact"
        and levels["birth_date"] in _DOB_CLOSE
        and not shares_personal(levels)
    ):
        # a record that says it is one of a multiple birth: its twin shares everything but the given
        # name, so a nickname (LAWRENCE and LARRY) or a typo-close one is the twin as likely as a variant
        guards.append("twin")
    year_a, year_b = a.birth_year, b.birth_year
    if (a.generation and b.generation and a.generation != b.generation) or (
        year_a is not None and year_b is not None and abs(year_a - year_b) >= 20
    ):
        guards.append("generation")
    if (
        given_incompatible
        and levels["birth_date"] == DIFFERENT
        and levels["family"] in _SAME_FAMILY
        and (levels["address"] in ("exact", "fuzzy") or levels["phone"] == "exact")
    ):
        guards.append("spouse")
    if given_incompatible and not guards:
        guards.append("given_mismatch")
    if levels["given"] == MISSING:
        guards.append("given_missing")
    if levels["national_id"] == DIFFERENT:
        guards.append("id_conflict")
    partial_at_home = levels["birth_date"] == "partial" and (
        levels["phone"] == "exact" or levels["address"] in ("exact", "fuzzy")
    )
    if not partial_at_home and not any(levels[f] in ok for f, ok in _IDENTITY.items()):
        guards.append("no_identity")
    if levels["family"] == DIFFERENT and not any(levels[f] in ok for f, ok in _CONFIRMING.items()):
        guards.append("surname_unconfirmed")
    return guards


_DEFAULT: Model | None = None


def load_model(path: Path | None = None) -> Model:
    """The model file (the shipped default when no path is given; cached)."""
    global _DEFAULT
    if path is None:
        if _DEFAULT is None:
            _DEFAULT = Model.from_dict(json.loads(MODEL_PATH.read_text(encoding="utf-8")))
        return _DEFAULT
    return Model.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
