"""Reads of the hot path taken together: the reads queued while the store's reader threads
are busy with earlier ones go to a reader thread as one group, in one snapshot.

A center-mode Settle reads before it asks the center (the caller's sign-in, the visit,
its lines, the person: `CenterMode.settle`). One hop to a reader thread per call costs a
thread wake-up, two hand-offs of the GIL and a wake-up of the event loop, and a BEGIN and a
ROLLBACK; at a few hundred settles a second those are a good part of the front-end's CPU
per settle (bench/RESULTS.md, issue 15 step 24). In a group, the hop, the transaction and
the loop's wake-up are shared by every read of the group.

Each read is answered on its own: its value, or what it raised (a refusal, a store
failure), never another read's. A group's snapshot starts after every read in it was
queued, so a read sees everything committed before it was asked for. At most `most`
groups run at once (the others wait their turn), and a group takes at most `largest`
reads: under a light load every read is a group of one, as soon as it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")
Read = Callable[[Any], Any]
# Each read's outcome: (True, its value) or (False, what it raised).
ReadOutcome = tuple[bool, Any]


class ReadGroups:
    """Groups of reads for `run_all` (one snapshot, the outcomes in order) on `executor`."""

    def __init__(
        self,
        executor: Executor,
        run_all: Callable[[Sequence[Read]], list[ReadOutcome]],
        most: int = 2,
        largest: int = 64,
    ) -> None:
        self.executor = executor
        self.run_all = run_all
        self.most = most
        self.largest = largest
        self._queued: list[tuple[Read, asyncio.Future[Any]]] = []
        # Runners not yet finished, counted by the runners themselves: a finished task
        # leaves a set of tasks only in a later callback, and a read asked meanwhile would
        # find every place taken and wait for a runner that never comes.
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps tasks weakly
        self.groups = 0  # groups run so far

    async def read(self, op: Callable[[Any], T]) -> T:
        """`op(conn)` in the next group's snapshot; its value, or what it raised."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queued.append((op, fut))
        if self._running < self.most:
            self._running += 1
            task = loop.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _run(self) -> None:
        try:
            await self._groups()
        finally:
            self._running -= 1

    async def _groups(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            group = self._queued[: self.largest]
            del self._queued[: self.largest]
            self.groups += 1
            try:
                outcomes = await loop.run_in_executor(
                    self.executor, self.run_all, [op for op, _ in group]
                )
            except asyncio.CancelledError:  # a shutdown: nobody waiting is answered
                for _, fut in [*group, *self._queued]:
                    fut.cancel()
                self._queued.clear()
                raise
            except Exception as exc:  # the group as a whole (no reader thread): each is told
                outcomes = [(False, exc)] * len(group)
            for (_, fut), (ok, value) in zip(group, outcomes, strict=True):
                resolve(fut, ok, value)


def resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """A waiting caller's outcome (its value, or what it raised), unless it gave up."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
