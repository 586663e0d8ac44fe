"""The online decision: one incoming record against the candidate persons blocking found.

A person is the set of its source records; the record is compared with each of them and the
person's score is its best pair (the record that looks most like the incoming one). When that pair is
held back by a guard, another of the person's records that shares the incoming record's national id or
e-mail and links without a guard speaks for the person (`_confirmed`): WILL with his national id
at a new address is WILLIAM whose other record had that id, even though his record at the new address
has none to tell him from a twin. Two persons
both above the link threshold is itself a reason for review: auto-linking would pick one of two
plausible people by a margin the model cannot vouch for (or the two are one person, a merge that
a human should confirm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hub.mpi.compare import Features
from hub.mpi.model import Explanation, Model, Scored, TermFrequencies, shares_personal


@dataclass(frozen=True)
class Decision:
    band: str  # link | review | new
    person_id: str | None  # the person to link to (link) or the best candidate (review)
    explanation: Explanation | None  # the best pair's explanation
    others: list[tuple[str, Explanation]] = field(default_factory=list)  # other persons in link/review bands
    reason: str = ""


def decide(
    model: Model,
    record: Features,
    candidates: Mapping[str, Sequence[Features]],
    tf: TermFrequencies | None = None,
) -> Decision:
    """Band and person for `record`, given each candidate person's records."""
    # Rank by weight alone, then explain (levels, guards, band) only the pairs the decision reads:
    # the same best pair per person (the first of equal weights) and the same order as explaining
    # every pair, at a fraction of the cost. Below the review threshold a pair's band is "new"
    # whatever its guards, so only the overall best of those is explained.
    ranked: list[tuple[float, str, int, list[Scored]]] = []
    for person_id, records in candidates.items():
        if not records:
            continue
        scored = [model.compared(record, other, tf) for other in records]
        weights = [w for w, _ in scored]
        at = weights.index(max(weights))
        ranked.append((weights[at], person_id, at, scored))
    ranked.sort(key=lambda wpf: -wpf[0])
    best: list[tuple[str, Explanation]] = []
    floor = min(model.review_weight, model.link_weight)
    for weight, person_id, at, scored in ranked:
        if weight < floor and best:
            break
        records = candidates[person_id]
        explanation = model.score_features(record, records[at], tf, scored[at][1])
        if explanation.guards and explanation.weight >= model.link_weight:
            explanation = _confirmed(model, record, records, scored, tf) or explanation
        best.append((person_id, explanation))
    plausible = [(p, e) for p, e in best if e.band != "new"]
    if not plausible:
        return Decision(
            "new",
            None,
            best[0][1] if best else None,
            reason="no candidate above the review threshold",
        )
    top_id, top = plausible[0]
    rest = plausible[1:]
    if top.band == "link" and any(e.weight >= model.link_weight for _, e in rest):
        return Decision(
            "review",
            top_id,
            top,
            rest,
            reason="several persons above the link threshold",
        )
    return Decision(top.band, top_id, top, rest, reason=",".join(top.guards))


def _confirmed(
    model: Model, record: Features, records: Sequence[Features], scored: Sequence[Scored], tf: TermFrequencies | None,
) -> Explanation | None:
    """The person's best pair that links without a guard and shares the national id or e-mail (see the
    module's docstring), if any: only pairs above the link threshold that share one are explained."""
    confirming = [
        model.score_features(record, other, tf, comparison)
        for other, (weight, comparison) in zip(records, scored, strict=True)
        if weight >= model.link_weight and shares_personal(comparison[0])
    ]
    return max((e for e in confirming if e.band == "link"), key=lambda e: e.weight, default=None)


def format_explanation(e: Explanation) -> str:
    """Plain-text table for `hub mpi explain` (levels and weights only, no patient values)."""
    lines = [f"model {e.model_version}: weight {e.weight:.2f} bits, probability {e.probability:.6f}, band {e.band}"]
    if e.population_shift:
        lines.append(f"prior lowered by {e.population_shift:g} bits for the size of the index")
    if e.names_swapped:
        lines.append("given and family names compared swapped")
    lines.extend(
        f"  {f.field:<14} {f.level:<11} {f.weight:+7.2f}{'  (term frequency)' if f.tf_adjusted else ''}"
        for f in e.fields
    )
    if e.guards:
        lines.append("guards (never auto-link): " + ", ".join(e.guards))
    return "\n".join(lines)
