"""FHIR Patient create (single, and in 100-entry transactions) and search-by-identifier latency,
next to a bare FastAPI endpoint measured the same way in the same run.

    python bench/fhir_throughput.py [--creates 3000] [--concurrency 16] [--transactions 30]
        [--load 100000] [--searches 2000] [--db sqlite|postgres|both] [--markdown-out FILE]

1. Baseline: a bare FastAPI app (uvicorn, same settings as the hub) whose POST returns a fixed
   Patient with 201 and whose GET returns a fixed one-entry searchset; the same client drives it.
2. The hub (`python -m hub serve`, fresh data dir or fresh PostgreSQL database):
   - single creates: `--creates` POST /fhir/Patient, `--concurrency` connections;
   - transactions: `--transactions` Bundles of 100 Patient POSTs, one at a time (patients/s);
   - load: `--load` patients in total, loaded in 100-entry transactions (4 in flight);
   - search: `--searches` GET /fhir/Patient?identifier=system|value for random loaded patients,
     one connection, one at a time: p50/p99 ms.
All data is generated and fictional (invented names, 555-01xx phones, systems under urn:hub:bench).
Subprocesses, temp directories and a created database are cleaned up, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllp_throughput import (  # noqa: E402 — shared process helpers
    LOOPBACK, child_env, free_ports, fresh_postgres_database, git_revision, hub_server, running, wait_for_ready,
)

BENCH_DIR = Path(__file__).resolve().parent
SYSTEM = "urn:hub:bench:mrn"
FAMILIES = ["Quillfeather", "Marrowby", "Tansley", "Brackwater", "Ostrander", "Velloway", "Pennick", "Harrowgate"]
GIVENS = ["Maribel", "Orla", "Anselm", "Dorian", "Wren", "Lucan", "Calla", "Oswin"]
JSON = {"Content-Type": "application/fhir+json"}

BARE_APP = '''
import json, sys, uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
app = FastAPI()
PATIENT = json.dumps({"resourceType": "Patient", "id": "fixed", "meta": {"versionId": "1"},
                      "name": [{"family": "Fixed"}]}).encode()
BUNDLE = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": json.loads(PATIENT)}]}).encode()
@app.post("/fhir/Patient")
async def create(request: Request) -> Response:
    await request.body()
    return Response(PATIENT, 201, media_type="application/fhir+json", headers={"Location": "x", "ETag": 'W/"1"'})
@app.get("/fhir/Patient")
def search() -> Response:
    return Response(BUNDLE, 200, media_type="application/fhir+json")
@app.get("/health/ready")
def ready() -> dict:
    return {}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''


def patient(rng: random.Random, mrn: str) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn}],
        "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVENS)]}],
        "gender": rng.choice(["female", "male"]),
        "birthDate": f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "telecom": [{"system": "phone", "value": f"555-01{rng.randint(0, 99):02d}"}],
    }


def transaction(patients: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": p, "request": {"method": "POST", "url": "Patient"}} for p in patients
    ]}


async def creates(base: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], int]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(f"{base}/fhir/Patient", data=body, headers=JSON) as response:
                await response.read()
                latencies.append(time.perf_counter() - started)
                failures += response.status != 201

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, failures


async def transactions(base: str, bundles: list[bytes], concurrency: int) -> tuple[float, int]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for bundle in bundles:
        queue.put_nowait(bundle)
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            async with session.post(f"{base}/fhir", data=queue.get_nowait(), headers=JSON) as response:
                await response.read()
                failures += response.status != 200

    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return time.perf_counter() - started, failures


def searches(base: str, mrns: list[str], n: int, rng: random.Random) -> tuple[list[float], int]:
    latencies = []
    misses = 0
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
        for _ in range(min(50, n)):  # warm-up
            client.get("/fhir/Patient", params={"identifier": f"{SYSTEM}|{rng.choice(mrns)}"})
        for _ in range(n):
            started = time.perf_counter()
            response = client.get("/fhir/Patient", params={"identifier": f"{SYSTEM}|{rng.choice(mrns)}"})
            latencies.append(time.perf_counter() - started)
            misses += len(response.json().get("entry", [])) != 1
    return latencies, misses


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000 if ordered else 0.0


@contextlib.contextmanager
def bare(workdir: Path) -> Iterator[str]:
    [port] = free_ports(1)
    script = workdir / "bare_fhir.py"
    script.write_text(BARE_APP)
    log = workdir / "bare.log"
    with running([sys.executable, str(script), str(port)], child_env({}), log) as proc:
        wait_for_ready(proc, f"http://{LOOPBACK}:{port}/health/ready", 30, log)
        yield f"http://{LOOPBACK}:{port}"


def run_target(name: str, base: str, args: argparse.Namespace, rng: random.Random, hub: bool) -> list[str]:
    tag = f"{int(time.time())}{rng.randint(0, 999):03d}"
    bodies = [json.dumps(patient(rng, f"S{tag}-{n}")).encode() for n in range(args.creates)]
    seconds, latencies, failures = asyncio.run(creates(base, bodies, args.concurrency))
    rows = [f"| {name} | single create | {args.creates} | {args.concurrency} | {seconds:.2f} | {args.creates / seconds:.0f} | "
            f"{pct(latencies, 50):.1f} | {pct(latencies, 99):.1f} | {failures} |"]
    if not hub:
        latencies, misses = searches(base, ["x"], args.searches, rng)
        rows.append(f"| {name} | search by identifier | {args.searches} | 1 | {sum(latencies):.2f} | "
                    f"{args.searches / sum(latencies):.0f} | {pct(latencies, 50):.2f} | {pct(latencies, 99):.2f} | 0 |")
        return rows
    tx = [json.dumps(transaction([patient(rng, f"T{tag}-{b}-{n}") for n in range(100)])).encode() for b in range(args.transactions)]
    seconds, failures = asyncio.run(transactions(base, tx, 1))
    rows.append(f"| {name} | 100-entry transaction | {args.transactions * 100} patients | 1 | {seconds:.2f} | "
                f"{args.transactions * 100 / seconds:.0f} patients/s ({args.transactions / seconds:.1f} tx/s) | | | {failures} |")
    loaded = args.creates + args.transactions * 100
    remaining = max(0, args.load - loaded)
    mrns = [f"L{tag}-{n}" for n in range(remaining)]
    load = [json.dumps(transaction([patient(rng, m) for m in mrns[i:i + 100]])).encode() for i in range(0, len(mrns), 100)]
    seconds, failures = asyncio.run(transactions(base, load, 4))
    rows.append(f"| {name} | load (100-entry transactions, 4 in flight) | {remaining} patients | 4 | {seconds:.2f} | "
                f"{remaining / max(seconds, 1e-9):.0f} patients/s | | | {failures} |")
    latencies, misses = searches(base, mrns or [f"S{tag}-0"], args.searches, rng)
    rows.append(f"| {name} | search by identifier ({args.load} patients loaded) | {args.searches} | 1 | {sum(latencies):.2f} | "
                f"{args.searches / sum(latencies):.0f} | {pct(latencies, 50):.2f} | {pct(latencies, 99):.2f} | {misses} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--transactions", type=int, default=30)
    parser.add_argument("--load", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--markdown-out")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp:
        workdir = Path(tmp)
        with bare(workdir) as base:
            rows += run_target("bare FastAPI endpoint", base, args, rng, hub=False)
        for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(fresh_postgres_database(args.pg_url)) if db == "postgres" else None
                _, http_port, _ = stack.enter_context(hub_server(workdir, url, 60))
                rows += run_target(f"hub ({db})", f"http://{LOOPBACK}:{http_port}", args, rng, hub=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import os

    info = (f"- date: {now}; machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()} {platform.machine()}; repo revision {git_revision()}\n"
            f"- client: aiohttp for creates and transactions, httpx (sync, one keep-alive connection) for searches, in one process on the same machine\n")
    table = ("| target | what | requests | connections | seconds | req/s | p50 ms | p99 ms | failures |\n"
             "|---|---|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    text = f"\n## FHIR REST, {now}\n\n{info}\n{table}\n"
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "a", encoding="utf-8") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
