"""Running each service: the API, scheduler, projector and agents.

``qgjob serve`` runs one of them in its own process; ``qgjob up`` runs them all
in one process beside its embedded NATS and Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Protocol, TypeVar

import uvicorn

from agents.agent import Agent
from agents.runners import Runner
from eventstore import metrics as store_metrics
from eventstore.tasks import cancel_and_wait
from projections.projector import Projector
from projections.schema import close_pool, migrate
from qgjob.api.app import create_app
from qgjob.readiness import open_pool, open_store
from qgjob.settings import Settings
from scheduler import policy
from scheduler.leader import Leadership
from scheduler.service import SchedulerService

log = logging.getLogger(__name__)
T = TypeVar("T")
store_metrics.install()  # every service records its appends' latency


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose this process's metrics at http://host:port/metrics (port 0: not at all)."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host)
        log.info("metrics at http://%s:%s/metrics", host, port)


class Service(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


class ApiService:
    """uvicorn serving the API inside the current event loop."""

    def __init__(
        self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning"
    ) -> None:
        config = uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level=log_level,
            log_config=None,  # uvicorn logs through the handler the CLI configured (text or JSON)
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        self.app = config.app
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

    async def run(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        changes = self.app.state.api.changes
        if changes is not None:
            changes.shutdown()  # end open /v1/stream responses so the server can drain
        self.server.should_exit = True

    @property
    def started(self) -> bool:
        return bool(self.server.started)


class ProjectorService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.projector: Projector | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        store = await open_store(self.settings, "qgjob-projector", self._stop)
        if store is None:
            return
        try:
            pool = await open_pool(self.settings, self._stop, max_size=2, name="qgjob-projector", synchronous=False)
            if pool is None:
                return
            try:
                async with pool.acquire() as conn:
                    await migrate(conn, self.settings.schema)
                self.projector = Projector(store, pool, durable=f"projector_{self.settings.schema}")
                if self._stop.is_set():
                    return
                await self.projector.run()
            finally:
                await close_pool(pool)
        finally:
            await store.close()

    def stop(self) -> None:
        self._stop.set()
        if self.projector is not None:
            self.projector.stop()


DEFAULT_RETRY_BACKOFF_S = 1.0


class SchedulerRunner:
    def __init__(self, settings: Settings, config: policy.Config | None = None, *, lease_s: float = 15.0) -> None:
        self.settings = settings
        self.config = config or policy.Config(retry_backoff_s=DEFAULT_RETRY_BACKOFF_S)
        self.lease_s = lease_s
        self.service: SchedulerService | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        store = await open_store(self.settings, "qgjob-scheduler", self._stop)
        if store is None:
            return
        try:
            self.service = SchedulerService(store, self.config, lease_s=self.lease_s, leadership=Leadership(store))
            if self._stop.is_set():
                return
            await self.service.run()
        finally:
            await store.close()

    def stop(self) -> None:
        self._stop.set()
        if self.service is not None:
            self.service.stop()


class AgentRunner:
    def __init__(
        self, settings: Settings, *, agent_id: str, target: str, runner: Runner, slots: int = 1, lease_s: float = 15.0
    ) -> None:
        self.settings = settings
        self.lease_s = lease_s
        self.agent_id = agent_id
        self.target = target
        self.runner = runner
        self.slots = slots
        self.agent: Agent | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        store = await open_store(self.settings, f"qgjob-agent-{self.agent_id}", self._stop)
        if store is None:
            return
        try:
            self.agent = Agent(
                store,
                agent_id=self.agent_id,
                target=self.target,
                runner=self.runner,
                slots=self.slots,
                lease_s=self.lease_s,
            )
            if self._stop.is_set():
                return
            await self.agent.run()
        finally:
            await store.close()

    def stop(self) -> None:
        self._stop.set()
        if self.agent is not None:
            self.agent.stop()


def run(main: Awaitable[T]) -> T:
    """Run a service coroutine on uvloop where it is installed, else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[no-any-return]


async def run_until_signalled(services: list[Any], *, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run services until SIGINT/SIGTERM or until one fails; stop them in reverse."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.run(), name=type(s).__name__) for s in services]
    stopper = asyncio.create_task(stop.wait())
    try:
        if on_ready is not None:
            ready = asyncio.create_task(on_ready())
            done, _ = await asyncio.wait({ready, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
            elif ready.exception() is not None:
                raise ready.exception()  # type: ignore[misc]
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("service %s failed: %s", task.get_name(), task.exception())
                raise task.exception()  # type: ignore[misc]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for service in reversed(services):
            service.stop()
        stopper.cancel()
        for task in reversed(tasks):
            with suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 10)
        await cancel_and_wait(*tasks)
