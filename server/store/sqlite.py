"""The front-end's SQLite store: durable group commit for writes, pooled snapshot reads.

Every state change is an *operation*: a plain function `op(conn) -> T` that reads and writes
through the connection it is given. One writer thread runs them. It takes every operation
queued while the previous commit was being flushed, runs each inside its own SAVEPOINT (an
operation that raises is rolled back alone and its caller gets the exception), then commits
the whole batch with one fsync (WAL, `synchronous=FULL`) and only then answers the callers.
So concurrent settles share an fsync and nothing is acknowledged before it is on disk.

Because every operation runs inside the one write transaction (BEGIN IMMEDIATE), what an
operation reads is current, including across worker processes sharing the file: per-person
accumulator updates are serialised by the database, not by process memory.

Reads (`read`) run on a small thread pool, each in a deferred transaction: a consistent
snapshot that never blocks the writer (WAL).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server.store.migrations import migrate

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

_STOP = object()
BUSY_TIMEOUT_MS = 30_000


def connect(path: str) -> sqlite3.Connection:
    """A connection in manual-transaction mode with the durability settings."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def init_db(path: str) -> int:
    """Create or upgrade the schema; returns its version."""
    conn = connect(path)
    try:
        return migrate(conn)
    finally:
        conn.close()


class Store:
    """One per process: a writer thread with group commit and a pool of readers."""

    def __init__(self, path: str, *, batch_max: int = 256, readers: int = 4) -> None:
        self.path = path
        self.batch_max = batch_max
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-read")
        self.commits = 0
        self.ops = 0
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-write", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ writes
    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` in the next group commit; returns once it is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, fut, loop))
        return await fut

    def write_sync(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`write` for code outside an event loop (set-up, tools)."""
        done = threading.Event()
        box: list[Any] = []

        def settle(ok: bool, value: Any) -> None:
            box.append((ok, value))
            done.set()

        self._queue.put((op, settle, None))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _write_loop(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < self.batch_max:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except BaseException as exc:  # the caller gets it; the batch goes on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
            conn.execute("COMMIT")
            self.commits += 1
            self.ops += len(batch)
        except BaseException as exc:  # the commit itself failed: nobody is acknowledged
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(False, exc)] * len(batch)
        # One wake-up of each event loop per batch, not one per operation.
        by_loop: dict[Any, list[tuple[Any, bool, Any]]] = {}
        for (_, target, loop), (ok, value) in zip(batch, results, strict=True):
            if loop is None:
                target(ok, value)
            else:
                by_loop.setdefault(loop, []).append((target, ok, value))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, items)

    # ------------------------------------------------------------------ reads
    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` on a reader thread in one snapshot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.read_sync, op)

    def read_sync(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return op(conn)
        finally:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        """Finish queued writes, then stop the writer and the readers."""
        self._queue.put(_STOP)
        self._writer.join()
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._reader_conns:
                c.close()
            self._reader_conns.clear()


def _resolve_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        _resolve(fut, ok, value)


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
