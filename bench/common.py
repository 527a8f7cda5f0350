"""Shared set-up for benchmarks: real servers in a temp folder, services as
processes, a table printer and a JSON writer."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qgjob.stack.servers import NatsServer, PostgresServer, free_port

RESULTS = Path(__file__).resolve().parent / "results"
QGJOB = str(Path(sys.executable).parent / "qgjob")


@dataclass
class Servers:
    nats_url: str
    database_url: str
    folder: Path
    replicas: int = 1  # of the stream, the leader lease and the log store
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[NatsServer] = field(default_factory=list)
    stage_in_memory: bool = True  # as `qgjob up` does: NatsServer.stage_batches_in_memory

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
        env.update(
            QGJOB_NATS_URL=self.nats_url,
            QGJOB_DATABASE_URL=self.database_url,
            QGJOB_DATA_DIR=str(self.folder / "none"),
            QGJOB_STREAM_REPLICAS=str(self.replicas),
        )
        env.update(extra)
        return env

    def start(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [QGJOB, *args], env=self.env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        return proc

    async def admin_token(self) -> str:
        """Set up the stream and record an admin token, as `qgjob up` does."""
        from eventstore import EventStore, QgjobError
        from qgjob.api.auth import create_token

        store = await EventStore.connect(self.nats_url, replicas=self.replicas)
        try:
            deadline = time.monotonic() + 30
            while True:  # a fresh cluster answers once it has elected its JetStream leader
                try:
                    await store.ensure_stream()
                    break
                except QgjobError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            if self.stage_in_memory:
                for node in self.nodes:
                    node.stage_batches_in_memory(store.stream)
            token, _ = await create_token(store, org_id=None, admin=True)
        finally:
            await store.close()
        return token

    def start_api(self, workers: int = 1) -> str:
        port = free_port()
        self.start("serve", "api", "--port", str(port), "--workers", str(workers), "--log-level", "warning")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the API did not start")


@contextmanager
def servers(durable: bool = True, nats_nodes: int = 1, stage_in_memory: bool = True) -> Iterator[Servers]:
    """Postgres and NATS in a temp folder. With ``nats_nodes=3``, a JetStream
    cluster of three local servers (the compose topology) and services that
    keep the stream at 3 replicas."""
    folder = Path(tempfile.mkdtemp(prefix="qgjob-bench-"))
    if nats_nodes == 1:
        nodes = [NatsServer(folder / "nats")]
    else:
        ports = [free_port() for _ in range(nats_nodes)]
        routes = [f"nats://127.0.0.1:{p}" for p in ports]
        nodes = [
            NatsServer(folder / f"nats{i}", cluster_name="bench", cluster_port=p, routes=routes, server_name=f"n{i}")
            for i, p in enumerate(ports)
        ]
    for node in nodes:
        node.data_dir.mkdir()
    (folder / "pg").mkdir()
    pg = PostgresServer(folder / "pg", durable=durable)
    s = Servers(
        ",".join(node.start(timeout=30) for node in nodes),
        pg.start(),
        folder,
        replicas=min(nats_nodes, 3),
        nodes=nodes,
        stage_in_memory=stage_in_memory,
    )
    try:
        yield s
    finally:
        for proc in s.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in s.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
        for node in nodes:
            node.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def table(title: str, rows: list[tuple[str, str, str]]) -> str:
    header = ("measure", "value", "aim / reference")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
