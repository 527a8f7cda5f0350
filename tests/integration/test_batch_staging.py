"""Atomic batches staged in memory (NatsServer.stage_batches_in_memory) on a
real nats-server: all-or-nothing and fencing unchanged, committed events on
disk across a SIGKILL, the link renewed after the server removes it on start."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from eventstore import Append, ConcurrencyConflict, EventStore
from eventstore.events import JobCancelled
from qgjob.stack.servers import MEMORY_DIR, NatsServer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not MEMORY_DIR.is_dir(), reason=f"{MEMORY_DIR} (tmpfs) is not on this machine"),
]


def _link(server: NatsServer, stream: str) -> Path:
    return server.data_dir / "jetstream" / "jetstream" / "$G" / "streams" / stream / "batches"


def _batch(prefix: str, n: int, expected: int | None = None) -> list[Append]:
    return [Append(f"{prefix}.x.{n}.{i}", JobCancelled(job_id=f"j{n}-{i}"), expected) for i in range(3)]


async def _subjects(store: EventStore) -> list[str]:
    return [rec.subject async for rec in store.read(f"{store.subjects.prefix}.>")]


async def test_staged_batches_commit_whole_and_survive_a_kill(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    url = server.start()
    try:
        store = await EventStore.connect(url, stream="STAGED", prefix="staged")
        await store.ensure_stream()
        assert server.stage_batches_in_memory("STAGED")
        link = _link(server, "STAGED")
        assert link.is_symlink() and link.resolve().is_relative_to(MEMORY_DIR.resolve())
        assert server.stage_batches_in_memory("STAGED")  # again: nothing changes
        for n in range(5):
            await store.append_many(_batch("staged", n))
        assert len(await _subjects(store)) == 15
        assert os.listdir(link) == []  # each staging store is gone once its batch committed
        # One fenced message that conflicts rejects the whole batch, as on disk.
        await store.append("staged.fence", JobCancelled(job_id="f"), expected=0)
        with pytest.raises(ConcurrencyConflict):
            await store.append_many([*_batch("staged", 9), Append("staged.fence", JobCancelled(job_id="g"), 0)])
        assert len(await _subjects(store)) == 16
        await store.close()
    finally:
        server.kill()

    again = NatsServer(tmp_path / "nats")
    url = again.start()
    try:
        assert not _link(again, "STAGED").is_symlink()  # the server clears batches on start
        store = await EventStore.connect(url, stream="STAGED", prefix="staged")
        await store.ensure_stream()
        assert len(await _subjects(store)) == 16  # committed events were on disk, not in memory
        assert again.stage_batches_in_memory("STAGED")
        await store.append_many(_batch("staged", 10))
        assert len(await _subjects(store)) == 19
        await store.close()
    finally:
        again.stop()
    assert not again._staging_root.exists()  # a clean stop leaves nothing in memory


def test_staging_needs_the_stream(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        assert not server.stage_batches_in_memory("MISSING")
        assert not _link(server, "MISSING").exists()
    finally:
        server.stop()


def test_staging_refuses_a_folder_it_does_not_own_alone(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    url = server.start()
    try:
        server._staging_root.mkdir(mode=0o777)
        server._staging_root.chmod(0o777)  # as another local user could leave it, past the umask

        async def make_stream() -> None:
            store = await EventStore.connect(url, stream="OPEN", prefix="open")
            await store.ensure_stream()
            await store.close()

        asyncio.run(make_stream())
        assert not server.stage_batches_in_memory("OPEN")
        assert not _link(server, "OPEN").is_symlink()
    finally:
        server.stop()
