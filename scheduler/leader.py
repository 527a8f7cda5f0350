"""Leader election for scheduler replicas over a NATS KV lease.

The leader holds one key in a KV bucket whose entries expire after ``ttl_s``
and renews it every ``ttl_s / 3`` with a compare-and-set on the revision it
wrote last. A standby keeps trying to create the key; it succeeds once the
leader stopped renewing (it died, or lost NATS) and the entry expired. Two
leaders at once are harmless anyway: every decision is fenced by the job
subject's expected sequence, so only one of two identical assignments lands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from eventstore import EventStore
from eventstore.ids import new_id

log = logging.getLogger(__name__)
KEY = "scheduler"


class Leadership:
    def __init__(self, store: EventStore, *, ttl_s: float = 6.0, holder: str | None = None) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{new_id('sch')[-6:]}"
        self.leading = asyncio.Event()
        self._revision = 0
        self._kv: KeyValue | None = None

    @property
    def bucket(self) -> str:
        return f"{self.store.stream}_leader"

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.store.js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await self.store.js.create_key_value(
                    KeyValueConfig(bucket=self.bucket, ttl=self.ttl_s, replicas=self.store.replicas)
                )
        return self._kv

    async def current(self) -> str | None:
        """Who holds the lease now, if anyone."""
        kv = await self._bucket()
        try:
            entry = await kv.get(KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return (entry.value or b"").decode() or None

    async def step(self) -> bool:
        """Take or renew the lease once; returns whether this replica leads."""
        kv = await self._bucket()
        value = self.holder.encode()
        try:
            if self.leading.is_set():
                self._revision = await kv.update(KEY, value, last=self._revision)
            else:
                self._revision = await kv.create(KEY, value)
                log.warning("scheduler %s is now the leader", self.holder)
                self.leading.set()
        except nats.js.errors.KeyWrongLastSequenceError:
            if self.leading.is_set():
                log.error("scheduler %s lost the leader lease", self.holder)
            self.leading.clear()
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("leader lease: %s", exc)
            if self.leading.is_set():
                self.leading.clear()
                log.error("scheduler %s steps down: cannot renew its lease", self.holder)
        return self.leading.is_set()

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.ttl_s / 3)

    async def resign(self) -> None:
        """Give the lease up at once (a clean stop), so a standby need not wait."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            kv = await self._bucket()
            await kv.delete(KEY, last=self._revision)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.info("could not resign the lease: %s", exc)
