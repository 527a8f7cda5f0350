"""The embedded stack: NATS and Postgres from their wheels in one data folder,
plus the API, scheduler, projector and simulated agents in this process.

One stack per data folder: an exclusive lock on ``<data-dir>/lock`` is held
while it runs (the kernel drops it when the process dies, even by SIGKILL).
A Postgres left running by a killed stack is reused; a stale NATS is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from agents.runners import SimulateRunner
from eventstore import EventStore
from eventstore.errors import QgjobError
from projections.schema import connect_pool, migrate
from qgjob.api.auth import create_token, hash_token
from qgjob.services import AgentRunner, ApiService, ProjectorService, SchedulerRunner
from qgjob.settings import TARGETS, Credentials, Settings, read_credentials, write_credentials
from qgjob.stack.servers import NatsServer, PostgresServer, free_port
from scheduler import policy

log = logging.getLogger(__name__)


class StackBusy(QgjobError):
    """Another qgjob stack is already running on this data folder."""


class _Ports(msgspec.Struct):
    nats: int = 0
    api: int = 0


@dataclass
class StackOptions:
    api_port: int = 8765
    agents_per_target: int = 1
    test_seconds: float = 0.5
    install_seconds: float = 2.0
    simulate_file: Path | None = None
    durable: bool = True
    orgs: tuple[str, ...] = ()
    lease_s: float = 15.0
    retry_backoff_s: float = 1.0
    install_value_s: float = 0.0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EmbeddedStack:
    def __init__(self, data_dir: Path, options: StackOptions | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.options = options or StackOptions()
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self.credentials: Credentials | None = None
        self.settings: Settings | None = None
        self._lock_fd: int | None = None

    # --- servers --------------------------------------------------------------

    def lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StackBusy(
                f"another qgjob stack (pid {holder}) is running on {self.data_dir}; "
                "stop it first or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _ports(self) -> _Ports:
        path = self.data_dir / "ports.json"
        try:
            saved = msgspec.json.decode(path.read_bytes(), type=_Ports)
        except (OSError, msgspec.DecodeError):
            saved = _Ports()
        nats_port = saved.nats if saved.nats and _port_free(saved.nats) else free_port()
        api_port = self.options.api_port
        if api_port == 0:
            api_port = saved.api if saved.api and _port_free(saved.api) else free_port()
        ports = _Ports(nats=nats_port, api=api_port)
        path.write_bytes(msgspec.json.encode(ports))
        return ports

    def start_servers(self, *, nats_url: str | None = None, database_url: str | None = None) -> tuple[str, str, int]:
        """Start (or reuse) NATS and Postgres, unless their URLs are given;
        returns the URLs and the API port."""
        ports = self._ports()
        if not _port_free(ports.api):
            raise QgjobError(f"port {ports.api} is in use on 127.0.0.1; pass another --port")
        if nats_url is None:
            (self.data_dir / "nats").mkdir(exist_ok=True)
            self.nats = NatsServer(self.data_dir / "nats", port=ports.nats)
            nats_url = self.nats.start()
        if database_url is None:
            (self.data_dir / "postgres").mkdir(exist_ok=True)
            self.postgres = PostgresServer(self.data_dir / "postgres", durable=self.options.durable)
            database_url = self.postgres.start()
        return nats_url, database_url, ports.api

    def stop_servers(self) -> None:
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except Exception as exc:
                log.warning("stopping Postgres: %s", exc)
        if self.nats is not None:
            self.nats.stop()

    # --- bootstrap ------------------------------------------------------------

    async def bootstrap(self, nats_url: str, dsn: str, api_port: int) -> Credentials:
        """Stream, schema and an admin token; writes the credentials file."""
        store = await EventStore.connect(nats_url, name="qgjob-up")
        try:
            await store.ensure_stream()
            if self.nats is not None:
                self.nats.stage_batches_in_memory(store.stream)
            pool = await connect_pool(dsn, "qgjob", max_size=1)
            try:
                async with pool.acquire() as conn:
                    await migrate(conn, "qgjob")
            finally:
                await pool.close()
            earlier = read_credentials(self.data_dir)
            known = await _known_token_hashes(store)
            token = earlier.admin_token if earlier is not None and hash_token(earlier.admin_token) in known else None
            if token is None:
                token, _ = await create_token(store, org_id=None, admin=True)
            org_tokens: dict[str, str] = {}
            for org_id in self.options.orgs:
                kept = (earlier.org_tokens if earlier is not None else {}).get(org_id)
                if kept is None or hash_token(kept) not in known:
                    kept, _ = await create_token(store, org_id=org_id, admin=False)
                org_tokens[org_id] = kept
        finally:
            await store.close()
        creds = Credentials(
            url=f"http://127.0.0.1:{api_port}",
            token=token,
            admin_token=token,
            nats_url=nats_url,
            database_url=dsn,
            pid=os.getpid(),
            org_tokens=org_tokens,
        )
        write_credentials(self.data_dir, creds)
        self.credentials = creds
        self.settings = Settings(url=creds.url, token=token, nats_url=nats_url, database_url=dsn)
        return creds

    def services(self) -> list[Any]:
        if self.settings is None or self.credentials is None:
            raise QgjobError("the stack is not bootstrapped")
        port = int(self.credentials.url.rsplit(":", 1)[1])
        out: list[Any] = [
            ProjectorService(self.settings),
            SchedulerRunner(
                self.settings,
                policy.Config(
                    retry_backoff_s=self.options.retry_backoff_s, install_value_s=self.options.install_value_s
                ),
                lease_s=self.options.lease_s,
            ),
            ApiService(self.settings, port=port),
        ]
        opts = self.options
        for target in TARGETS:
            for n in range(1, opts.agents_per_target + 1):
                if opts.simulate_file is not None:
                    runner = SimulateRunner.from_file(
                        opts.simulate_file, duration_s=opts.test_seconds, install_s=opts.install_seconds
                    )
                else:
                    runner = SimulateRunner(duration_s=opts.test_seconds, install_s=opts.install_seconds)
                out.append(
                    AgentRunner(
                        self.settings, agent_id=f"{target}-{n}", target=target, runner=runner, lease_s=opts.lease_s
                    )
                )
        return out


async def _known_token_hashes(store: EventStore) -> set[str]:
    """The token hashes the stream holds (the data folder may be new)."""
    known: set[str] = set()
    async with contextlib.aclosing(store.read(f"{store.subjects.prefix}.token.*")) as records:
        async for rec in records:
            digest = getattr(rec.event, "sha256", None)
            if digest is not None:
                known.add(digest)
    return known
