"""cancel_and_wait stops a loop whose first cancel was lost; until_ready
waits out what is not up yet, and no longer than a stop."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from eventstore.tasks import cancel_and_wait, until_ready


async def _request_loop(replies: asyncio.Queue[asyncio.Future[str]], rounds: list[str]) -> None:
    """A renewal loop in the shape of the leader's: a request, then a sleep."""
    while True:
        reply = await replies.get()
        rounds.append(await asyncio.wait_for(reply, timeout=10))
        await asyncio.sleep(30)


async def test_a_loop_goes_on_when_a_cancel_lands_as_its_reply_arrives() -> None:
    """Why one cancel is not enough: a cancel that meets a reply loses to it (on 3.11)."""
    replies: asyncio.Queue[asyncio.Future[str]] = asyncio.Queue()
    rounds: list[str] = []
    task = asyncio.create_task(_request_loop(replies, rounds))
    reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    await replies.put(reply)
    await asyncio.sleep(0.01)  # the loop waits for its reply
    reply.set_result("renewed")
    task.cancel()  # in the same turn of the event loop as the reply
    await asyncio.wait({task}, timeout=0.2)
    if not task.done():  # the cancel was swallowed by wait_for (python/cpython#86296)
        assert rounds == ["renewed"]
    await cancel_and_wait(task, recancel_s=0.05)
    assert task.cancelled()


async def test_cancel_and_wait_stops_a_task_that_swallows_its_first_cancel() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, recancel_s=0.05), timeout=5)
    assert task.cancelled()
    assert swallowed == 2


async def test_cancel_and_wait_leaves_a_task_its_time_to_clean_up() -> None:
    cleaned: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.2)
            cleaned.append("done")

    task = asyncio.create_task(cleans_up())
    await asyncio.sleep(0)
    await cancel_and_wait(task, recancel_s=1.0)
    assert cleaned == ["done"]


async def test_cancel_and_wait_retrieves_what_the_tasks_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait(failed, finished)  # neither raises here nor is left unretrieved
    assert failed.done() and finished.done()
    assert isinstance(failed.exception(), RuntimeError)


class NotUp(Exception):
    pass


async def test_until_ready_tries_again_with_doubling_waits_until_it_works() -> None:
    tries: list[float] = []
    waits: list[int] = []

    async def attempt() -> str:
        tries.append(time.monotonic())
        if len(tries) < 4:
            raise NotUp("not yet")
        return "up"

    got = await until_ready(
        "it", attempt, asyncio.Event(), lambda e: isinstance(e, NotUp), waiting=lambda: waits.append(1), first_s=0.02
    )
    assert got == "up" and len(tries) == 4 and len(waits) == 3
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08


async def test_until_ready_raises_what_waiting_would_not_cure() -> None:
    async def attempt() -> str:
        raise ValueError("a wrong password")

    with pytest.raises(ValueError, match="wrong password"):
        await until_ready("it", attempt, asyncio.Event(), lambda e: isinstance(e, NotUp))


async def test_until_ready_ends_its_wait_when_stopped() -> None:
    stop = asyncio.Event()

    async def attempt() -> str:
        raise NotUp("never")

    task = asyncio.create_task(until_ready("it", attempt, stop, lambda e: isinstance(e, NotUp), first_s=30))
    await asyncio.sleep(0.05)  # in its first 30 s wait
    started = time.monotonic()
    stop.set()
    assert await asyncio.wait_for(task, 2) is None
    assert time.monotonic() - started < 1
