"""MLLP throughput of the hub, next to a bare MLLP server measured the same way.

Why: the hub parses, stores, checks for duplicates and acknowledges every message before
the sender may send the next one, so its MLLP throughput is what limits a feed. A figure
on its own says little (it depends on the machine and on the client), so every run first
measures a bare asyncio server that only returns a fixed AA ACK, with the same client,
messages and connections, and reports the hub as a ratio to it. That makes runs on
different machines comparable and shows a regression as a drop in the ratio.

    python bench/mllp_throughput.py [--n 20000] [--connections 8]
        [--db sqlite|postgres|both] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--markdown-out FILE] [--only-bare]

The messages are generated here and entirely fictional: invented names, 555-01xx phone
numbers, identifier systems under the example OID arc 2.999. Each run has its own run id
in every MSH-10, so reruns never trip the hub's duplicate detection.

The script cleans up after itself even on error or Ctrl-C: subprocesses (bare server,
hub) run in their own process group and are stopped with SIGTERM then SIGKILL, temp
directories are removed, and a PostgreSQL database it created is dropped. Every wait is
bounded. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from _mllp_client import LOOPBACK, LoadResult, Message, frame, run_load

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# --- fictional message generation -------------------------------------------------------

FAMILY_NAMES = [
    "Quillfeather", "Marrowby", "Tansley", "Brackwater", "Ostrander", "Velloway",
    "Pennick", "Harrowgate", "Lindqvast", "Corvale", "Dunmere", "Ashcombe",
    "Felwick", "Rookley", "Stenhaven", "Wimberlow",
]
GIVEN_NAMES = {
    "F": ["Maribel", "Orla", "Tessaly", "Junia", "Petrina", "Wren", "Calla", "Ysolde"],
    "M": ["Anselm", "Dorian", "Fenwick", "Jarek", "Lucan", "Oswin", "Tobiah", "Corwin"],
}
STREETS = ["Lanternfly Way", "Quarry Hollow Rd", "Mossbank Ave", "Tillerman Ct", "Eddystone Ln", "Bramblegate St"]
CITIES = [("Fernbrook", "OR", "97999"), ("Ashvale", "OH", "43999"), ("Millhaven", "VT", "05999"), ("Corrowick", "NM", "87999")]
RACES = ["2106-3^White^CDCREC", "2054-5^Black or African American^CDCREC", "2028-9^Asian^CDCREC", "2131-1^Other Race^CDCREC"]
CLINICIANS = [
    ("7001", "Brightwater", "Ilse"), ("7002", "Kestrelmoor", "Amos"),
    ("7003", "Thistlewood", "Nadia"), ("7004", "Oakhurst", "Bram"),
]
DIAGNOSES = [
    ("R07.9", "Chest pain, unspecified"), ("J18.9", "Pneumonia, unspecified organism"),
    ("N39.0", "Urinary tract infection, site not specified"), ("R55", "Syncope and collapse"),
]
ALLERGIES = [("70618", "Penicillin", "Hives"), ("2670", "Codeine", "Nausea"), ("1191", "Aspirin", "Wheezing")]

ORG = "BENCH GENERAL HOSPITAL"
MRN_SYSTEM = "BENCH_HOSP&2.999.1.1&ISO"
EMPI_SYSTEM = "BENCH_EMPI&2.999.1.2&ISO"
ACCOUNT_SYSTEM = "BENCH_HOSP&2.999.1.3&ISO"
VISIT_SYSTEM = "BENCH_HOSP&2.999.1.4&ISO"
MEMBER_SYSTEM = "BENCH_PAYER&2.999.1.5&ISO"
CLINICIAN_SYSTEM = "BENCH_HOSP&2.999.1.9&ISO"
ORG_SYSTEM = "BENCH_ORGS&2.999.1.11&ISO"
LAB_ORG = "BENCH REFERENCE LAB^L^^^^BENCH_LAB&2.999.1.10&ISO^XX^^^LAB01"

# (LOINC, display, UCUM unit, low, high, decimals)
Analyte = tuple[str, str, str, float, float, int]
PANELS: dict[tuple[str, str], list[Analyte]] = {
    ("51990-0", "Basic metabolic panel - Blood"): [
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
        ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, 0),
        ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
        ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107, 0),
        ("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 22, 29, 0),
        ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 0),
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
        ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 1),
    ],
    ("58410-2", "CBC panel - Blood by Automated count"): [
        ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 1),
        ("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 4.2, 5.9, 2),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
        ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36, 50, 1),
        ("787-2", "MCV [Entitic volume] by Automated count", "fL", 80, 100, 1),
        ("785-6", "MCH [Entitic mass] by Automated count", "pg", 27, 33, 1),
        ("786-4", "MCHC [Mass/volume] by Automated count", "g/dL", 32, 36, 1),
        ("788-0", "Erythrocyte distribution width [Ratio] by Automated count", "%", 11.5, 14.5, 1),
        ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
        ("32623-1", "Platelet mean volume [Entitic volume] in Blood by Automated count", "fL", 7.5, 11.5, 1),
    ],
}

# ~70 % ADT (A01/A04/A08), ~30 % ORU^R01
MESSAGE_MIX = [("A01", 0.25), ("A04", 0.20), ("A08", 0.25), ("R01", 0.30)]


@dataclass(frozen=True)
class Patient:
    mrn: str
    empi: str
    account: str
    family: str
    given: str
    middle: str
    sex: str
    birth_date: str
    address: str
    phone: str
    email: str
    race: str
    kin_given: str


def segment(name: str, fields: dict[int, str]) -> str:
    """One segment from {field number: value}; MSH counts like the standard (MSH-1 = '|')."""
    first = 2 if name == "MSH" else 1
    return "|".join([name, *(fields.get(i, "") for i in range(first, max(fields) + 1))])


def hl7_ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def phone(rng: random.Random, use: str) -> str:
    """XTN with a fictional 555-01xx number."""
    local = f"01{rng.randrange(100):02d}"
    return f"(555)555-{local}^{use}^PH^^1^555^555{local}"


def clinician(rng: random.Random) -> str:
    ident, family, given = rng.choice(CLINICIANS)
    return f"{ident}^{family}^{given}^^^Dr^MD^^{CLINICIAN_SYSTEM}"


def make_patients(count: int, rng: random.Random) -> list[Patient]:
    patients = []
    for i in range(count):
        sex = rng.choice("FM")
        given, middle = rng.sample(GIVEN_NAMES[sex], 2)
        family = rng.choice(FAMILY_NAMES)
        city, state, zip_code = rng.choice(CITIES)
        birth = datetime(1930, 1, 1) + timedelta(days=rng.randrange(32000))
        patients.append(Patient(
            mrn=f"M{i:07d}", empi=f"E{rng.randrange(10**9):09d}", account=f"A{i:08d}",
            family=family, given=given, middle=middle, sex=sex, birth_date=birth.strftime("%Y%m%d"),
            address=f"{rng.randint(1, 999)} {rng.choice(STREETS)}^Apt {rng.randint(1, 40)}^{city}^{state}^{zip_code}^USA^H",
            phone=phone(rng, "PRN"), email=f"{given.lower()}.{family.lower()}@example.org",
            race=rng.choice(RACES), kin_given=rng.choice(GIVEN_NAMES["F" if sex == "M" else "M"]),
        ))
    return patients


def msh(message_type: str, control: str, moment: datetime) -> str:
    return segment("MSH", {
        2: "^~\\&", 3: "BENCH_EHR", 4: "BENCH_HOSP", 5: "HUB", 6: "HUB_FAC", 7: hl7_ts(moment),
        9: message_type, 10: control, 11: "P", 12: "2.5.1", 17: "USA", 18: "UNICODE UTF-8",
    })


def pid(p: Patient, moment: datetime) -> str:
    return segment("PID", {
        1: "1", 3: f"{p.mrn}^^^{MRN_SYSTEM}^MR~{p.empi}^^^{EMPI_SYSTEM}^PI",
        5: f"{p.family}^{p.given}^{p.middle}^^^^L", 7: p.birth_date, 8: p.sex, 10: p.race,
        11: p.address, 13: f"{p.phone}~^NET^Internet^{p.email}", 15: "eng^English^ISO639",
        16: "M^Married^HL70002", 18: f"{p.account}^^^{ACCOUNT_SYSTEM}^AN",
        22: "2186-5^Not Hispanic or Latino^CDCREC", 30: "N", 33: hl7_ts(moment),
    })


def pv1(p: Patient, patient_class: str, visit: str, moment: datetime, rng: random.Random) -> str:
    location = f"4W^{rng.randint(401, 430)}^{rng.choice('AB')}^BENCH_HOSP^^N^MAIN^4" if patient_class == "I" else "CLIN^EXAM3^^BENCH_HOSP^^C^ANNEX^1"
    return segment("PV1", {
        1: "1", 2: patient_class, 3: location, 4: "E" if patient_class == "I" else "R",
        7: clinician(rng), 10: "MED", 14: "7",
        18: "IN" if patient_class == "I" else "OP", 19: f"{visit}^^^{VISIT_SYSTEM}^VN",
        20: "SP", 39: "BENCH_HOSP", 44: hl7_ts(moment - timedelta(minutes=rng.randint(5, 600))),
    })


def adt_message(p: Patient, event: str, control: str, moment: datetime, rng: random.Random) -> str:
    """ADT^A01/A04/A08, ~1.5 KB: demographics, visit, kin, vitals, allergy, diagnosis, insurance."""
    patient_class = "O" if event == "A04" else "I"
    dx_code, dx_text = rng.choice(DIAGNOSES)
    allergy_code, allergy, reaction = rng.choice(ALLERGIES)
    visit = f"V{control}"
    segments = [
        msh(f"ADT^{event}^ADT_A01", control, moment),
        segment("EVN", {1: event, 2: hl7_ts(moment), 6: hl7_ts(moment)}),
        pid(p, moment),
        segment("PD1", {3: f"{ORG}^^2001", 4: clinician(rng)}),
        segment("NK1", {1: "1", 2: f"{p.family}^{p.kin_given}", 3: "SPO^Spouse^HL70063",
                        5: phone(rng, "PRN"), 7: "EC^Emergency Contact^HL70131"}),
        pv1(p, patient_class, visit, moment, rng),
        segment("PV2", {3: f"{dx_code}^{dx_text}^I10"}),
        segment("OBX", {1: "1", 2: "NM", 3: "8302-2^Body height^LN", 5: str(rng.randint(150, 195)),
                        6: "cm^centimeter^UCUM", 11: "F", 14: hl7_ts(moment)}),
        segment("OBX", {1: "2", 2: "NM", 3: "29463-7^Body weight^LN", 5: f"{rng.uniform(45, 120):.1f}",
                        6: "kg^kilogram^UCUM", 11: "F", 14: hl7_ts(moment)}),
        segment("AL1", {1: "1", 2: "DA^Drug allergy^HL70127", 3: f"{allergy_code}^{allergy}^RXNORM",
                        4: "MO^Moderate^HL70128", 5: reaction}),
        segment("DG1", {1: "1", 3: f"{dx_code}^{dx_text}^I10", 5: hl7_ts(moment), 6: "A"}),
        segment("IN1", {1: "1", 2: "PLAN01^Bench Health Basic^2.999.1.6", 3: f"PAYER01^^^{MEMBER_SYSTEM}",
                        4: "Fictive Mutual Insurance", 7: phone(rng, "WPN"), 8: "GRP-0001", 12: "20240101", 15: "PPO",
                        16: f"{p.family}^{p.given}", 17: "SEL^Self^HL70063", 18: p.birth_date,
                        36: f"MEM{p.mrn[1:]}"}),
    ]
    return "\r".join(segments) + "\r"


def obx_lab(index: int, analyte: Analyte, moment: datetime, rng: random.Random) -> str:
    code, display, unit, low, high, decimals = analyte
    value = rng.gauss((low + high) / 2, (high - low) / 3)
    value = max(value, 0.0)
    flag = "H" if value > high else "L" if value < low else "N"
    return segment("OBX", {
        1: str(index), 2: "NM", 3: f"{code}^{display}^LN", 5: f"{value:.{decimals}f}",
        6: f"{unit}^{unit}^UCUM", 7: f"{low}-{high}", 8: flag, 11: "F", 14: hl7_ts(moment),
        16: clinician(rng), 19: hl7_ts(moment + timedelta(minutes=40)), 23: LAB_ORG,
    })


def oru_message(p: Patient, control: str, moment: datetime, rng: random.Random) -> str:
    """ORU^R01 with one panel of 5-10 OBX (~3 KB), as a lab system sends results."""
    (panel_code, panel_name), analytes = rng.choice(list(PANELS.items()))
    chosen = analytes[: rng.randint(5, min(10, len(analytes)))]
    placer, filler = f"PL{control}^BENCH_EHR^2.999.1.7^ISO", f"FI{control}^BENCH_LAB^2.999.1.8^ISO"
    collected = moment - timedelta(hours=2)
    segments = [
        msh("ORU^R01^ORU_R01", control, moment),
        pid(p, moment),
        pv1(p, "O", f"V{control}", moment, rng),
        segment("ORC", {1: "RE", 2: placer, 3: filler, 5: "CM", 9: hl7_ts(moment), 12: clinician(rng),
                        21: f"{ORG}^L^^^^{ORG_SYSTEM}^XX^^^2001"}),
        segment("OBR", {1: "1", 2: placer, 3: filler, 4: f"{panel_code}^{panel_name}^LN",
                        7: hl7_ts(collected), 14: hl7_ts(collected), 16: clinician(rng),
                        22: hl7_ts(moment), 24: "LAB", 25: "F"}),
    ]
    for index, analyte in enumerate(chosen, start=1):
        segments.append(obx_lab(index, analyte, moment, rng))
    if rng.random() < 0.3:
        segments.append(segment("NTE", {1: "1", 2: "L", 3: "Specimen slightly hemolyzed; interpret potassium with caution."}))
    segments.append(segment("SPM", {1: "1", 2: f"S{control}^^^BENCH_LAB&2.999.1.8&ISO",
                                    4: "119297000^Blood specimen^SCT", 17: hl7_ts(collected)}))
    return "\r".join(segments) + "\r"


def mean(values: Sequence[int]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass
class Workload:
    run_id: str
    timed: list[Message]
    warmup: list[Message]
    patients: int
    adt_count: int
    adt_avg_bytes: float
    oru_count: int
    oru_avg_bytes: float


def generate_workload(n: int, warmup: int, seed: int) -> Workload:
    """N timed + warm-up messages; MSH-10 = run id (8 hex) + sequence, 16 chars (≤ 20 in 2.5.1)."""
    rng = random.Random(seed)
    run_id = secrets.token_hex(4).upper()
    patients = make_patients(max(1, n // 4), rng)
    events, weights = zip(*MESSAGE_MIX)
    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
    start = now - timedelta(hours=1, seconds=3 * (n + warmup))  # all in the past
    messages: list[Message] = []
    sizes: dict[str, list[int]] = {"ADT": [], "ORU": []}
    for seq in range(n + warmup):
        control = f"{run_id}{seq:08d}"
        moment = start + timedelta(seconds=seq * 3)
        event = rng.choices(events, weights)[0]
        patient = rng.choice(patients)
        if event == "R01":
            text = oru_message(patient, control, moment, rng)
        else:
            text = adt_message(patient, event, control, moment, rng)
        block = frame(text)
        sizes["ORU" if event == "R01" else "ADT"].append(len(block) - 3)
        messages.append((control, block))
    return Workload(
        run_id=run_id, timed=messages[warmup:], warmup=messages[:warmup], patients=len(patients),
        adt_count=len(sizes["ADT"]), adt_avg_bytes=mean(sizes["ADT"]),
        oru_count=len(sizes["ORU"]), oru_avg_bytes=mean(sizes["ORU"]),
    )


# --- subprocesses -------------------------------------------------------------------------


class StartupError(RuntimeError):
    """A server subprocess did not become ready; the message carries the tail of its log."""


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM to the subprocess's own process group, then SIGKILL to whatever is left."""
    _signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start cmd in a new session (so it and its children can be stopped as a group)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_for_tcp(proc: subprocess.Popen[bytes], port: int, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupError(f"exited with code {proc.returncode} before listening on {port}:\n{log_tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1.0):
            return
        time.sleep(0.1)
    raise StartupError(f"nothing listening on {LOOPBACK}:{port} after {timeout_s:.0f} s:\n{log_tail(log_path)}")


def wait_for_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log_path: Path) -> None:
    """Poll GET url until 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartupError(f"hub exited with code {proc.returncode} before ready:\n{log_tail(log_path)}")
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.25)
    raise StartupError(f"hub not ready after {timeout_s:.0f} s (last: {last}):\n{log_tail(log_path)}")


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any HUB_* setting of the caller, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def bare_server(workdir: Path) -> Iterator[int]:
    [port] = free_ports(1)
    log_path = workdir / "bare-server.log"
    cmd = [sys.executable, str(BENCH_DIR / "_mllp_client.py"), "bare-server", str(port)]
    with running(cmd, child_env({}), log_path) as proc:
        wait_for_tcp(proc, port, 15.0, log_path)
        yield port


@contextlib.contextmanager
def hub_server(workdir: Path, database_url: str | None, ready_timeout_s: float) -> Iterator[tuple[int, int, Path]]:
    """Start `python -m hub serve` on free loopback ports with a fresh data dir; yield (MLLP port, HTTP port, log)."""
    data_dir = Path(tempfile.mkdtemp(prefix="hub-data-", dir=workdir))
    http_port, mllp_port = free_ports(2)
    settings = {
        "HUB_DATA_DIR": str(data_dir),
        "HUB_ROUTES": str(data_dir / "no-routes.yaml"),  # the inbound side alone (delivery_throughput.py routes)
        "HUB_HTTP_HOST": LOOPBACK, "HUB_HTTP_PORT": str(http_port),
        "HUB_MLLP_HOST": LOOPBACK, "HUB_MLLP_PORT": str(mllp_port),
    }
    if database_url:
        settings["HUB_DATABASE_URL"] = database_url
    log_path = data_dir.with_suffix(".log")
    with running([sys.executable, "-m", "hub", "serve"], child_env(settings), log_path) as proc:
        wait_for_ready(proc, f"http://{LOOPBACK}:{http_port}/health/ready", ready_timeout_s, log_path)
        wait_for_tcp(proc, mllp_port, 10.0, log_path)
        yield mllp_port, http_port, log_path


def _libpq_url(sqlalchemy_url: str, database: str | None = None) -> str:
    """postgresql+psycopg://… → postgresql://… (what psycopg accepts), optionally another db."""
    parts = urllib.parse.urlsplit(sqlalchemy_url)
    path = f"/{database}" if database else parts.path
    return urllib.parse.urlunsplit(("postgresql", parts.netloc, path, parts.query, parts.fragment))


@contextlib.contextmanager
def fresh_postgres_database(pg_url: str) -> Iterator[str]:
    """CREATE DATABASE hub_bench_<random> on the server of pg_url; yield its URL; drop it after."""
    import psycopg
    from psycopg import sql

    name = f"hub_bench_{secrets.token_hex(4)}"
    admin_url = _libpq_url(pg_url)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}", file=sys.stderr)
    try:
        parts = urllib.parse.urlsplit(pg_url)
        yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            try:  # FORCE (PostgreSQL 13+) ends connections a stopped hub may have left behind
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            except psycopg.errors.SyntaxError:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        print(f"dropped database {name}", file=sys.stderr)


# --- measuring and reporting --------------------------------------------------------------


@dataclass
class Row:
    target: str
    result: LoadResult
    processed_s: float | None = None
    """Seconds from the first timed message until the hub had processed (mapped) every one."""


def wait_until_processed(http_port: int, timeout_s: float) -> float:
    """Poll the hub's /api/status until no accepted message is waiting for processing."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        status = httpx.get(f"http://{LOOPBACK}:{http_port}/api/status", timeout=10).json()
        if status["messages"]["pending"] == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    return math.nan


def measure(port: int, workload: Workload, args: argparse.Namespace) -> LoadResult:
    return asyncio.run(run_load(
        LOOPBACK, port, workload.timed, args.connections, warmup=workload.warmup,
        ack_timeout=args.ack_timeout, max_seconds=args.max_seconds,
    ))


def measure_hub(db: str, workload: Workload, args: argparse.Namespace, workdir: Path) -> Row:
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_database(args.pg_url)) if db == "postgres" else None
        port, http_port, log_path = stack.enter_context(hub_server(workdir, database_url, args.ready_timeout))
        print(f"hub ({db}) ready, MLLP on {LOOPBACK}:{port}; sending…", file=sys.stderr)
        result = measure(port, workload, args)
        drained = wait_until_processed(http_port, args.max_seconds)
        if result.not_accepted or result.id_mismatches:
            print(f"hub ({db}) log tail:\n{log_tail(log_path, 40)}", file=sys.stderr)
        return Row(f"hub ({db})", result, result.elapsed_s + drained)


def describe_not_accepted(result: LoadResult) -> str:
    parts = [f"{kind} {count}" for kind, count in sorted(result.not_accepted.items())]
    if result.id_mismatches:
        parts.append(f"MSA-2 ≠ MSH-10 {result.id_mismatches}")
    return ", ".join(parts) or "0"


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def markdown_table(rows: Sequence[Row]) -> str:
    bare_rate = next((r.result.accepted_per_s for r in rows if r.target.startswith("bare")), 0.0)
    lines = [
        "| target | messages | connections | seconds | msg/s accepted (AA) | p50 ms | p99 ms | ratio to bare server "
        "| msg/s fully processed | not AA |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        r = row.result
        ratio = f"{r.accepted_per_s / bare_rate:.3f}" if bare_rate else "n/a"
        processed = f"{r.accepted / row.processed_s:.0f}" if row.processed_s and not math.isnan(row.processed_s) else "n/a"
        lines.append(
            f"| {row.target} | {r.messages} | {r.connections} | {r.elapsed_s:.2f} | {r.accepted_per_s:.0f} "
            f"| {ms(r.percentile_ms(50))} | {ms(r.percentile_ms(99))} | {ratio} | {processed} | {describe_not_accepted(r)} |"
        )
    return "\n".join(lines)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "no commit"


def run_info(workload: Workload, args: argparse.Namespace) -> str:
    return (
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()} {platform.machine()}; "
        f"repo revision {git_revision()}\n"
        f"- workload: {len(workload.timed)} messages after {len(workload.warmup)} warm-up "
        f"(run id {workload.run_id}, seed {args.seed}): {workload.adt_count} ADT A01/A04/A08 "
        f"avg {workload.adt_avg_bytes / 1024:.2f} KB, {workload.oru_count} ORU^R01 avg "
        f"{workload.oru_avg_bytes / 1024:.2f} KB, {workload.patients} patients; "
        f"client: one asyncio process, {args.connections} connections, one message in flight per connection"
    )


def append_markdown(path: Path, table: str, info: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"\n## MLLP throughput, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n{info}\n\n{table}\n")


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="timed messages per target (default 20000)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent MLLP connections (default 8)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="server (and database to connect to for CREATE/DROP DATABASE) for --db postgres")
    parser.add_argument("--only-bare", action="store_true", help="measure the bare server only (no hub)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up messages, not counted (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the message generator")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for one ACK")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per target: stop sending after this")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for /health/ready")
    parser.add_argument("--markdown-out", type=Path, help="append the table with date and machine info")
    args = parser.parse_args(argv)
    if args.n < 1 or args.connections < 1 or args.warmup < 0:
        parser.error("--n and --connections must be ≥ 1, --warmup ≥ 0")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers: cleanup runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    workload = generate_workload(args.n, args.warmup, args.seed)
    print(f"generated {args.n + args.warmup} messages in {time.monotonic() - started:.1f} s "
          f"(run id {workload.run_id})", file=sys.stderr)
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="mllp-bench-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        with bare_server(workdir) as port:
            print(f"bare server on {LOOPBACK}:{port}; sending…", file=sys.stderr)
            rows.append(Row("bare asyncio server", measure(port, workload, args)))
        databases = [] if args.only_bare else ["sqlite", "postgres"] if args.db == "both" else [args.db]
        for db in databases:
            try:
                rows.append(measure_hub(db, workload, args, workdir))
            except Exception as exc:  # report and go on with the next target
                failed = True
                print(f"hub ({db}) FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    table = markdown_table(rows)
    info = run_info(workload, args)
    print(f"\n{info}\n\n{table}")
    if any(row.result.failures for row in rows):
        failed = True
    if args.markdown_out:
        append_markdown(args.markdown_out, table, info)
        print(f"appended to {args.markdown_out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # cleanup already ran in the context managers
        print("interrupted", file=sys.stderr)
        sys.exit(130)
