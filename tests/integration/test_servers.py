"""Integration tests for qgjob.stack.servers: real nats-server and PostgreSQL processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from qgjob.stack.servers import NatsServer, PostgresServer, free_port

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _publish(url: str, stream: str, subject: str, payload: bytes) -> int:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, payload)
        return ack.seq
    finally:
        await nc.close()


async def _read(url: str, stream: str, seq: int) -> tuple[int, bytes]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        msg = await js.get_msg(stream, seq)
        return info.state.messages, msg.data or b""
    finally:
        await nc.close()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536


def test_nats_start_publish_stop(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    url = server.start()
    try:
        assert url == f"nats://127.0.0.1:{server.port}"
        assert server.pid is not None and _alive(server.pid)
        conf = (tmp_path / "nats" / "nats.conf").read_text()
        assert "max_msgs: 20002" in conf
        seq = asyncio.run(_publish(url, "JOBS", "jobs.>", b"hello"))
        assert seq == 1
        assert asyncio.run(_read(url, "JOBS", 1)) == (1, b"hello")
    finally:
        pid = server.pid
        server.stop()
    assert server.pid is None
    assert pid is not None and not _alive(pid)


def test_nats_data_survives_kill(tmp_path: Path) -> None:
    first = NatsServer(tmp_path / "nats")
    url = first.start()
    try:
        assert asyncio.run(_publish(url, "DURABLE", "durable.>", b"survivor")) == 1
    finally:
        first.kill()
    second = NatsServer(tmp_path / "nats")
    try:
        url2 = second.start()
        assert asyncio.run(_read(url2, "DURABLE", 1)) == (1, b"survivor")
    finally:
        second.stop()


def test_nats_stale_server_is_replaced(tmp_path: Path) -> None:
    first = NatsServer(tmp_path / "nats")
    first.start()
    first_pid = first.pid
    second = NatsServer(tmp_path / "nats")  # simulates a restarted parent that lost its handle
    try:
        second.start()
        assert first_pid is not None and not _alive(first_pid)
        assert second.pid is not None and second.pid != first_pid
        assert asyncio.run(_publish(second.url, "S", "s.>", b"x")) == 1
    finally:
        second.stop()
        first.stop()


async def _pg(dsn: str, *queries: str) -> list[object]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [await conn.fetchval(q) for q in queries]
    finally:
        await conn.close()


def test_postgres_start_stop_restart(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", durable=False)
    dsn = server.start()
    try:
        assert dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        assert (tmp_path / "pg" / "pgdata" / "PG_VERSION").exists()
        assert asyncio.run(
            _pg(dsn, "SELECT 1", "CREATE TABLE jobs (id int)", "INSERT INTO jobs VALUES (42) RETURNING id")
        ) == [1, None, 42]
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None and not _alive(pid)
    assert not (tmp_path / "pg" / "pgdata" / "postmaster.pid").exists()

    again = PostgresServer(tmp_path / "pg", durable=False)
    dsn2 = again.start()
    try:
        assert again.pid is not None and again.pid != pid
        assert asyncio.run(_pg(dsn2, "SELECT to_regclass('public.jobs')::text", "SELECT id FROM jobs")) == ["jobs", 42]
    finally:
        again.stop()


def test_postgres_reuses_running_server(tmp_path: Path) -> None:
    first = PostgresServer(tmp_path / "pg", durable=False)
    first.start()
    second = PostgresServer(tmp_path / "pg", durable=False)  # e.g. parent restarted after a crash
    try:
        dsn = second.start()
        assert second.pid == first.pid
        assert second.port == first.port
        assert asyncio.run(_pg(dsn, "SELECT 1")) == [1]
    finally:
        second.stop()
        first.stop()  # already stopped through the second handle: must be a no-op
    assert first.pid is None


def test_postgres_restarts_after_kill(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", durable=False)
    dsn = server.start()
    asyncio.run(_pg(dsn, "CREATE TABLE t AS SELECT 7 AS v"))
    pid = server.pid
    server.kill()
    assert pid is not None and not _alive(pid)
    try:
        dsn2 = server.start()
        assert server.pid != pid
        assert asyncio.run(_pg(dsn2, "SELECT v FROM t")) == [7]
    finally:
        server.stop()
