"""Read and check a routes file: YAML → destinations (`hub.outbound.Destination`) and routes.

Every problem is collected (not just the first) and carries the file and the line of the node it
is about: PyYAML's composer keeps a start mark on every node, and the loader remembers the mark
of every key and value by its path. Messages name keys, never values: a header value may be a
secret, a regular expression may hold an identifier.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.outbound import Destination, RetryPolicy
from hub.routing.conditions import compile_when
from hub.routing.table import Profile, Route, RouteTable

PathKey = tuple[str | int, ...]

HL7_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
"""Versions the built-in HL7 v2 profiles write (ORM, DFT and the ADT structures exist from 2.3)."""

DEFAULT_FORMAT = {"mllp": "hl7v2", "http": "fhir", "file": "hl7v2"}
FORMATS_BY_TRANSPORT = {"mllp": {"hl7v2"}, "http": {"hl7v2", "fhir", "json"}, "file": {"hl7v2", "fhir", "csv", "json"}}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class RoutesProblem:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


class RoutesError(ValueError):
    """A routes file that cannot be used; `problems` lists every one, each with file and line."""

    def __init__(self, problems: list[RoutesProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line))
        super().__init__("\n".join(str(p) for p in self.problems))


# --- YAML with marks ------------------------------------------------------------------------


class _Marked:
    """Plain Python data from a composed YAML node, with the line of every path (1-based)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self.key_lines: dict[PathKey, int] = {}
        self.problems: list[RoutesProblem] = []
        self._constructor = yaml.SafeLoader("")

    def convert(self, node: yaml.Node, path: PathKey = ()) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            merged: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` — explicit keys win
                    sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                    values = [self.convert(source, path) for source in sources]
                    if not all(isinstance(v, dict) for v in values):
                        self.problems.append(RoutesProblem(self.file, key_node.start_mark.line + 1, "`<<` merges mappings only"))
                        continue
                    for value in values:
                        merged.update({k: v for k, v in value.items() if k not in merged})
                    continue
                key = self._constructor.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is None or isinstance(key, (list, dict)):
                    self.problems.append(RoutesProblem(self.file, line, "keys must be plain names"))
                    continue
                if key in out:
                    self.problems.append(RoutesProblem(self.file, line, f"`{key}` is given twice"))
                    continue
                self.key_lines[(*path, key)] = line
                out[key] = self.convert(value_node, (*path, key))
            self.lines[path] = node.start_mark.line + 1  # a merged anchor was converted at this path too
            return {**merged, **out}
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, n)) for n, item in enumerate(node.value)]
        return self._constructor.construct_object(node)

    def line(self, path: PathKey) -> int:
        """The line of the deepest known node on the path (a missing key points at its parent)."""
        while path:
            if path in self.key_lines and path not in self.lines:
                return self.key_lines[path]
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def key_line(self, path: PathKey) -> int:
        return self.key_lines.get(path) or self.line(path)

    def problem(self, path: PathKey, text: str, *, at_key: bool = False) -> None:
        self.problems.append(RoutesProblem(self.file, self.key_line(path) if at_key else self.line(path), text))


def _compose(text: str, file: str) -> yaml.Node | RoutesProblem | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:  # its str() quotes the offending line: build our own
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return RoutesProblem(file, line, f"not valid YAML: {exc.problem or exc.context}")
    except yaml.YAMLError:
        return RoutesProblem(file, 1, "not valid YAML")


# --- schema ---------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class _RetrySpec(_Spec):
    max_attempts: int = Field(10, ge=1, le=10_000)
    initial_delay: float = Field(1.0, ge=0)
    max_delay: float = Field(300.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)
    on_error: Literal["retry", "dead"] = "retry"


class _DestinationSpec(_Spec):
    transport: Literal["mllp", "http", "file"]
    profile: str
    format: Literal["hl7v2", "fhir", "csv", "json"] | None = None
    version: str = "2.5.1"
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    tls_ca: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    directory: str | None = None
    connect_timeout: float = Field(5.0, gt=0)
    timeout: float = Field(30.0, gt=0)
    retry: _RetrySpec = Field(default_factory=_RetrySpec)
    ordering: Literal["per_patient", "strict"] = "per_patient"
    connections: int = Field(4, ge=1, le=256)
    on_poison: Literal["block", "skip"] = "skip"
    options: dict[str, str] = Field(default_factory=dict)


class _RouteSpec(_Spec):
    name: str = Field(min_length=1)
    when: Any = None
    to: str | list[str]
    profile: str | None = None
    mapping: str | None = None


def _pydantic_problems(marked: _Marked, base: PathKey, exc: ValidationError) -> None:
    """Pydantic's messages without its `input` (a value may be a secret)."""
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("str", "list[str]")))
        path = (*base, *loc)
        name = ".".join(str(p) for p in loc) or "entry"
        if error["type"] == "extra_forbidden":
            marked.problem(path, f"unknown key `{loc[-1]}`", at_key=True)
        elif error["type"] == "missing":
            marked.problem(path[:-1], f"`{name}` is required")
        else:
            marked.problem(path, f"`{name}`: {error['msg']}")


# --- destinations ---------------------------------------------------------------------------


def _destination(marked: _Marked, name: str, raw: Any, profiles: Mapping[str, Profile]) -> Destination | None:
    path: PathKey = ("destinations", name)
    if not isinstance(raw, dict):
        marked.problem(path, f"destination `{name}` must be a mapping of settings")
        return None
    before = len(marked.problems)
    try:
        spec = _DestinationSpec.model_validate(raw)
    except ValidationError as exc:
        _pydantic_problems(marked, path, exc)
        _check_partial(marked, path, raw, profiles)
        return None
    fmt = spec.format or DEFAULT_FORMAT[spec.transport]
    _check_transport(marked, path, spec, fmt)
    _check_profile(marked, path, spec.profile, fmt, spec.options, profiles)
    headers = _expand_headers(marked, path, spec.headers)
    if len(marked.problems) > before:
        return None
    destination = Destination(
        name=name, transport=spec.transport, profile=spec.profile, format=fmt,  # type: ignore[arg-type]
        version=spec.version, host=spec.host, port=spec.port, tls=spec.tls, tls_ca=spec.tls_ca, url=spec.url,
        headers=headers, directory=spec.directory, connect_timeout=spec.connect_timeout, timeout=spec.timeout,
        retry=RetryPolicy(**spec.retry.model_dump()), ordering=spec.ordering, connections=spec.connections,
        on_poison=spec.on_poison, options=dict(spec.options),
    )
    check = profiles[spec.profile].check
    for text in check(destination) if check else []:
        marked.problem(path, f"destination `{name}`: {text}")
    return None if len(marked.problems) > before else destination


def _check_partial(marked: _Marked, path: PathKey, raw: dict[str, Any], profiles: Mapping[str, Profile]) -> None:
    """The checks that do not need a valid whole, so one bad setting does not hide the others."""
    if isinstance(raw.get("profile"), str) and raw["profile"] not in profiles:
        marked.problem((*path, "profile"), f"unknown profile `{raw['profile']}` (built-in: {', '.join(sorted(profiles))})")
    headers = raw.get("headers")
    if isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        _expand_headers(marked, path, headers)


def _check_transport(marked: _Marked, path: PathKey, spec: _DestinationSpec, fmt: str) -> None:
    needs = {"mllp": ("host", "port"), "http": ("url",), "file": ("directory",)}[spec.transport]
    for key in needs:
        if getattr(spec, key) in (None, ""):
            marked.problem(path, f"`{key}` is required for transport {spec.transport}")
    if spec.transport == "http" and spec.url and not re.match(r"https?://[^/\s]+", spec.url):
        marked.problem((*path, "url"), "`url` must be an http:// or https:// URL")
    if fmt not in FORMATS_BY_TRANSPORT[spec.transport]:
        marked.problem((*path, "format"), f"format {fmt} cannot go over transport {spec.transport}")
    if fmt == "hl7v2" and spec.version not in HL7_VERSIONS:
        marked.problem((*path, "version"), f"`version` must be one of {', '.join(HL7_VERSIONS)}")
    if spec.tls_ca and not spec.tls and not (spec.url or "").startswith("https://"):
        marked.problem((*path, "tls_ca"), "`tls_ca` needs `tls: true` (or an https:// URL)")
    if spec.headers and spec.transport != "http":
        marked.problem((*path, "headers"), "`headers` only apply to transport http")


def _check_profile(
    marked: _Marked, path: PathKey, name: str, fmt: str, options: dict[str, str], profiles: Mapping[str, Profile]
) -> None:
    profile = profiles.get(name)
    if profile is None:
        marked.problem((*path, "profile"), f"unknown profile `{name}` (built-in: {', '.join(sorted(profiles))})")
        return
    if fmt not in profile.formats:
        marked.problem((*path, "profile"), f"profile {name} does not build {fmt} (it builds {', '.join(profile.formats)})")
    for key, value in options.items():
        if key not in profile.options:
            known = ", ".join(sorted(profile.options)) or "none"
            marked.problem((*path, "options", key), f"profile {name} has no option `{key}` (options: {known})", at_key=True)
        elif (allowed := profile.options[key]) is not None and value not in allowed:
            marked.problem((*path, "options", key), f"option `{key}` must be one of {', '.join(sorted(allowed))}")


def _expand_headers(marked: _Marked, path: PathKey, headers: dict[str, str]) -> dict[str, str]:
    """`${NAME}` → the environment variable's value, so secrets stay out of the repository;
    `${NAME:-default}` when it may be unset."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        where = (*path, "headers", key)
        if not _HEADER_NAME.fullmatch(key):
            marked.problem(where, "header names are HTTP tokens (letters, digits, -)", at_key=True)
            continue
        missing = [m.group(1) for m in _ENV.finditer(value) if m.group(1) not in os.environ and m.group(2) is None]
        for variable in missing:
            marked.problem(where, f"header `{key}` needs environment variable {variable}, which is not set")
        expanded = _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
        if "\r" in expanded or "\n" in expanded:
            marked.problem(where, f"header `{key}` contains a line break")
        out[key] = expanded
    return out


# --- routes ---------------------------------------------------------------------------------


def _route(
    marked: _Marked, n: int, raw: Any, destinations: Mapping[str, Destination | None], profiles: Mapping[str, Profile]
) -> Route | None:
    path: PathKey = ("routes", n)
    if not isinstance(raw, dict):
        marked.problem(path, "a route is a mapping with name, when and to")
        return None
    before = len(marked.problems)
    try:
        spec = _RouteSpec.model_validate(raw)
    except ValidationError as exc:
        _pydantic_problems(marked, path, exc)
        return None
    if spec.mapping is not None:
        marked.problem((*path, "mapping"), "outbound mapping files are not supported yet: name a built-in profile")
    conditions, errors = compile_when(spec.when)
    for error in errors:
        marked.problem((*path, "when", *error.path), str(error))
    targets = (spec.to,) if isinstance(spec.to, str) else tuple(spec.to)
    if not targets:
        marked.problem((*path, "to"), "`to` names at least one destination")
    for i, target in enumerate(targets):
        where = (*path, "to") if isinstance(spec.to, str) else (*path, "to", i)
        if target not in destinations:
            marked.problem(where, f"route {spec.name} sends to unknown destination `{target}`")
        elif spec.profile and (dest := destinations[target]) is not None:
            _check_profile(marked, (*path,), spec.profile, dest.format, dest.options, profiles)
    if len(marked.problems) > before:
        return None
    reads_open_orders = isinstance(spec.when, dict) and "has_open_orders" in spec.when
    return Route(spec.name, targets, tuple(conditions), spec.profile, marked.line(path), reads_open_orders)


# --- the file -------------------------------------------------------------------------------


def parse_routes(text: str, file: str = "<routes>", profiles: Mapping[str, Profile] | None = None) -> RouteTable:
    """Routes from YAML text; raises RoutesError listing every problem (file:line each)."""
    profiles = _default_profiles() if profiles is None else profiles
    node = _compose(text, file)
    if isinstance(node, RoutesProblem):
        raise RoutesError([node])
    marked = _Marked(file)
    data = marked.convert(node) if node is not None else None
    if not isinstance(data, dict):
        raise RoutesError([*marked.problems, RoutesProblem(file, 1, "a routes file is a mapping with `destinations` and `routes`")])
    for key in data:  # `x-…` keys hold shared settings for YAML anchors, as in docker-compose files
        if key not in ("destinations", "routes") and not (isinstance(key, str) and key.startswith("x-")):
            marked.problem((key,), f"unknown key `{key}` (a routes file has destinations and routes)", at_key=True)
    raw_destinations = data.get("destinations")
    if not isinstance(raw_destinations, dict) or not raw_destinations:
        marked.problem(("destinations",), "`destinations` must map at least one name to its settings")
        raw_destinations = {}
    destinations = {str(name): _destination(marked, str(name), raw, profiles) for name, raw in raw_destinations.items()}
    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list):
        marked.problem(("routes",), "`routes` must be a list of routes")
        raw_routes = []
    routes = [_route(marked, n, raw, destinations, profiles) for n, raw in enumerate(raw_routes)]
    _check_unique_names(marked, raw_routes)
    if marked.problems:
        raise RoutesError(marked.problems)
    return RouteTable(
        {k: d for k, d in destinations.items() if d is not None}, [r for r in routes if r is not None], profiles
    )


def _check_unique_names(marked: _Marked, raw_routes: list[Any]) -> None:
    seen: set[str] = set()
    for n, raw in enumerate(raw_routes):
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name in seen:
            marked.problem(("routes", n, "name"), f"route name `{name}` is used twice")
        if isinstance(name, str):
            seen.add(name)


def load_routes(path: Path | str, profiles: Mapping[str, Profile] | None = None) -> RouteTable:
    """Read a routes file (default `HUB_ROUTES`); raises RoutesError with every problem, file:line each.

    `profiles` defaults to the built-in profiles (adapters/outbound): that import is the one place
    the core reaches for the edge, so callers (serve, `hub routes check`) need not wire it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or type(exc).__name__)
        raise RoutesError([RoutesProblem(str(path), 1, f"cannot read the routes file: {reason}")]) from None
    table = parse_routes(text, str(path), profiles)
    table.source = path
    return table


def _default_profiles() -> Mapping[str, Profile]:
    from adapters.outbound.profiles import PROFILES

    return PROFILES
