"""CSV import throughput and peak memory: `hub import-csv` on a generated file, next to a bare baseline.

    python bench/csv_import.py                          # 1,000,000 rows, hub on SQLite
    python bench/csv_import.py --rows 100000 --db both  # SQLite and PostgreSQL
    python bench/csv_import.py --markdown-out docs/benchmarks.md

What one run does:
1. Generates a fictional patient registry export (`mappings/csv/registry.yaml` columns) of `--rows`
   rows in a temp directory: invented names, 555-01xx phones, ~1 % rows with an impossible date,
   ~0.5 % rows without an identifier (rejects), a few quoted fields with embedded newlines.
2. Baseline: reads the same file with the stdlib csv module only (the floor of any CSV import).
3. The CSV door alone (stream, parse, map, store each 1,000-row chunk; nothing processed) into a fresh
   SQLite file, in a fresh process: the rate at which the hub accepts rows.
4. For each database: runs `<python> -m hub import-csv FILE --mapping registry` in a subprocess on a
   fresh database (SQLite in a temp data dir; PostgreSQL in a fresh `hub_bench_<random>` database),
   measures wall time (rows/s: stored AND processed, i.e. canonical records written) and the
   child's peak RSS (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, measured per run in a
   fresh helper process), then checks the record count.
Only the standard library plus psycopg (for PostgreSQL); everything is cleaned up, even on error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = [
    "rec_id", "surname", "given_name", "middle_name", "date_of_birth", "sex", "street_number", "address_1",
    "address_2", "suburb", "postcode", "state", "phone", "email", "soc_sec_id",
]
FAMILIES = ["Quillby", "Marrowfield", "Tallowick", "Brennock", "Ashdown", "Fenwhistle", "Oakrill", "Pembry", "Corvane", "Lindqvale"]
GIVENS = ["Ansel", "Bette", "Corin", "Dalia", "Evander", "Fiora", "Gideon", "Halcy", "Isolde", "Jory", "Kestrel", "Liora"]
STREETS = ["Elm St", "Birch Rd", "Quarry Ln", "Willow Ave", "Harbor Way", "Juniper Ct"]
SUBURBS = ["Springfield", "Riverton", "Lakeside", "Fairview", "Brookhaven"]


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(rows):
            r = rng.random()
            dob = f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            if r < 0.01:
                dob = "19990231"  # impossible: a warning, value dropped
            w.writerow([
                "" if 0.01 <= r < 0.015 else f"R{i:08d}",
                rng.choice(FAMILIES), rng.choice(GIVENS), rng.choice(GIVENS) if r < 0.3 else "",
                dob, rng.choice("MFU"), str(rng.randint(1, 999)), rng.choice(STREETS),
                "Unit 4\nRear" if 0.5 < r < 0.501 else "", rng.choice(SUBURBS), f"{rng.randint(1000, 9999)}", "ST",
                f"555-01{rng.randint(0, 99):02d}", f"p{i}@example.org" if r < 0.5 else "", f"900-{i % 100:02d}-{i % 10000:04d}",
            ])


def baseline(path: Path) -> dict[str, float]:
    """Bare stdlib csv reading of the same file, in a fresh process (for a clean peak RSS)."""
    code = (
        "import csv,sys,time,resource\n"
        "t=time.perf_counter();n=0\n"
        "with open(sys.argv[1],encoding='utf-8',newline='') as f:\n"
        "    r=csv.reader(f);next(r)\n"
        "    for row in r: n+=1\n"
        "print(n, time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout.split()
    n, seconds, rss = int(out[0]), float(out[1]), int(out[2])
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds, "peak_rss_mb": rss / 1024}


def run_import(path: Path, env: dict[str, str]) -> dict[str, float]:
    """`hub import-csv` in a subprocess; a small helper process reports its child's peak RSS."""
    helper = (
        "import resource,subprocess,sys,time\n"
        "t=time.perf_counter()\n"
        "p=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
        "dt=time.perf_counter()-t\n"
        "sys.stderr.write(p.stderr[-3000:])\n"
        "print(p.returncode, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(p.stdout)\n"
    )
    cmd = [sys.executable, "-c", helper, sys.executable, "-m", "hub", "import-csv", str(path), "--mapping", "registry"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    first, *rest = result.stdout.splitlines()
    rc, seconds, rss = first.split()
    if int(rc) != 0:
        raise SystemExit(f"import failed (exit {rc}):\n{result.stderr[-3000:]}")
    return {"seconds": float(seconds), "peak_rss_mb": int(rss) / 1024, "summary": " ".join(rest).strip()}  # type: ignore[dict-item]


DOOR_ONLY = """
import gc, resource, sys, time
from functools import partial
from adapters.inbound.csv.mapping import find_by_name
from adapters.inbound.csv.service import chunks, to_message
from hub.pipeline import store_batch
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.uow import UnitOfWork
engine = make_engine(sys.argv[2]); upgrade(engine)
gc.freeze(); gc.set_threshold(50_000, 20, 100)
mapping = find_by_name("registry"); uow = partial(UnitOfWork, engine)
t = time.perf_counter(); n = 0
with open(sys.argv[1], "rb") as f:
    _, it = chunks(mapping, f, None, None, 1000)
    for chunk in it:
        n += len(chunk.rows)
        [outcome] = store_batch(uow, [to_message(mapping, chunk)])
        assert outcome.stored
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def door_only(path: Path, url: str) -> dict[str, float]:
    """The CSV door alone: stream, parse, map and store every chunk (one commit each), no processing."""
    out = subprocess.run([sys.executable, "-c", DOOR_ONLY, str(path), url], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    n, seconds, rss = out.stdout.split()
    return {"rows_per_s": int(n) / float(seconds), "seconds": float(seconds), "peak_rss_mb": int(rss) / 1024}


def count_records(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM records WHERE kind = 'patient'")).scalar_one()
    engine.dispose()
    return int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--markdown-out", type=Path, help="append a results section to this file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hub_csv_bench_"))
    created_db: str | None = None
    try:
        path = tmp / "registry.csv"
        t = time.perf_counter()
        generate(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        base = baseline(path)
        print(f"baseline csv module: {base['rows_per_s']:,.0f} rows/s, peak RSS {base['peak_rss_mb']:.0f} MB", file=sys.stderr)
        door = door_only(path, f"sqlite:///{tmp / 'door.db'}")
        print(f"CSV door only (parse, map, store; no processing), SQLite: {door['rows_per_s']:,.0f} rows/s, peak RSS {door['peak_rss_mb']:.0f} MB", file=sys.stderr)
        results = []
        for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
            env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
            env["HUB_DATA_DIR"] = str(tmp / f"var_{db}")
            env["HUB_LOG_LEVEL"] = "WARNING"
            env["HUB_ROUTES"] = str(tmp / "no-routes.yaml")  # import and match; routing is measured elsewhere
            if db == "postgres":
                import psycopg

                name = f"hub_bench_{uuid.uuid4().hex[:10]}"
                admin = args.pg_url.replace("postgresql+psycopg://", "postgresql://")
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                created_db = name
                url = args.pg_url.rsplit("/", 1)[0] + f"/{name}"
            else:
                url = f"sqlite:///{tmp / f'var_{db}' / 'hub.db'}"
            env["HUB_DATABASE_URL"] = url
            run = run_import(path, env)
            records = count_records(url)
            rate = args.rows / run["seconds"]  # type: ignore[operator]
            print(f"{db}: {rate:,.0f} rows/s, peak RSS {run['peak_rss_mb']:.0f} MB, {records:,} patients; {run['summary']}", file=sys.stderr)
            results.append({"db": db, "rows_per_s": rate, **run, "patients": records})
            if db == "postgres" and created_db:
                _drop(args.pg_url, created_db)
                created_db = None
        report = {"rows": args.rows, "file_mb": size_mb, "cpus": os.cpu_count(), "baseline": base, "door": door, "runs": results}
        if args.json:
            print(json.dumps(report, indent=2))
        if args.markdown_out:
            with open(args.markdown_out, "a", encoding="utf-8") as f:
                f.write(markdown(report))
    finally:
        if created_db:
            _drop(args.pg_url, created_db)
        shutil.rmtree(tmp, ignore_errors=True)


def _drop(pg_url: str, name: str) -> None:
    import psycopg

    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def markdown(report: dict) -> str:  # type: ignore[type-arg]
    base = report["baseline"]
    lines = [
        "",
        f"### CSV import run ({time.strftime('%Y-%m-%d')}, {report['rows']:,} rows, {report['file_mb']:.0f} MB, {report['cpus']} CPUs)",
        "",
        "| what | rows/s | peak RSS | ratio to baseline |",
        "|---|---:|---:|---:|",
        f"| baseline: stdlib `csv.reader` only | {base['rows_per_s']:,.0f} | {base['peak_rss_mb']:.0f} MB | 1 |",
    ]
    door = report["door"]
    lines.append(f"| CSV door only: stream, parse, map, store (SQLite, no processing) | {door['rows_per_s']:,.0f} | {door['peak_rss_mb']:.0f} MB | {door['rows_per_s'] / base['rows_per_s']:.3f} |")
    for run in report["runs"]:
        lines.append(
            f"| `hub import-csv` on {run['db']} (stored + processed) | {run['rows_per_s']:,.0f} | {run['peak_rss_mb']:.0f} MB "
            f"| {run['rows_per_s'] / base['rows_per_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
