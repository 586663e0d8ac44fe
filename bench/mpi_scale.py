"""The master patient index at scale: the issue's online and bulk figures, each beside a baseline.

    python -m bench.mpi_scale                                  # 1,000,000 persons / rows, SQLite and PostgreSQL
    python -m bench.mpi_scale --persons 200000 --rows 200000   # what fits a loaded 2-core machine
    python -m bench.mpi_scale --skip-bulk --db sqlite --markdown-out docs/benchmarks.md

Online (per database): a fresh database is loaded with `--persons` persons, one source record each —
set-up, not the measurement: generated straight into the records, persons, links and blocking-key
tables through `hub.store` in large batches (no record versions or search index rows: matching does
not read them). The population is invented (`population`): mpi_synth's given names, cities and
streets, its ten common surnames at real-world shares (0.3–0.8 % each) and ~20,000 invented rarer
ones, phones spread over a million numbers, a national id on 70 %. Then `--incoming` records of
`bench/mpi_synth.py` (its error processes: later records of one synthetic person should link to the
first) arrive one per transaction, exactly as processing handles a one-message batch: write the
record, `link_batch` (as processing calls it), commit. Reported: p50/p99/max of the match step alone
and of the whole transaction, and as baseline the same transaction without the match step (`--incoming` other records
written and committed alone).

Bulk: `hub import-csv` (subprocess, its peak RSS) of `--rows` rows written from mpi_synth records
into the registry mapping's columns (`mappings/csv/registry.yaml`), on a fresh database, including
matching; baseline: the stdlib csv module over the same file and the CSV door alone (store without
processing), both from `bench/csv_import.py`. Then the persons it made are scored against the generator's
truth (`bulk_quality`): matching quality at that scale, beside the time.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench import mpi_synth
from bench.csv_import import HEADER, ROOT, baseline, count_records, door_only
from hub.mpi.blocking import blocking_keys
from hub.mpi.compare import features_of_data
from hub.mpi.service import link_batch
from hub.mpi.survivorship import SourceRecord, golden
from hub.store import mpi as mpi_tables
from hub.store.driver import insert_many
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.tables import records
from hub.store.uow import RecordChanges, RecordRow, UnitOfWork

CHUNK = 20_000
SYLLABLES = ["bar", "ton", "wick", "ley", "ford", "mar", "shaw", "dell", "vane", "rig", "holt", "brook", "mere", "stead", "wyn", "ash", "quill", "fen", "rowe", "cot"]


# --- the population (online set-up) ------------------------------------------------------------


def _surnames(rng: random.Random) -> tuple[list[str], list[float]]:
    """mpi_synth's common surnames at real-world shares, then ~20,000 invented ones sharing the rest."""
    common = mpi_synth.SURNAMES_COMMON
    shares = [0.008, 0.007, 0.006, 0.005, 0.005, 0.004, 0.004, 0.004, 0.003, 0.003]
    invented = sorted({"".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize() for _ in range(25_000)})
    rest = (1.0 - sum(shares)) / len(invented)
    return common + invented, shares + [rest] * len(invented)


def population(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """`n` canonical Patient objects (JSON), one per invented person, valid as stored records."""
    rng = random.Random(seed)
    names, weights = _surnames(rng)
    families = rng.choices(names, weights, k=n)
    for i in range(n):
        gender = rng.choice(("male", "female"))
        given = [rng.choice(mpi_synth.MALE if gender == "male" else mpi_synth.FEMALE)]
        if rng.random() < 0.4:
            given.append(rng.choice(mpi_synth.MALE if gender == "male" else mpi_synth.FEMALE))
        city, state, prefix = rng.choice(mpi_synth.CITIES)
        identifiers = [{"system": "urn:hub:bench:mrn", "value": f"P{i:08d}", "type": "MR"}]
        if rng.random() < 0.7:
            identifiers.append({"system": "urn:hub:national-id", "value": f"8{rng.randrange(10**8):08d}", "type": "SS"})
        telecoms = [{"system": "phone", "value": f"{rng.choice(mpi_synth.AREA_CODES)}{rng.randrange(2_000_000, 9_999_999)}"}]
        if rng.random() < 0.35:
            telecoms.append({"system": "email", "value": f"p{i}.{seed}@example.net"})
        yield {
            "identifiers": identifiers,
            "names": [{"use": "official", "family": families[i], "given": given}],
            "birth_date": f"{rng.randrange(1930, 2024)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            "gender": gender,
            "addresses": [{"line": [f"{rng.randrange(1, 9999)} {rng.choice(mpi_synth.STREETS)} St"], "city": city,
                           "state": state, "postal_code": f"{prefix}{rng.randrange(100):02d}"}],
            "telecoms": telecoms,
            "active": True,
        }


def load_population(url: str, n: int, seed: int) -> float:
    """Bulk-insert `n` persons (record, person, link, blocking keys each); returns the seconds spent."""
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    at = datetime.now(UTC)
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        rows, persons, links, keys = [], [], [], []
        for data in batch:
            record_id, person_id = str(uuid.uuid4()), str(uuid.uuid4())
            mrn = data["identifiers"][0]["value"]
            rows.append({"id": record_id, "kind": "patient", "source_system": "urn:hub:bench:mrn", "source_value": mrn,
                         "patient_id": None, "version": 1, "active": True, "data": data, "feed": "bench",
                         "message_id": None, "created_at": at, "updated_at": at, "resource": None, "deleted": False})
            golden_data, provenance = golden([SourceRecord(record_id, "bench", at, data)])
            persons.append({"id": person_id, "data": golden_data, "provenance": provenance, "active": True,
                            "merged_into": None, "version": 1, "created_at": at, "updated_at": at})
            links.append({"record_id": record_id, "person_id": person_id, "how": "new", "score": None,
                          "model_version": None, "replaced_by": None, "updated_at": at})
            keys.extend((key[:200], record_id) for key in blocking_keys(features_of_data(data)))
        with engine.begin() as conn:
            insert_many(conn, records, rows)
            insert_many(conn, mpi_tables.persons, persons)
            insert_many(conn, mpi_tables.links, links)
            insert_many(conn, mpi_tables.keys, keys, ("key", "record_id"))
        batch.clear()

    for i, data in enumerate(population(n, seed), 1):
        batch.append(data)
        if len(batch) == CHUNK:
            flush()
            if i % 100_000 == 0:
                print(f"  loaded {i:,} persons ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if batch:
        flush()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


# --- online: one record per transaction ---------------------------------------------------------


def _row(data: dict[str, Any], system: str, value: str, feed: str, at: datetime) -> RecordRow:
    return RecordRow(str(uuid.uuid4()), "patient", system, value, None, 1, True, data, feed, None, at, at)


def online(url: str, incoming: int, seed: int) -> dict[str, Any]:
    """Time `incoming` mpi_synth records arriving one per transaction, and the same without matching."""
    engine = make_engine(url)
    synth = mpi_synth.generate(max(incoming // 2, 1), seed)
    arrivals = synth.records[:incoming]
    match, whole, alone = [], [], []
    bands: dict[str, int] = {}
    for rec in arrivals:
        at = datetime.now(UTC)
        data = rec.patient.model_dump(mode="json", exclude_none=True)
        row = _row(data, f"urn:hub:{rec.feed.lower()}", str(rec.record_id), rec.feed.lower(), at)
        began = time.perf_counter()
        with UnitOfWork(engine) as uow:
            changes = RecordChanges(inserted=[row])
            uow.records.write(changes)
            linking = time.perf_counter()
            link_batch(uow, changes, (), at)
            match.append(time.perf_counter() - linking)
            uow.commit()
        whole.append(time.perf_counter() - began)
        # the baseline: another record (same data, its own identifier) written and committed, no match step
        other = _row(data, "urn:hub:bench:baseline", str(rec.record_id), "baseline", at)
        began = time.perf_counter()
        with UnitOfWork(engine) as uow:
            uow.records.write(RecordChanges(inserted=[other]))
            uow.commit()
        alone.append(time.perf_counter() - began)
    how = mpi_tables.links.c.how
    with engine.connect() as conn:
        bands.update(conn.execute(select(how, func.count()).where(how != "new").group_by(how)).all())
    engine.dispose()
    return {"records": len(arrivals), "match": _stats(match), "whole": _stats(whole), "alone": _stats(alone),
            "links_by_how": bands}


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))], "max": ms[-1],
            "mean": statistics.fmean(ms)}


# --- bulk: hub import-csv -------------------------------------------------------------------------


@dataclass
class Truth:
    """Who each CSV row really is: its registry id → synthetic person, and the related person pairs."""

    person_of: dict[str, int]
    hard_negatives: dict[tuple[int, int], str]


def write_csv(path: Path, rows: int, seed: int) -> Truth:
    """`rows` registry rows from mpi_synth records (about 2.4 records per synthetic person)."""
    synth = mpi_synth.generate(max(rows * 10 // 24, 1), seed)
    truth = Truth({}, synth.hard_negatives)
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for i in range(rows):
            rec = synth.records[i % len(synth.records)]
            row_id = f"{rec.feed[0]}{rec.record_id:08d}" + (f"-{i // len(synth.records)}" if i >= len(synth.records) else "")
            truth.person_of[row_id] = rec.person_id
            p = rec.patient
            name = p.names[0] if p.names else None
            given = name.given if name else []
            address = p.addresses[0] if p.addresses else None
            phones = [t.value for t in p.telecoms if t.system == "phone"]
            emails = [t.value for t in p.telecoms if t.system == "email"]
            nids = [x.value for x in p.identifiers if x.type == "SS"]
            dob = (p.birth_date or "").replace("-", "") if len(p.birth_date or "") == 10 else (p.birth_date or "")
            out.writerow([
                row_id,
                (name.family or "") if name else "", given[0] if given else "", given[1] if len(given) > 1 else "",
                dob, {"male": "M", "female": "F"}.get(p.gender or "", "U"), "",
                address.line[0] if address and address.line else "", "", (address.city or "") if address else "",
                (address.postal_code or "") if address else "", (address.state or "") if address else "",
                phones[0] if phones else "", emails[0] if emails else "", nids[0] if nids else "",
            ])
    return truth


def bulk_quality(url: str, truth: Truth) -> dict[str, Any]:
    """How right the persons a bulk import made are, against the generator's truth: pairwise precision
    and recall over source-record pairs (a pair is linked when both records belong to one person),
    the records auto-linked to a person that holds no other record of their synthetic person, and the
    linked pairs of related persons (twins, Jr/Sr, spouses …) by kind. Matching quality at a million
    records is not the quality at `bench/mpi_quality.py`'s few thousand: the more persons, the more
    namesakes born the same day."""
    engine = make_engine(url)
    members: dict[str, list[int]] = {}
    auto: list[tuple[str, int]] = []
    with engine.connect() as conn:
        rows = conn.execute(select(records.c.source_value, mpi_tables.links.c.person_id, mpi_tables.links.c.how)
                            .join(mpi_tables.links, mpi_tables.links.c.record_id == records.c.id))
        for value, person, how in rows:
            members.setdefault(person, []).append(truth.person_of[value])
            if how == "auto":
                auto.append((person, truth.person_of[value]))
    engine.dispose()
    linked = correct = 0
    related: Counter[str] = Counter()
    for people in members.values():
        linked += len(people) * (len(people) - 1) // 2
        count = Counter(people)
        correct += sum(n * (n - 1) // 2 for n in count.values())
        ranked = sorted(count)
        for i, a in enumerate(ranked):
            for b in ranked[i + 1 :]:
                kind = truth.hard_negatives.get((a, b)) or truth.hard_negatives.get((b, a))
                if kind:
                    related[kind] += count[a] * count[b]
    true_pairs = sum(n * (n - 1) // 2 for n in Counter(truth.person_of.values()).values())
    wrong_auto = sum(1 for person, real in auto if members[person].count(real) == 1)
    return {"persons": len(members), "pair_precision": correct / linked if linked else 1.0,
            "pair_recall": correct / true_pairs if true_pairs else 1.0, "auto_links": len(auto),
            "auto_links_alone": wrong_auto, "related_pairs_linked": dict(related)}


_IMPORT = (
    "import resource,subprocess,sys,time\n"
    "t=time.perf_counter()\n"
    "p=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
    "dt=time.perf_counter()-t\n"
    "sys.stderr.write(p.stderr[-3000:])\n"
    "u=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(p.returncode, dt, u.ru_maxrss, u.ru_utime + u.ru_stime)\n"
    "print(p.stdout)\n"
)


def run_import(path: Path, env: dict[str, str], chunk_rows: int | None) -> dict[str, Any]:
    """`hub import-csv` in a subprocess: wall seconds, peak RSS and CPU seconds (user + system) of the
    import process — on a shared machine its CPU time per row is the steadier figure. (PostgreSQL's own
    CPU, in the server's processes, is not in it.)"""
    cmd = [sys.executable, "-c", _IMPORT, sys.executable, "-m", "hub", "import-csv", str(path), "--mapping", "registry"]
    if chunk_rows:
        cmd += ["--chunk-rows", str(chunk_rows)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    first, *rest = result.stdout.splitlines()
    rc, seconds, rss, cpu = first.split()
    if int(rc) != 0:
        raise SystemExit(f"import failed (exit {rc}):\n{result.stderr[-3000:]}")
    return {"seconds": float(seconds), "peak_rss_mb": int(rss) / 1024, "cpu_seconds": float(cpu),
            "summary": " ".join(rest).strip()}


def bulk(path: Path, db: str, tmp: Path, pg_url: str | None, chunk_rows: int | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_DATA_DIR"] = str(tmp / f"bulk_{db}")
    env["HUB_LOG_LEVEL"] = "WARNING"
    env["HUB_DATABASE_URL"] = pg_url or f"sqlite:///{tmp / f'bulk_{db}' / 'hub.db'}"
    result = run_import(path, env, chunk_rows)
    return {**result, "patients": count_records(env["HUB_DATABASE_URL"])}


# --- driver ------------------------------------------------------------------------------------------


def _databases(which: str, tmp: Path) -> Iterator[tuple[str, str]]:
    """(name, fresh URL) per database; a PostgreSQL database is dropped once its run is over."""
    if which in ("sqlite", "both"):
        yield "sqlite", f"sqlite:///{tmp / f'online_{uuid.uuid4().hex[:6]}.db'}"
    if which in ("postgres", "both"):
        from tests.conftest import create_postgres_database, drop_postgres_database

        url = create_postgres_database()
        try:
            yield "postgresql", url
        finally:
            drop_postgres_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=1_000_000, help="persons already known (online)")
    parser.add_argument("--incoming", type=int, default=2000, help="records arriving one per transaction")
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows for the bulk import")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--skip-bulk", action="store_true")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--chunk-rows", type=int, help="`hub import-csv --chunk-rows` (rows per stored message and processing batch)")
    parser.add_argument("--markdown-out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hub_mpi_scale_"))
    report: list[str] = []
    try:
        if not args.skip_online:
            for db, url in _databases(args.db, tmp):
                loaded = load_population(url, args.persons, args.seed)
                print(f"{db}: {args.persons:,} persons loaded in {loaded:.0f} s", file=sys.stderr)
                result = online(url, args.incoming, args.seed)
                print(f"{db} online: {result}", file=sys.stderr)
                report.append(_online_row(db, args.persons, loaded, result))
        if not args.skip_bulk:
            path = tmp / "registry.csv"
            truth = write_csv(path, args.rows, args.seed)
            base = baseline(path)
            door = door_only(path, f"sqlite:///{tmp / 'door.db'}")
            print(f"bulk baseline: csv module {base['seconds']:.1f} s; CSV door alone {door['seconds']:.1f} s", file=sys.stderr)
            for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
                pg = None
                if db == "postgres":
                    from tests.conftest import (
                        create_postgres_database,
                        drop_postgres_database,
                    )

                    pg = create_postgres_database()
                try:
                    result = bulk(path, db, tmp, pg, args.chunk_rows)
                    result["quality"] = bulk_quality(pg or f"sqlite:///{tmp / f'bulk_{db}' / 'hub.db'}", truth)
                finally:
                    if pg:
                        drop_postgres_database(pg)
                print(f"{db} bulk: {result}", file=sys.stderr)
                report.append(_bulk_row(db, args.rows, result, base, door))
        text = _markdown(args, report)
        print(text)
        if args.markdown_out:
            with open(args.markdown_out, "a", encoding="utf-8") as f:
                f.write(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _online_row(db: str, persons: int, loaded: float, r: dict[str, Any]) -> str:
    m, w, a = r["match"], r["whole"], r["alone"]
    return (f"| online, {db} | {persons:,} persons (loaded in {loaded:.0f} s); {r['records']:,} arrivals, "
            f"{sum(r['links_by_how'].values()):,} linked to an earlier record | match step p50 {m['p50']:.1f} / "
            f"p99 {m['p99']:.1f} / max {m['max']:.0f} ms; whole transaction p50 {w['p50']:.1f} / p99 {w['p99']:.1f} ms "
            f"| same transaction without matching: p50 {a['p50']:.1f} / p99 {a['p99']:.1f} ms |")


def _bulk_row(db: str, rows: int, r: dict[str, Any], base: dict[str, float], door: dict[str, float]) -> str:
    q = r["quality"]
    return (f"| bulk `hub import-csv`, {db} | {rows:,} rows → {r['patients']:,} patient records | "
            f"{r['seconds']:.0f} s ({rows / r['seconds']:,.0f} rows/s, {r['seconds'] * 1000 / rows:.2f} ms a row; "
            f"CPU {r['cpu_seconds'] * 1000 / rows:.2f} ms a row), "
            f"peak RSS {r['peak_rss_mb']:.0f} MB | stdlib csv alone {base['seconds']:.1f} s; CSV door alone "
            f"(store, no processing, SQLite) {door['seconds']:.0f} s |\n"
            f"| the persons it made, against the generator's truth | {q['persons']:,} persons | pairwise precision "
            f"{q['pair_precision']:.4f}, recall {q['pair_recall']:.4f}; {q['auto_links_alone']:,} of {q['auto_links']:,} "
            f"auto-links put a record with none of its own; related persons' pairs linked: {q['related_pairs_linked'] or 'none'} "
            f"| `bench/mpi_quality.py` (5,000 persons): precision 1.0000 at the shipped thresholds |")


def _markdown(args: argparse.Namespace, rows: list[str]) -> str:
    head = [
        "",
        f"### mpi_scale run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        (f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, {platform.system()} "
         f"{platform.machine()}, load average {os.getloadavg()[0]:.1f} at the end (machine shared with other work)"),
        (f"- command: `python -m bench.mpi_scale --persons {args.persons} --incoming {args.incoming} --rows {args.rows} "
         f"--db {args.db}{f' --chunk-rows {args.chunk_rows}' if args.chunk_rows else ''}{' --skip-online' if args.skip_online else ''}{' --skip-bulk' if args.skip_bulk else ''}`"),
        "",
        "| what | size | measured | baseline (same run) |",
        "|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    main()
