"""Routes as code: which processed events go to which destinations, built by which profile.

`load_routes(path)` reads and checks a routes file (`HUB_ROUTES`, default `mappings/routes.yaml`)
and returns a `RouteTable`; `RouteTable.plan(event)` gives the `Outbound` messages for one
processed event. No I/O here besides reading the routes file.
"""

from hub.routing.conditions import ConditionError
from hub.routing.loader import RoutesError, RoutesProblem, load_routes, parse_routes
from hub.routing.table import Built, Profile, Route, RouteTable, control_id

__all__ = [
    "Built", "ConditionError", "Profile", "Route", "RouteTable", "RoutesError", "RoutesProblem",
    "control_id", "load_routes", "parse_routes",
]
