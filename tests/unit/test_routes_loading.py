"""Loading and checking routes files: the issue's minimal file as written, and every kind of
problem reported with its file and line, without echoing values (a header may hold a secret).

No I/O besides temporary routes files. Hosts, URLs and secrets are invented.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.cli import main
from hub.outbound import Destination, RetryPolicy
from hub.routing import RoutesError, load_routes, parse_routes

REPO = Path(__file__).resolve().parents[2]

# The minimal file, verbatim: it must work exactly as written.
MINIMAL = """\
destinations:
  ehr: {transport: mllp, host: 127.0.0.1, port: 6661, profile: ehr, version: "2.5.1"}
  lab: {transport: mllp, host: 127.0.0.1, port: 6662, profile: lab, version: "2.5.1"}
  billing: {transport: http, url: "http://127.0.0.1:6663/fhir", profile: billing, format: fhir}
routes:
  - {name: adt-to-ehr, when: {message_type: ADT}, to: [ehr]}
  - {name: results-to-ehr, when: {message_type: ORU}, to: [ehr]}
  - {name: orders-to-lab, when: {message_type: [ORM, OML]}, to: [lab]}
  - {name: encounters-to-billing, when: {message_type: ADT, trigger: [A03]}, to: [billing]}
  - {name: charges-to-billing, when: {message_type: DFT}, to: [billing]}
"""


def problems(text: str) -> list[tuple[int, str]]:
    """(line, text) of every problem in a routes file given as (dedented) YAML text."""
    with pytest.raises(RoutesError) as info:
        parse_routes(textwrap.dedent(text), "routes.yaml")
    for problem in info.value.problems:
        assert str(problem).startswith(f"routes.yaml:{problem.line}: ")
    return [(p.line, p.text) for p in info.value.problems]


def only(text: str) -> tuple[int, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


MLLP = "{transport: mllp, host: 127.0.0.1, port: 6661, profile: ehr}"


# --- the minimal file -----------------------------------------------------------------------


def test_default_routes_file_is_the_minimal_file_verbatim() -> None:
    assert (REPO / "mappings" / "routes.yaml").read_text(encoding="utf-8") == MINIMAL


def test_minimal_file_loads_to_destinations_and_routes() -> None:
    table = load_routes(REPO / "mappings" / "routes.yaml")
    assert table.destinations["ehr"] == Destination(
        name="ehr", transport="mllp", profile="ehr", format="hl7v2", version="2.5.1", host="127.0.0.1", port=6661
    )
    assert table.destinations["lab"].port == 6662
    billing = table.destinations["billing"]
    assert (billing.transport, billing.format, billing.url) == ("http", "fhir", "http://127.0.0.1:6663/fhir")
    assert [r.name for r in table.routes] == [
        "adt-to-ehr", "results-to-ehr", "orders-to-lab", "encounters-to-billing", "charges-to-billing",
    ]
    assert [r.to for r in table.routes] == [("ehr",), ("ehr",), ("lab",), ("billing",), ("billing",)]
    assert [r.line for r in table.routes] == [6, 7, 8, 9, 10]


def test_every_destination_setting_is_read_with_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_TEST_ROUTES_KEY", "s3cr3t-value")
    table = parse_routes(textwrap.dedent("""\
        destinations:
          ehr:
            transport: http
            url: https://ehr.example.test/fhir
            profile: ehr
            format: fhir
            tls_ca: /etc/hub/ca.pem
            headers: {X-Api-Key: "k-${HUB_TEST_ROUTES_KEY}"}
            connect_timeout: 2
            timeout: 10.5
            retry: {max_attempts: 3, initial_delay: 0.5, max_delay: 60, multiplier: 3, jitter: 0.1, on_error: dead}
            ordering: strict
            on_poison: block
          drop: {transport: file, directory: /var/hub/billing, profile: billing, format: csv}
          lab: {transport: mllp, host: lab.example.test, port: 2575, tls: true, profile: lab, version: "2.4",
                options: {orders: OML^O21, sending_facility: NFGH}}
        routes: []
    """))
    ehr = table.destinations["ehr"]
    assert ehr.headers == {"X-Api-Key": "k-s3cr3t-value"}
    assert (ehr.tls_ca, ehr.connect_timeout, ehr.timeout, ehr.ordering, ehr.on_poison) == (
        "/etc/hub/ca.pem", 2.0, 10.5, "strict", "block"
    )
    assert ehr.retry == RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=60, multiplier=3, jitter=0.1, on_error="dead")
    assert table.destinations["drop"].directory == "/var/hub/billing"
    lab = table.destinations["lab"]
    assert (lab.tls, lab.version, lab.options) == (True, "2.4", {"orders": "OML^O21", "sending_facility": "NFGH"})
    assert table.routes == []


# --- YAML-level problems --------------------------------------------------------------------


def test_yaml_syntax_error_has_its_line_and_no_quoted_content() -> None:
    line, text = only("""\
        destinations:
          ehr: {transport: mllp, host: 127.0.0.1, port: 6661, profile: ehr}
        routes:
          - {name: a, to: [ehr]
          - {name: b, to: [ehr]}
    """)
    assert line in (4, 5) and text.startswith("not valid YAML")
    assert "name: a" not in text


def test_duplicate_key_is_reported_not_silently_overwritten() -> None:
    assert only(f"""\
        destinations:
          ehr: {MLLP}
          ehr: {MLLP}
        routes: []
    """) == (3, "`ehr` is given twice")


def test_anchors_and_merge_keys_share_settings() -> None:
    table = parse_routes(textwrap.dedent("""\
        x-mllp: &mllp {transport: mllp, host: 127.0.0.1, retry: {max_attempts: 3}}
        destinations:
          ehr: {<<: *mllp, port: 6661, profile: ehr}
          lab: {<<: *mllp, port: 6662, profile: lab, host: 127.0.0.2}
        routes: []
    """), "routes.yaml")
    ehr, lab = table.destinations["ehr"], table.destinations["lab"]
    assert (ehr.transport, ehr.host, ehr.port, ehr.retry.max_attempts) == ("mllp", "127.0.0.1", 6661, 3)
    assert (lab.host, lab.port, lab.retry.max_attempts) == ("127.0.0.2", 6662, 3)


def test_a_problem_in_a_destination_with_merged_settings_points_at_the_destination() -> None:
    assert only("""\
        x-mllp: &mllp {transport: mllp, host: 127.0.0.1}
        destinations:
          ehr: {<<: *mllp, profile: ehr}
        routes: []
    """) == (3, "`port` is required for transport mllp")


def test_merging_a_non_mapping_is_a_problem() -> None:
    assert only("""\
        x-list: &list [a, b]
        destinations:
          ehr: {<<: *list, transport: mllp, host: h, port: 1, profile: ehr}
        routes: []
    """) == (3, "`<<` merges mappings only")


def test_file_must_be_a_mapping() -> None:
    assert only("- just a list\n") == (1, "a routes file is a mapping with `destinations` and `routes`")


def test_unknown_top_level_key() -> None:
    assert only(f"""\
        destinations:
          ehr: {MLLP}
        route: []
    """) == (3, "unknown key `route` (a routes file has destinations and routes)")


def test_missing_destinations() -> None:
    assert only("routes: []\n") == (1, "`destinations` must map at least one name to its settings")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RoutesError) as info:
        load_routes(tmp_path / "absent.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'absent.yaml'}:1: cannot read the routes file")


# --- destinations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("ehr: not-a-mapping", (2, "destination `ehr` must be a mapping of settings")),
        ("ehr: {host: h, port: 1, profile: ehr}", (2, "`transport` is required")),
        ("ehr: {transport: ftp, host: h, port: 1, profile: ehr}", (2, "`transport`: Input should be 'mllp', 'http' or 'file'")),
        ("ehr: {transport: mllp, host: h, port: 70000, profile: ehr}", (2, "`port`: Input should be less than or equal to 65535")),
        ("ehr: {transport: mllp, port: 1, profile: ehr}", (2, "`host` is required for transport mllp")),
        ("ehr: {transport: http, profile: ehr}", (2, "`url` is required for transport http")),
        ("ehr: {transport: http, url: ftp://x.test, profile: ehr}", (2, "`url` must be an http:// or https:// URL")),
        ("ehr: {transport: file, profile: billing, format: csv}", (2, "`directory` is required for transport file")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: ehr, format: fhir}", (2, "format fhir cannot go over transport mllp")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: ehr, version: '2.1'}",
         (2, "`version` must be one of 2.3, 2.3.1, 2.4, 2.5, 2.5.1, 2.6, 2.7, 2.7.1, 2.8")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: nurse}", (2, "unknown profile `nurse` (built-in: billing, ehr, lab)")),
        ("ehr: {transport: http, url: 'http://x.test', profile: lab, format: fhir}", (2, "profile lab does not build fhir (it builds hl7v2)")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: ehr, tls_ca: /ca.pem}", (2, "`tls_ca` needs `tls: true` (or an https:// URL)")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: ehr, headers: {A: b}}", (2, "`headers` only apply to transport http")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: ehr, retry: {max_attempts: 0}}",
         (2, "`retry.max_attempts`: Input should be greater than or equal to 1")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: ehr, ordering: random}",
         (2, "`ordering`: Input should be 'per_patient' or 'strict'")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: lab, options: {orders: ORM^O02}}",
         (2, "option `orders` must be one of OML^O21, ORM^O01")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: lab, version: '2.7'}",
         (2, "destination `ehr`: ORM^O01 does not exist in HL7 v2.7: set options: {orders: OML^O21}")),
        ("ehr: {transport: mllp, host: h, port: 1, profile: lab, version: '2.3.1', options: {orders: OML^O21}}",
         (2, "destination `ehr`: OML^O21 does not exist in HL7 v2.3.1 (it does from 2.4)")),
    ],
)
def test_destination_problem(settings: str, expected: tuple[int, str]) -> None:
    assert only(f"destinations:\n  {settings}\nroutes: []\n") == expected


def test_problems_point_at_the_line_of_the_setting() -> None:
    assert problems("""\
        destinations:
          ehr:
            transport: mllp
            host: 127.0.0.1
            port: none
            profile: ehr
            colour: blue
            options:
              sending_app: X
        routes: []
    """) == [
        (5, "`port`: Input should be a valid integer, unable to parse string as an integer"),
        (7, "unknown key `colour`"),
    ]


def test_unknown_option_points_at_its_key() -> None:
    assert problems("""\
        destinations:
          ehr:
            transport: mllp
            host: 127.0.0.1
            port: 6661
            profile: ehr
            options:
              sending_app: X
        routes: []
    """) == [(8, "profile ehr has no option `sending_app` (options: processing_id, receiving_application, "
                  "receiving_facility, sending_application, sending_facility)")]


def test_example_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_EHR_TOKEN", "t0k3n")
    monkeypatch.delenv("HUB_SITE", raising=False)
    table = load_routes(REPO / "mappings" / "routes.example.yaml")
    assert table.summary() == "5 destinations, 7 routes"
    assert table.destinations["ehr-fhir"].headers == {"Authorization": "Bearer t0k3n", "X-Hub-Site": "main"}
    assert table.destinations["lab"].options == {"orders": "OML^O21"}


def test_environment_default_applies_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    text = """\
        destinations:
          ehr: {transport: http, url: "http://x.test", profile: ehr, headers: {X-Site: "${HUB_TEST_SITE:-main}", X-Empty: "${HUB_TEST_SITE2:-}"}}
    """
    monkeypatch.delenv("HUB_TEST_SITE", raising=False)
    monkeypatch.delenv("HUB_TEST_SITE2", raising=False)
    assert parse_routes(textwrap.dedent(text)).destinations["ehr"].headers == {"X-Site": "main", "X-Empty": ""}
    monkeypatch.setenv("HUB_TEST_SITE", "north")
    assert parse_routes(textwrap.dedent(text)).destinations["ehr"].headers["X-Site"] == "north"


def test_missing_environment_variable_is_named_and_no_secret_is_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_TEST_ROUTES_KEY", "s3cr3t-value")
    monkeypatch.delenv("HUB_TEST_ROUTES_ABSENT", raising=False)
    found = problems("""\
        destinations:
          ehr:
            transport: http
            url: https://ehr.example.test/fhir
            profile: ehr
            headers:
              X-Api-Key: "${HUB_TEST_ROUTES_KEY}"
              Authorization: "Bearer ${HUB_TEST_ROUTES_ABSENT}"
              Bad Name: "literal-s3cr3t"
            timeout: -1
        routes: []
    """)
    assert found == [
        (8, "header `Authorization` needs environment variable HUB_TEST_ROUTES_ABSENT, which is not set"),
        (9, "header names are HTTP tokens (letters, digits, -)"),
        (10, "`timeout`: Input should be greater than 0"),
    ]
    assert all("s3cr3t" not in text for _, text in found)


def test_pydantic_errors_do_not_echo_values() -> None:
    (_, text), = problems("""\
        destinations:
          ehr: {transport: mllp, host: 127.0.0.1, port: "secret-port-value", profile: ehr}
        routes: []
    """)
    assert "secret-port-value" not in text


# --- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("not-a-mapping", (4, "a route is a mapping with name, when and to")),
        ("{name: r}", (4, "`to` is required")),
        ("{to: [ehr]}", (4, "`name` is required")),
        ("{name: r, to: [ehr], colour: blue}", (4, "unknown key `colour`")),
        ("{name: r, to: [ehr, pharmacy]}", (4, "route r sends to unknown destination `pharmacy`")),
        ("{name: r, to: []}", (4, "`to` names at least one destination")),
        ("{name: r, to: ehr, mapping: mappings/x.yaml}", (4, "outbound mapping files are not supported yet: name a built-in profile")),
        ("{name: r, to: ehr, profile: lab}", (4, "profile lab does not build fhir (it builds hl7v2)")),
        ("{name: r, to: ehr, when: [ADT]}", (4, "`when` is a mapping of conditions (or omitted: every event)")),
        ("{name: r, to: ehr, when: {message: ADT}}",
         (4, "unknown condition `message` (known: event, message_type, trigger, feed, format, facility, patient_class, "
             "has_open_orders, fields)")),
        ("{name: r, to: ehr, when: {message_type: {a: b}}}", (4, "`message_type` takes a value or a list of values")),
        ("{name: r, to: ehr, when: {has_open_orders: maybe}}", (4, "`has_open_orders` takes true or false")),
    ],
)
def test_route_problem(route: str, expected: tuple[int, str]) -> None:
    text = "destinations:\n  ehr: {transport: http, url: 'http://x.test', profile: billing, format: fhir}\nroutes:\n"
    assert only(f"{text}  - {route}\n") == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{field: encounter.patient_klass, in: [I]}", "`encounter.patient_klass`: encounter has no field `patient_klass`"),
        ("{field: encounter, exists: true}", "`encounter` names a structure, not a value: add one of its fields"),
        ("{field: Encounter.Class, exists: true}", "`field` must be a dotted path of canonical field names, e.g. encounter.patient_class"),
        ("{field: request.method, exists: true}", "`request.method`: the event has no field `request`"),
        ("{in: [I]}", "a field expression needs `field`"),
        ("{field: encounter.patient_class}", "a field expression needs exactly one operator (equals, not_equals, in, not_in, exists, matches)"),
        ("{field: encounter.patient_class, equals: I, in: [I]}",
         "a field expression needs exactly one operator (equals, not_equals, in, not_in, exists, matches)"),
        ("{field: encounter.patient_class, like: I}",
         "unknown key `like` in a field expression (operators: equals, not_equals, in, not_in, exists, matches)"),
        ("{field: encounter.patient_class, in: I}", "`in` takes a non-empty list"),
        ("{field: encounter.patient_class, equals: [I]}", "`equals` takes a single value here, not a list or a mapping"),
        ("{field: encounter.patient_class, exists: 1}", "`exists` takes true or false"),
        ("{field: patient.family, matches: x}", "`patient.family`: patient has no field `family`"),
        ("{field: patient.names.family, matches: '[a-'}",
         "`matches` is not a valid regular expression (unterminated character set at position 0)"),
        ("{field: patient.names.family, matches: 7}", "`matches` takes a regular expression (a string)"),
        ("{field: charges.amount, equals: lots}", "`equals` compares a number: the value is not one"),
        ("{field: patient.active, equals: yes-ish}", "`equals` compares a yes/no field: use true or false"),
        ("{field: encounter.admitted_at, equals: '2024'}", "`equals` is not available for date/time fields (use exists)"),
        ("just-text", "a field expression is a mapping like {field: encounter.patient_class, in: [I, E]}"),
    ],
)
def test_field_expression_problem_points_at_its_line(expression: str, expected: str) -> None:
    assert only(f"""\
        destinations:
          ehr: {MLLP}
        routes:
          - name: r
            to: ehr
            when:
              message_type: ADT
              fields:
                - {{field: encounter.patient_class, exists: true}}
                - {expression}
    """) == (10, expected)


def test_duplicate_route_name() -> None:
    assert only(f"""\
        destinations:
          ehr: {MLLP}
        routes:
          - {{name: r, to: ehr}}
          - name: r
            to: ehr
    """) == (5, "route name `r` is used twice")


def test_every_problem_is_reported_at_once() -> None:
    found = problems(f"""\
        destinations:
          ehr: {{transport: mllp, host: h, port: 0, profile: nurse}}
          lab: {MLLP}
        routes:
          - {{name: a, when: {{message_typ: ADT}}, to: [nowhere]}}
          - name: b
            to: lab
            when:
              fields:
                - {{field: encounter.patient_klass, in: [I]}}
                - {{field: patient.names.family, matches: "("}}
    """)
    assert [line for line, _ in found] == [2, 2, 5, 5, 10, 11]


# --- the command ----------------------------------------------------------------------------


def test_routes_check_command_accepts_the_default_file() -> None:
    result = CliRunner().invoke(main, ["routes", "check", str(REPO / "mappings" / "routes.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [f"{REPO / 'mappings' / 'routes.yaml'}: ok, 3 destinations, 5 routes"]


def test_routes_check_command_reads_hub_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    monkeypatch.setenv("HUB_ROUTES", str(path))
    result = CliRunner().invoke(main, ["routes", "check"])
    assert result.exit_code == 0
    assert result.output == f"{path}: ok, 3 destinations, 5 routes\n"


def test_routes_check_command_lists_problems_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(MINIMAL.replace("to: [lab]", "to: [lab, pharmacy]").replace("port: 6661", "port: 0"), encoding="utf-8")
    result = CliRunner().invoke(main, ["routes", "check", str(path)])
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{path}:2: `port`: Input should be greater than or equal to 1",
        f"{path}:8: route orders-to-lab sends to unknown destination `pharmacy`",
    ]


def test_open_orders_are_looked_up_only_when_a_route_asks() -> None:
    """Processing runs the open-orders query for a batch only if some route's condition reads it."""
    text = "destinations:\n  lab: {transport: mllp, host: 127.0.0.1, port: 6662, profile: lab}\nroutes:\n"
    plain = parse_routes(text + "  - {name: orders, when: {message_type: ORM}, to: [lab]}\n", Path("routes.yaml"))
    asking = parse_routes(text + "  - {name: demographics, when: {message_type: ADT, has_open_orders: true}, to: [lab]}\n",
                          Path("routes.yaml"))
    assert not plain.reads_open_orders()
    assert asking.reads_open_orders()
