"""How many turns run at once: the rest wait their turn, in the order they came.

A Python process runs one turn's code at a time. With many conversations at once, letting
every turn in makes them all take turns with each other at every database round trip, and the
unlucky ones wait behind the others again and again: under load the slowest turns took twice
as long as the typical one. Letting a few in at a time (enough to keep the process busy while
some wait for the database or the connector) and queueing the rest first come, first served,
gives every turn about the same wait.

A turn that holds its place longer than `hold` seconds is waiting for something slow (Microsoft
Graph, a slow connector, a lock held by another process): it gives its place to the next one
and carries on outside the count, so a slow dependency never stops the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: Seconds a turn keeps its place before it counts as waiting on something slow.
HOLD_SECONDS = 0.25


class TurnGate:
    """First come, first served admission of at most `limit` turns (0: no limit)."""

    def __init__(self, limit: int, hold: float = HOLD_SECONDS) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 (no limit) or more")
        self.limit = limit
        self.hold = hold
        self._free = limit
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def running(self) -> int:
        """Turns holding a place now."""
        return self.limit - self._free if self.limit else 0

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiting if not f.done())

    async def _enter(self) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(place)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self._leave()  # handed a place while being cancelled: pass it on
            else:
                self._waiting.remove(place)
            raise

    def _leave(self) -> None:
        # The place goes straight to the longest waiter: nobody arriving later can take it.
        while self._waiting:
            place = self._waiting.popleft()
            if not place.done():
                place.set_result(None)
                return
        self._free += 1

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """Hold a place for the turn (waiting for one first if all are taken)."""
        if not self.limit:
            yield
            return
        await self._enter()
        held = True

        def give_up() -> None:
            nonlocal held
            if held:
                held = False
                self._leave()

        timer = asyncio.get_running_loop().call_later(self.hold, give_up)
        try:
            yield
        finally:
            timer.cancel()
            give_up()
