"""Whole test logs, kept in a JetStream object store beside the stream.

Events carry only the tail of an attempt's output; the full output of each
attempt is stored as the object ``<job_id>/<attempt>`` in the bucket
``<stream>_logs``.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from eventstore.errors import EventStoreUnavailable
from eventstore.store import EventStore


class LogStore:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._bucket: ObjectStore | None = None

    @property
    def name(self) -> str:
        return f"{self.store.stream}_logs"

    async def _objects(self) -> ObjectStore:
        if self._bucket is None:
            try:
                self._bucket = await self.store.js.object_store(self.name)
            except nats.js.errors.BucketNotFoundError:
                self._bucket = await self.store.js.create_object_store(
                    self.name, config=ObjectStoreConfig(description="qgjob test logs", replicas=self.store.replicas)
                )
        return self._bucket

    async def put(self, job_id: str, attempt: int, data: bytes) -> None:
        try:
            bucket = await self._objects()
            await bucket.put(f"{job_id}/{attempt}", data)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise EventStoreUnavailable(f"could not store the log of {job_id} attempt {attempt}: {exc}") from exc

    async def get(self, job_id: str, attempt: int) -> bytes | None:
        try:
            bucket = await self._objects()
            result = await bucket.get(f"{job_id}/{attempt}")
        except nats.js.errors.ObjectNotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise EventStoreUnavailable(f"could not read the log of {job_id}: {exc}") from exc
        return result.data or b""
