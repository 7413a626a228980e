"""The front-end's SQLite store: durable group commit for writes, pooled snapshot reads.

Every state change is an *operation*: a plain function `op(conn) -> T` that reads and writes
through the connection it is given. Operations run on the event loop's thread, in batches:
every operation queued while the previous batch was committing forms the next one. Each runs
inside its own SAVEPOINT (an operation that raises is rolled back alone and its caller gets
the exception); the whole batch then commits with one fsync (WAL, `synchronous=FULL`), and
only then are the callers answered. So concurrent settles share an fsync and nothing is
acknowledged before it is on disk.

Running the operations on the loop's thread, rather than on a writer thread, spares each
settle the hand-offs of the GIL between two busy threads. What may block runs on the
commit thread: waiting for a write turn another worker holds (`WriterLock`, then BEGIN
IMMEDIATE) and COMMIT's fsync; a free turn is taken on the loop's thread without a hop.

Because every operation runs inside a write transaction, what an operation reads is current,
including across worker processes sharing the file: per-person accumulator updates are
serialised by the database, not by process memory.

Reads (`read`) run on a small thread pool, each in a deferred transaction: a consistent
snapshot that never blocks the writer (WAL).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server import metrics
from server.security.datakeys import DataKeys
from server.store.migrations import migrate

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

BUSY_TIMEOUT_MS = 30_000


def connect(path: str) -> sqlite3.Connection:
    """A connection in manual-transaction mode with the durability settings."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def init_db(path: str, keys: DataKeys | None = None) -> int:
    """Create or upgrade the schema; returns its version (`keys` for the steps that seal
    personal data already stored)."""
    conn = connect(path)
    try:
        return migrate(conn, keys)
    finally:
        conn.close()


class Store:
    """One per process: group commit on the event loop's thread, a pool of readers."""

    def __init__(self, path: str, *, batch_max: int = 256, readers: int = 4) -> None:
        self.path = path
        self.batch_max = batch_max
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-read")
        # BEGIN IMMEDIATE (which may wait for another worker process) and COMMIT (the fsync)
        # run on this thread, so the event loop never blocks on a lock or the disk.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._sync_lock = threading.Lock()
        self._sync_conn: sqlite3.Connection | None = None
        self._writer_lock = WriterLock(path)
        self.commits = 0
        self.ops = 0

    # ------------------------------------------------------------------ writes
    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` in the next group commit; returns once it is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, fut))
        if not self._flushing:
            self._flushing = True
            self._idle.clear()
            self._task = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        """Batches of the queued operations, one transaction and one fsync each, until the
        queue is empty. Operations queued while a batch commits form the next batch."""
        loop = asyncio.get_running_loop()
        try:
            if self._conn is None:
                self._conn = await loop.run_in_executor(self._io, connect, self.path)
                # The writer never waits inside SQLite: the write turn is ours first.
                self._conn.execute("PRAGMA busy_timeout=0")
            conn = self._conn
            while self._pending:
                batch = self._pending[: self.batch_max]
                del self._pending[: self.batch_max]
                try:
                    if not self._begin_now(conn):
                        await loop.run_in_executor(self._io, self._begin_waiting, conn)
                except BaseException as exc:
                    for _, fut in batch:
                        _resolve(fut, False, exc)
                    continue
                results = [_run_op(conn, op) for op, _ in batch]
                try:
                    await loop.run_in_executor(self._io, self._commit, conn)
                    self.commits += 1
                    self.ops += len(batch)
                    metrics.COMMIT_BATCH.observe(len(batch))
                except BaseException as exc:  # the commit failed: nobody is acknowledged
                    results = [(False, exc)] * len(batch)
                for (_, fut), (ok, value) in zip(batch, results, strict=True):
                    _resolve(fut, ok, value)
        finally:
            self._flushing = False
            self._idle.set()

    def _begin_now(self, conn: sqlite3.Connection) -> bool:
        """Take the write turn on the loop's thread when it is free (the common case: the
        lock is held only while a batch runs and commits); False when it must be waited for."""
        if not self._writer_lock.try_acquire():
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # a connection outside medsettle holds the lock
            self._writer_lock.release()
            return False
        except BaseException:
            self._writer_lock.release()
            raise
        return True

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        """Wait for the write turn (on the commit thread): another worker's batch, or a
        foreign connection within SQLite's busy timeout."""
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            self._begin(conn)
        finally:
            conn.execute("PRAGMA busy_timeout=0")

    def _begin(self, conn: sqlite3.Connection) -> None:
        self._writer_lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._writer_lock.release()
            raise

    def _commit(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._writer_lock.release()

    def write_sync(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`write` for code outside an event loop (set-up, tools): its own transaction on
        its own connection (SQLite's lock orders it with the group commits)."""
        with self._sync_lock:
            conn = self._sync_conn
            if conn is None:
                conn = connect(self.path)
                self._sync_conn = conn
            self._begin(conn)
            try:
                value = op(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                self._writer_lock.release()
                raise
            self._commit(conn)
            return value

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
        """Wait for the queued writes, then close the connections and the threads."""
        self._idle.wait()
        self._io.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._reader_conns:
                c.close()
            self._reader_conns.clear()
        for conn in (self._conn, self._sync_conn):
            if conn is not None:
                conn.close()
        self._conn = None
        self._writer_lock.close()


class WriterLock:
    """The database's write turn, across this process's threads and every worker process:
    an flock on `<db>.lock` taken before BEGIN IMMEDIATE. A waiting writer sleeps in the
    kernel and wakes the moment the holder commits; SQLite's own busy handler would poll
    with sleeps of up to 100 ms, which starves a worker process under load."""

    def __init__(self, db_path: str) -> None:
        self._path = db_path + ".lock"
        self._fd: int | None = None
        self._thread_lock = threading.Lock()  # flock does not order this process's threads

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def try_acquire(self) -> bool:
        """Take the turn if nobody holds it, without waiting."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._thread_lock.release()
            return False
        except BaseException:
            self._thread_lock.release()
            raise
        return True

    def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _run_op(conn: sqlite3.Connection, op: Op) -> tuple[bool, Any]:
    """One operation in its own savepoint: one that raises is rolled back alone and its
    caller gets the exception; the batch goes on."""
    conn.execute("SAVEPOINT op")
    try:
        value = op(conn)
    except BaseException as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return False, exc
    conn.execute("RELEASE op")
    return True, value


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
