"""Batches from a durable pull consumer, over one inbox subscription.

nats-py's ``fetch`` waits for every message of a batch with a timer and a task
of its own, which costs a projector catching up more than decoding the
events. :class:`Pull` sends a pull request and collects what it brings in
the subscription's callback: the request ends when the batch is full, or with
the server's status (404: nothing waiting, 408: the wait ran out).
"""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventstore.errors import QgjobError

_ENDS = frozenset({"404", "408"})  # no messages (a no-wait request), request timeout
_HEARTBEAT = "100"


class PullFailed(QgjobError):
    """The server refused a pull request (the consumer is gone, or no server answers)."""


class Pull:
    """Pull requests against ``durable`` of ``stream``; :meth:`close` when done."""

    def __init__(self, nc: Client, stream: str, durable: str) -> None:
        self.nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._buffer: list[Msg] = []  # delivered, not yet handed out
        self._wanted = 0
        self._ended = asyncio.Event()
        self._failure: str | None = None
        self._sub: Subscription | None = None

    async def start(self) -> Pull:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is None:
            self._buffer.append(msg)
            if len(self._buffer) >= self._wanted:
                self._ended.set()
        elif status in _ENDS:
            self._ended.set()
        elif status != _HEARTBEAT:
            self._failure = f"{status} {msg.headers.get('Description', '')}".strip()  # type: ignore[union-attr]
            self._ended.set()

    async def fetch(self, batch: int, *, wait: float) -> list[Msg]:
        """Up to ``batch`` messages: those the consumer has for us now, else the
        first to come within ``wait`` seconds (none: ``[]``)."""
        if len(self._buffer) < batch:
            await self._request(batch - len(self._buffer), no_wait=True)
        if not self._buffer and wait > 0:
            await self._request(1, expires=wait)
        out, self._buffer = self._buffer[:batch], self._buffer[batch:]
        return out

    async def _request(self, n: int, *, no_wait: bool = False, expires: float = 0.0) -> None:
        self._ended.clear()
        self._failure = None
        self._wanted = len(self._buffer) + n
        body: dict[str, object] = {"batch": n}
        if no_wait:
            body["no_wait"] = True
        if expires > 0:
            body["expires"] = int(expires * 1e9)
        await self.nc.publish(self._api, json.dumps(body).encode(), reply=self._inbox)
        try:
            # A late answer (a status after a reconnect) ends the next request early, which only makes it smaller.
            await asyncio.wait_for(self._ended.wait(), expires + 2.0)
        except TimeoutError:
            return  # the server did not answer; whatever it sends later is taken by the next request
        if self._failure is not None:
            raise PullFailed(f"pull from {self._api} refused: {self._failure}")
