"""Stopping background tasks for certain."""

from __future__ import annotations

import asyncio

RECANCEL_S = 1.0


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
