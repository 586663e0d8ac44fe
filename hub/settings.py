"""Configuration from the environment (`HUB_*`), overridable by `hub serve` flags."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    """Default: SQLite file `hub.db` in the data directory."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_max_frame_bytes: int = 16 * 1024 * 1024
    mllp_idle_timeout: float = 300.0
    mllp_ack_mode: str = "original"
    """`original` (AA/AE/AR always) or `enhanced` (honour MSH-15/16 with CA/CE/CR)."""
    redis_url: str | None = None
    """Unset: the embedded in-process queue."""
    redis_namespace: str = "hub"
    """Prefix of the delivery queue's Redis keys (hub serve and hub worker must agree)."""
    routes: Path = Path("mappings/routes.yaml")
    pid_file: Path | None = None
    """Where `hub serve` writes its process id (`hub routes reload` signals it); default `<data_dir>/hub.pid`."""
    fhir_write_timeout: float = 30.0
    """How long a FHIR write waits for its processing (another hub process may hold the processing lock)
    before it is answered 503 with Retry-After; the write stays stored and is applied later."""
    processing_max_lag: float | None = None
    """Seconds a burst (backlogged senders) may leave processing behind before it takes turns with
    storing (routing within a bounded delay, at some cost to ACK throughput under saturation); unset:
    a burst is processed in its pauses and one turn a second. A stream is processed while it lasts either way."""
    processing_process: bool | None = None
    """HUB_PROCESSING_PROCESS: `hub serve` maps, matches and routes in a child process of its own (a second
    core for processing, see hub/processor.py); false: on the intake's writer thread, between store batches.
    Unset: on with PostgreSQL; off with SQLite, whose one write lock the two processes would share (a
    burst's ACKs then wait for processing: measured 1,176 → ~420 msg/s; a stream near capacity gains:
    ~300 → ~400 msg/s delivered, p99 ~0.2 s → ~0.07 s)."""
    log_level: str = "INFO"
    mpi_model: Path | None = None
    """HUB_MPI_MODEL: the master patient index's model file (`hub mpi train` writes one); unset: the
    shipped `mappings/mpi/model.json`."""

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hub.db').resolve()}"
