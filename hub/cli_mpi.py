"""`hub mpi …`: explain a pair, export the cross-reference, re-match everything, train the model.

Registered on `hub.cli.main` with one line. Output never carries patient values: explain prints
levels and weights, export prints enterprise ids beside source identifiers (what PIX shares).
"""

from __future__ import annotations

import csv
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy import Engine

from hub.settings import Settings


@contextmanager
def _engine(database_url: str | None) -> Iterator[Engine]:
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade

    settings = Settings(**({"database_url": database_url} if database_url else {}))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@click.group("mpi")
def mpi() -> None:
    """Master patient index: explain, export, rematch, train."""


@mpi.command()
@click.argument("a")
@click.argument("b")
@click.option("--database-url", help="HUB_DATABASE_URL")
def explain(a: str, b: str, database_url: str | None) -> None:
    """Why records A and B match or not, field by field (A, B: record ids or system|value)."""
    from hub.mpi.decide import format_explanation
    from hub.mpi.service import MpiError
    from hub.mpi.steward import explain as explain_pair
    from hub.store.uow import UnitOfWork

    with _engine(database_url) as engine, UnitOfWork(engine) as uow:
        try:
            click.echo(format_explanation(explain_pair(uow, a, b)))
        except MpiError as exc:
            raise click.ClickException(exc.text) from None


@mpi.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="CSV file (default: stdout)")
@click.option("--database-url", help="HUB_DATABASE_URL")
def export(out: Path | None, database_url: str | None) -> None:
    """CSV `enterprise_id,system,value`: one row per source identifier, grouped by person."""
    from hub.mpi.steward import export_rows
    from hub.store.uow import UnitOfWork

    handle = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    try:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["enterprise_id", "system", "value"])
        count = 0
        with _engine(database_url) as engine, UnitOfWork(engine) as uow:
            for row in export_rows(uow):
                writer.writerow(row)
                count += 1
    finally:
        if out:
            handle.close()
    click.echo(f"{count} source identifiers exported", err=True)


@mpi.command()
@click.option("--batch", "batch_size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              help="resume file (default: DATA_DIR/mpi-rematch.state); deleted when the run completes")
@click.option("--restart", is_flag=True, help="ignore the resume file and start from the first record")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a model file to match with (default: HUB_MPI_MODEL or the shipped model)")
@click.option("--database-url", help="HUB_DATABASE_URL")
def rematch(batch_size: int, state_path: Path | None, restart: bool, model_path: Path | None,
            database_url: str | None) -> None:
    """Re-evaluate every patient record's link (after a model or threshold change). Manual decisions
    stay as they are. Resumable: interrupted, it continues after the last committed batch."""
    from hub.mpi.model import load_model
    from hub.mpi.service import link_patients, use_model
    from hub.mpi.steward import _claim
    from hub.store.uow import UnitOfWork, utcnow

    model_path = model_path or Settings().mpi_model
    if model_path:
        use_model(load_model(model_path))
    state_path = state_path or Settings().data_dir / "mpi-rematch.state"
    after = "" if restart or not state_path.exists() else state_path.read_text(encoding="utf-8").strip()
    with _engine(database_url) as engine:
        with UnitOfWork(engine) as uow:
            total = uow.mpi.count_patient_records()
        done, started, last_report = 0, time.monotonic(), 0.0
        click.echo(f"re-matching {total} patient records" + (" (resuming)" if after else ""), err=True)
        while True:
            with UnitOfWork(engine) as uow:
                ids = uow.mpi.patient_records_after(after, batch_size)
                if not ids:
                    break
                _claim(uow)
                rows = list(uow.records.get_many(ids).values())
                link_patients(uow, rows, utcnow(), actor="rematch")
                uow.commit()
            after = ids[-1]
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(after, encoding="utf-8")
            done += len(ids)
            if time.monotonic() - last_report >= 2 or len(ids) < batch_size:
                last_report = time.monotonic()
                rate = done / max(time.monotonic() - started, 1e-6)
                click.echo(f"{done} records re-matched ({rate:.0f}/s)", err=True)
    state_path.unlink(missing_ok=True)
    click.echo(f"done: {done} records re-matched", err=True)


@mpi.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="model file to write (default: DATA_DIR/mpi-model-<version>.json)")
@click.option("--sample", default=200_000, show_default=True, type=click.IntRange(100, 5_000_000),
              help="at most this many patient records are read (a random sample when there are more)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--database-url", help="HUB_DATABASE_URL")
def train(out: Path | None, sample: int, seed: int, database_url: str | None) -> None:
    """Estimate m and u by EM on the stored patient records and write a new versioned model file.
    The shipped model is not replaced: point HUB_MPI_MODEL at the new file, then `hub mpi rematch`."""
    from hub.mpi.blocking import blocking_keys
    from hub.mpi.compare import features_of_data
    from hub.mpi.model import TermFrequencies
    from hub.mpi.service import current_model
    from hub.mpi.train import train as train_model
    from hub.store.uow import UnitOfWork

    rng = random.Random(seed)
    records = []
    with _engine(database_url) as engine, UnitOfWork(engine) as uow:
        after, seen = "", 0
        while True:
            ids = uow.mpi.patient_records_after(after, 5000)
            if not ids:
                break
            after = ids[-1]
            for row in uow.records.get_many(ids).values():
                seen += 1
                f = features_of_data(row.data)
                if len(records) < sample:
                    records.append(f)
                elif (j := rng.randrange(seen)) < sample:  # reservoir sampling: memory stays bounded
                    records[j] = f
    if len(records) < 100:
        raise click.ClickException(f"{len(records)} patient records stored; training needs at least 100")
    groups: dict[str, list[int]] = {}
    for n, f in enumerate(records):
        for key in blocking_keys(f):
            groups.setdefault(key, []).append(n)
    pairs = [(m[i], m[j]) for m in groups.values() if len(m) <= 50 for i in range(len(m)) for j in range(i + 1, len(m))]
    model = train_model(records, current_model(), pairs, seed=seed, trained_on=f"hub mpi train: {len(records)} stored records")
    # term frequencies of the stored names: sharing a surname half the records carry is worth less than a rare one
    model.term_frequencies = TermFrequencies.from_features(records, model.tf_fields, min_count=2)
    out = out or Settings().data_dir / f"mpi-model-{model.version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    click.echo(f"model {model.version} trained on {len(records)} records written to {out}")
