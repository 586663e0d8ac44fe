"""The loaded routes: which destinations an event goes to, and the messages built for them now.

Profiles (HL7 v2, FHIR, CSV builders) live in `adapters/outbound/`; the core only knows them as
`Profile` values handed in at load time, so nothing here knows ER7, FHIR JSON or CSV.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hub.outbound import Destination, Outbound, RoutedEvent
from hub.routing.conditions import Predicate


@dataclass(frozen=True, slots=True)
class Built:
    """What a profile builds for one event and one destination (the route table adds the rest)."""

    payload: bytes
    content_type: str
    summary: str
    """What it is (`ADT^A01`, `Bundle(transaction)`, `csv(2 rows)`): never patient data."""


Builder = Callable[[RoutedEvent, Destination, str], "Built | None"]
"""(event, destination, control id) → the message, or None when the profile has nothing to send
for this kind of event (e.g. the lab profile and a DFT)."""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    formats: Mapping[str, Builder]
    """Format (hl7v2, fhir, csv) → builder."""
    options: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    """Destination options the profile reads: name → allowed values (None: any text)."""
    check: Callable[[Destination], list[str]] | None = None
    """Further checks of a destination's settings (e.g. a message type its HL7 version lacks):
    the problems, as text naming settings only."""


def control_id(message_id: int, event_index: int, destination: str) -> str:
    """A stable id for one event's message to one destination: MSH-10, X-Request-Id, the FHIR
    bundle's identifier. The same event to the same destination always gets the same id (retries,
    a rebuild for a replay), so a receiver can drop duplicates. At most 20 characters (MSH-10 is
    ST(20) in v2.5.1) for message ids below 36^10 and event indexes below 36^3:
    `H<message id>.<event index>.<4 chars>`, base 36,
    the last four a hash of the destination name (two receivers rarely share an id space anyway)."""
    digest = hashlib.sha1(destination.encode("utf-8")).digest()
    tag = base64.b32encode(digest).decode("ascii")[:4]
    return f"H{_base36(message_id)}.{_base36(event_index)}.{tag}"


def _base36(n: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if n < 0:
        raise ValueError("ids are not negative")
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    to: tuple[str, ...]
    conditions: tuple[Predicate, ...] = ()
    profile: str | None = None
    """Overrides the destinations' own profile for this route's messages."""
    line: int = 0
    reads_open_orders: bool = False
    """Its conditions read `RoutedEvent.has_open_orders` (a query per batch: asked for only then)."""

    def matches(self, event: RoutedEvent) -> bool:
        return all(condition(event) for condition in self.conditions)


@dataclass(slots=True)
class RouteTable:
    destinations: dict[str, Destination]
    routes: list[Route]
    profiles: Mapping[str, Profile]
    source: Path | None = None

    def reads_open_orders(self) -> bool:
        return any(route.reads_open_orders for route in self.routes)

    def wants(self, event: RoutedEvent) -> bool:
        """Some route takes the event. Conditions read the event, never its person, so processing looks the
        person up only for these. A condition that fails says yes: planning turns the failure into a dead row."""
        try:
            return any(route.matches(event) for route in self.routes)
        except Exception:  # noqa: BLE001
            return True

    def plan(self, event: RoutedEvent) -> list[Outbound]:
        """The outbound messages for one processed event, built now from this event's data.

        Routes are tried in file order; a destination fed by several matching routes gets the
        event once per profile (the first matching route names it). A profile that fails gives an
        `Outbound` with `error` (written dead) instead of raising: the other routes still go."""
        planned: list[Outbound] = []
        seen: set[tuple[str, str]] = set()
        for route in self.routes:
            if not route.matches(event):
                continue
            for name in route.to:
                destination = self.destinations[name]
                profile = route.profile or destination.profile
                if (name, profile) in seen:
                    continue
                seen.add((name, profile))
                outbound = self._build(event, route, destination, profile)
                if outbound is not None:
                    planned.append(outbound)
        return planned

    def build_notice(self, event: RoutedEvent, destination: str, route: str, key: str) -> Outbound | None:
        """A message the hub itself originates (an MPI link change, not an inbound message), built by
        the destination's own profile under a caller-made idempotency key (`key`: ≤ 20 characters,
        never one `control_id` could give)."""
        target = self.destinations[destination]
        return self._build(event, Route(route, (destination,)), target, target.profile, key)

    def _build(
        self, event: RoutedEvent, route: Route, destination: Destination, profile: str, key: str | None = None
    ) -> Outbound | None:
        scope = destination.name if profile == destination.profile else f"{destination.name}/{profile}"
        key = key or control_id(event.message_id, event.event_index, scope)
        builder = self.profiles[profile].formats[destination.format]
        ordering = destination.name if destination.ordering == "strict" else event.patient_key
        try:
            built = builder(event, destination, key)
        except Exception as exc:  # noqa: BLE001 — one route's failure must not undo the processing
            # Only names and the exception class: its text may quote the data it failed on.
            error = f"{type(exc).__name__} in profile {profile}, route {route.name} → {destination.name}"
            return Outbound(
                destination=destination.name, route=route.name, ordering_key=ordering, idempotency_key=key,
                content_type="", payload=b"", summary="(not built)", error=error,
                blocking=destination.on_poison == "block",
            )
        if built is None:
            return None
        return Outbound(
            destination=destination.name,
            route=route.name,
            ordering_key=ordering,
            idempotency_key=key,
            content_type=built.content_type,
            payload=built.payload,
            summary=built.summary,
        )

    def summary(self) -> str:
        return f"{len(self.destinations)} destinations, {len(self.routes)} routes"
