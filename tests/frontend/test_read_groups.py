"""The store's grouped reads (server/frontend/store/read_groups.py), on a real SQLite file:
reads queued while the reader threads are busy go together, each answered with its own
value or its own error, and a read sees what was committed before it was asked for."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from server.frontend.store.read_groups import ReadGroups
from server.frontend.store.sqlite import Store

SAFETY_S = 30.0  # a bound on waits, never an expectation


@pytest.fixture
def store(tmp_path: Path) -> Any:
    db = tmp_path / "r.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, f"v{k}") for k in range(100)])
    conn.commit()
    conn.close()
    s = Store(str(db), readers=2)
    yield s
    s.close()


class Held:
    """Reads that hold both reader threads until released (the store is busy)."""

    def __init__(self) -> None:
        self.running = threading.Semaphore(0)
        self.release = threading.Event()

    def read(self, conn: sqlite3.Connection) -> str:
        self.running.release()
        assert self.release.wait(SAFETY_S)
        return "held"

    async def hold_both(self, store: Store) -> list[asyncio.Future[str]]:
        """Both reader threads held, each by a group of its own (reads asked in one turn of
        the loop would share one group)."""
        loop = asyncio.get_running_loop()
        busy: list[asyncio.Future[str]] = []
        for _ in range(2):
            busy.append(asyncio.ensure_future(store.read_together(self.read)))
            assert await loop.run_in_executor(None, self.running.acquire, True, SAFETY_S)
        return busy


def value_of(k: int) -> Callable[[sqlite3.Connection], str | None]:
    def op(conn: sqlite3.Connection) -> str | None:
        if k % 7 == 3:
            raise ValueError(f"refuse {k}")
        row = conn.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone()
        return row[0] if row else None

    return op


def test_reads_queued_while_the_readers_are_busy_go_as_one_group(store: Store) -> None:
    held = Held()
    keys = [*range(0, 120, 3)]  # some past the table's end: None

    async def main() -> tuple[list[Any], list[Any]]:
        busy = await held.hold_both(store)
        asked = [asyncio.ensure_future(store.read_together(value_of(k))) for k in keys]
        await asyncio.sleep(0)
        held.release.set()
        return (
            await asyncio.gather(*busy),
            await asyncio.gather(*asked, return_exceptions=True),
        )

    busy, got = asyncio.run(main())
    assert busy == ["held", "held"]
    for k, answer in zip(keys, got, strict=True):
        if k % 7 == 3:
            assert isinstance(answer, ValueError) and str(answer) == f"refuse {k}"
        else:
            assert answer == (f"v{k}" if k < 100 else None)
    # one group each for the two held reads, one for the forty queued behind them
    assert store.read_groups.groups == 3


def test_a_read_sees_what_was_committed_before_it_was_asked(store: Store) -> None:
    held = Held()

    def put(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (501, 'new')")

    async def main() -> tuple[str | None, str | None]:
        before = await store.read_together(value_of(501))
        busy = await held.hold_both(store)
        await store.write(put)  # committed while both readers are busy
        after = asyncio.ensure_future(store.read_together(value_of(501)))
        await asyncio.sleep(0)
        held.release.set()
        await asyncio.gather(*busy)
        return before, await after

    assert asyncio.run(main()) == (None, "new")


def test_a_caller_that_gives_up_leaves_the_rest_of_its_group_answered(store: Store) -> None:
    held = Held()

    async def main() -> list[Any]:
        busy = await held.hold_both(store)
        asked = [asyncio.ensure_future(store.read_together(value_of(k))) for k in (1, 2, 4)]
        await asyncio.sleep(0)
        asked[1].cancel()
        held.release.set()
        await asyncio.gather(*busy)
        return await asyncio.gather(*asked, return_exceptions=True)

    first, cancelled, last = asyncio.run(main())
    assert (first, last) == ("v1", "v4")
    assert isinstance(cancelled, asyncio.CancelledError)


def test_a_read_asked_as_the_last_group_ends_gets_a_runner() -> None:
    """A read asked by a caller the moment its own read is answered (before the finished
    runner's task has left any set of tasks) still gets a runner, with one runner at most."""

    def run_all(ops: Sequence[Callable[[Any], Any]]) -> list[tuple[bool, Any]]:
        return [(True, op(None)) for op in ops]

    async def main() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            groups = ReadGroups(pool, run_all, most=1)
            async with asyncio.timeout(SAFETY_S):
                got = [await groups.read(lambda _: 1)]
                # asked in the same step as the answer came (awaited inline, not as a task
                # of its own): the runner that answered has just finished
                got.append(await groups.read(lambda _: 2))
            return got

    assert asyncio.run(main()) == [1, 2]
