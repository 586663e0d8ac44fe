"""`Patient.link` from the master patient index, given to source Patient resources wherever the API
returns them: reads, searchsets (GET and POST `_search`, matches and `_include`d patients) and the
reads and searches inside batch and transaction Bundles.

The link is the index's, never stored with the record: a source record `refer`s to its person; a record
merged away by an A40 is `replaced-by` the surviving record. (A golden record's `seealso` links to its
sources are built with the golden record, in `mpi_ops`.) One query for every Patient of a response.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from hub.store.uow import UnitOfWork


def add_links(engine: Engine, resources: list[dict[str, Any]]) -> None:
    """Give the source Patient resources among `resources` their `link` (other resources are left alone)."""
    patients = [r for r in resources if r.get("resourceType") == "Patient" and r.get("id")]
    if not patients:
        return
    with UnitOfWork(engine) as uow:
        found = uow.mpi.links([r["id"] for r in patients])
    for resource in patients:
        link = found.get(resource["id"])
        if link is None:
            continue
        if link.replaced_by:
            extra = {"other": {"reference": f"Patient/{link.replaced_by}"}, "type": "replaced-by"}
        else:
            extra = {"other": {"reference": f"Patient/{link.person_id}"}, "type": "refer"}
        resource["link"] = [*[k for k in resource.get("link", []) if k != extra], extra]


def add_bundle_links(engine: Engine, bundle: dict[str, Any]) -> None:
    """`add_links` for every entry of a Bundle, whatever its search mode."""
    add_links(engine, [e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)])
