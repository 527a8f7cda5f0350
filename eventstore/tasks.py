"""Background work: stopping tasks for certain, and a start that waits for
what it needs (NATS, JetStream, Postgres) instead of failing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
RECANCEL_S = 1.0
READY_FIRST_S = 0.5  # the first wait before trying again
READY_MAX_S = 5.0  # waits double up to this


async def cancel_and_wait(*tasks: asyncio.Future[object], recancel_s: float = RECANCEL_S) -> None:
    """Cancel every task and return once all of them have ended.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for``,
    which nats-py uses for every request and flush, returns the result instead
    of raising when the cancel lands just as the reply arrives
    (python/cpython#86296), and a loop around such a request goes on as if
    nothing happened. A task still running ``recancel_s`` after a cancel is
    cancelled again, so a task given time to clean up keeps it.

    What the tasks raised is retrieved and dropped: they are being stopped.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()


async def until_ready(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    retryable: Callable[[BaseException], bool],
    *,
    waiting: Callable[[], object] | None = None,
    first_s: float = READY_FIRST_S,
    max_s: float = READY_MAX_S,
) -> T | None:
    """``attempt()``'s result, trying again while it fails with an error
    ``retryable`` accepts: waits ``first_s``, doubling up to ``max_s``, and
    logs each failure as a warning naming ``what`` (and calls ``waiting``).
    Other errors propagate. ``None`` once ``stop`` is set (checked before
    each try and during each wait, so a stop ends the wait at once)."""
    delay = first_s
    while not stop.is_set():
        try:
            return await attempt()
        except Exception as exc:
            if not retryable(exc):
                raise
            log.warning("%s is not ready, trying again in %.1f s: %s", what, delay, exc)
            if waiting is not None:
                waiting()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, max_s)
    return None
