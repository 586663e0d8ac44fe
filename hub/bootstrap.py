"""The one place that wires settings, storage, the pipeline, the doors and the listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import uvicorn
from sqlalchemy import Engine, text

from adapters.inbound.csv.reader import read_chunk
from adapters.inbound.fhir.reader import read_request
from adapters.inbound.fhir.service import FhirDoor
from adapters.inbound.hl7v2.reader import read_message
from adapters.inbound.hl7v2.service import Hl7v2Door
from adapters.outbound.hl7v2.ack import AckMode
from adapters.transport.mllp import MllpConfig, MllpServer
from hub.access import PatientData
from hub.delivery.embedded import EmbeddedDelivery
from hub.delivery.engine import DeliveryEngine, TransportFactory
from hub.delivery.outbox import Planner, Routing, RoutingUnitOfWork
from hub.intake import Intake
from hub.mpi.service import use_model_file
from hub.processor import ProcessorLink, Report
from hub.routing.reload import (
    default_pid_file,
    reload_routes,
    remove_pid_file,
    write_pid_file,
)
from hub.settings import Settings
from hub.store.engine import make_engine, writer_turns
from hub.store.migrate import is_current, upgrade
from hub.store.uow import UnitOfWork

log = logging.getLogger("hub")


@dataclass
class Hub:
    settings: Settings
    engine: Engine
    intake: Intake
    http_door: Hl7v2Door
    mllp_door: Hl7v2Door
    patient_data: PatientData
    mllp: MllpServer | None = None
    http_server: uvicorn.Server | None = None
    _migrated: bool = field(default=False, repr=False)
    fhir_door: FhirDoor | None = None
    routing: Routing = field(default_factory=Routing)
    """The current routes (planner) and who processing nudges; `routes` holds their destinations."""
    routes: Any = None
    readers: dict[str, Any] = field(default_factory=dict)
    routes_from_file: bool = True
    """False when `build` was handed routes or a planner (tests): only this process has them, so it processes."""
    delivery: EmbeddedDelivery | None = None
    """The in-process delivery loop (no HUB_REDIS_URL); None when dramatiq workers deliver."""

    def destinations(self) -> dict[str, Any]:
        return dict(self.routes.destinations) if self.routes is not None else {}

    def readiness(self) -> dict[str, str]:
        checks = {"database": "ok", "migrations": "ok", "mllp": "ok"}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self._migrated = self._migrated or is_current(self.engine)
            checks["migrations"] = "ok" if self._migrated else "pending"
        except Exception as exc:  # noqa: BLE001 — report, do not raise
            checks["database"] = f"unreachable ({type(exc).__name__})"
            checks["migrations"] = "unknown"
        checks["mllp"] = "ok" if self.mllp is not None and self.mllp.serving else "down"
        checks["processing"] = "ok" if self.intake.processing_ready else "starting"
        return checks


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its own shutdown, which would skip ours: we handle signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _stop_on_signals(server: uvicorn.Server) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # embedded (tests): the owner sets should_exit
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))


def _reload_on_sighup(hub: Hub) -> None:
    """SIGHUP: load the routes file again (off the event loop; a bad file keeps the current routes)."""
    if threading.current_thread() is not threading.main_thread():
        return  # embedded (tests): POST /api/routes/reload does the same

    def reload() -> None:
        try:
            reload_routes(hub)
        except Exception as exc:  # noqa: BLE001 — never let a reload take the server down
            log.error("reloading the routes failed (%s); the current routes stay", type(exc).__name__)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload))


def load_route_table(settings: Settings) -> Any:
    """The routes file (`HUB_ROUTES`) as a RouteTable, or None when there is no such file (no routes:
    processing writes no outbox rows). A file with errors stops the start (RoutesError, file:line)."""
    if not settings.routes.exists():
        return None
    from hub.routing import load_routes

    return load_routes(settings.routes)


def inbound_readers() -> dict[str, Any]:
    """Each stored format's full read (bytes → canonical events), for processing.
    A stored CSV chunk is re-read with the mapping of its feed; one whose mapping cannot be found is marked failed."""
    return {"hl7v2": read_message, "csv": read_chunk, "fhir": read_request}


def build(
    settings: Settings, *, planner: Planner | None = None, routes: Any = None,
    transports: TransportFactory | None = None, sweep_every: float = 1.0, bulk_load: bool = False,
) -> Hub:
    """`planner`/`routes`/`transports` replace the routes file and the real transports (tests); `bulk_load`:
    the database engine is set up for a bulk load (`hub import-csv`, `hub.store.engine.make_engine`)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database, bulk_load=bulk_load)
    use_model_file(settings.mpi_model)  # HUB_MPI_MODEL: the model the master patient index matches with
    readers = inbound_readers()
    injected = routes if routes is not None else planner
    routes = routes if injected is not None else load_route_table(settings)
    routing = Routing(planner=planner or (routes.plan if routes is not None else None), table=routes)
    intake = Intake(partial(RoutingUnitOfWork, engine, routing), readers=readers, max_lag=settings.processing_max_lag)
    mode = AckMode(settings.mllp_ack_mode)
    hub = Hub(
        settings=settings,
        engine=engine,
        intake=intake,
        http_door=Hl7v2Door(intake.accept, feed="http"),
        mllp_door=Hl7v2Door(intake.accept, feed="mllp", mode=mode),
        patient_data=PatientData(engine, before_read=intake.wait_processed),
        fhir_door=FhirDoor(partial(intake.accept_with_result, timeout=settings.fhir_write_timeout)),
        routing=routing,
        routes=routes,
        readers=readers,
        routes_from_file=injected is None,
    )
    _wire_delivery(hub, transports, sweep_every)
    return hub


def _wire_delivery(hub: Hub, transports: TransportFactory | None, sweep_every: float) -> None:
    """Embedded: the delivery loop runs in `hub serve`. With Redis: processing nudges dramatiq workers."""
    if hub.settings.redis_url:
        from hub import jobs

        jobs.configure(hub.settings.redis_url, hub.settings.redis_namespace)
        hub.routing.notify = jobs.nudge
        return
    if transports is None:
        from adapters.transport.delivery import make_transport

        transports = make_transport
    blocking = hub.intake.on_writer if hub.engine.dialect.name == "sqlite" else asyncio.to_thread
    engine = DeliveryEngine(partial(UnitOfWork, hub.engine, durable=False), hub.destinations, transports, blocking=blocking)
    hub.delivery = EmbeddedDelivery(engine, sweep_every=sweep_every)
    hub.routing.notify = hub.delivery.notify


def _processing_process(hub: Hub) -> bool:
    """HUB_PROCESSING_PROCESS, by default on with PostgreSQL only (see Settings); never for a hub built
    with routes or a planner handed in, which only this process has."""
    wanted = hub.settings.processing_process
    return hub.routes_from_file and (wanted if wanted is not None else hub.engine.dialect.name == "postgresql")


def _start_processor(hub: Hub) -> ProcessorLink:
    """Processing in a child process: the intake nudges it and follows its reports; its new outbox rows
    nudge delivery here (embedded) or the workers (dramatiq), as processing here would have."""

    def on_report(report: Report) -> None:
        hub.intake.processed_elsewhere(report.processed_upto)
        if report.destinations and hub.routing.notify is not None:
            hub.routing.notify(report.destinations)

    link = ProcessorLink(hub.settings, on_report)
    link.start()
    turns = writer_turns(hub.engine)
    hub.intake.process_elsewhere(link, turns.turn if turns is not None else None)
    hub.routing.reloaded = link.reload_routes
    return link


async def serve(hub: Hub, started: asyncio.Event | None = None) -> None:
    """Run the HTTP API and the MLLP listener until SIGINT/SIGTERM."""
    from hub.api.app import create_app

    settings = hub.settings
    upgrade(hub.engine)
    processor = _start_processor(hub) if _processing_process(hub) else None
    await hub.intake.start()
    if hub.delivery is not None:
        await hub.delivery.start()
    hub.mllp = MllpServer(
        MllpConfig(settings.mllp_host, settings.mllp_port, settings.mllp_max_frame_bytes, settings.mllp_idle_timeout),
        hub.mllp_door.on_frame,
        hub.mllp_door.on_oversize,
    )
    await hub.mllp.start()
    config = uvicorn.Config(
        create_app(hub), host=settings.http_host, port=settings.http_port, log_level=settings.log_level.lower(),
        access_log=False, lifespan="off",
    )
    server = hub.http_server = _Server(config)
    _stop_on_signals(server)
    _reload_on_sighup(hub)
    pid_file = settings.pid_file or default_pid_file(settings.data_dir)
    write_pid_file(pid_file)
    log.info("MLLP on %s:%d, HTTP on %s:%d", settings.mllp_host, hub.mllp.port, settings.http_host, settings.http_port)
    if started is not None:
        started.set()
    try:
        await server.serve()
    finally:
        remove_pid_file(pid_file)
        await hub.mllp.stop()
        await hub.intake.stop()
        if processor is not None:
            await processor.stop()
        if hub.delivery is not None:
            await hub.delivery.stop()
        hub.engine.dispose()
