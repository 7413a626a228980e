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

When the store cannot write (disk full, an I/O error, a file-size limit), the batch that
met it is rolled back whole, its callers are answered UNAVAILABLE (`StoreUnavailable`: nothing
of theirs was kept, a retry with the same msgid is safe), the write turn is given back and
the next batch starts on a fresh connection; `watch` tells the health service, which says
NOT_SERVING until a batch commits again.

Every connection of the store carries `ledger` (`engine_rs.Ledger`), through which the hot
path reads in Rust on the same handle, inside the same transaction: one connection per use,
one group commit, one copy of the SQLite library in the process (the ledger refuses to
attach otherwise; engine_rs/src/ledger/mod.rs). `ledger_of` finds it for an operation.

A `LedgerCall` (a Settle, a CancelSettlement) is an operation the ledger does whole in Rust:
the ledger calls of a batch run together in one `Ledger.settle_batch` on the commit thread,
the GIL released, each in its own savepoint; the last run of them shares the hop with the
COMMIT.

Reads (`read`) run on a small thread pool, each in a deferred transaction: a consistent
snapshot that never blocks the writer (WAL). The hot path's reads (`read_together`) go
to that pool in groups, one snapshot and one hop a group (read_groups.py).

The database and its -wal, -shm and .lock files are the owner's alone (0600): they hold
personal data. SQLite gives the -wal and -shm files the database file's mode, so the
database file is created 0600 before SQLite opens it, and `init_db` narrows files an
earlier version left readable by others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import engine_rs
from server import metrics
from server.errors import Unavailable
from server.frontend.store.migrations import migrate
from server.frontend.store.read_groups import ReadGroups, ReadOutcome, resolve
from server.security.datakeys import DataKeys

log = logging.getLogger("medsettle.store")

T = TypeVar("T")


@dataclass(frozen=True)
class LedgerCall:
    """A write the ledger does whole, in Rust (a Settle or a CancelSettlement:
    engine_rs/src/ledger/settle.rs `settle_batch`).
    `prepare(conn)` runs first, on the loop's thread inside the batch's transaction, and
    writes nothing (the caller's authentication); it returns the call's arguments to
    `Ledger.settle_batch` after `node`, or raises (that call's outcome). The ledger calls of
    a batch then run together, the GIL released, on the commit thread: the last run of
    them with the batch's COMMIT, in one hop. The call's outcome is the ledger's answer
    tuple, or the exception it names (`engine_rs.Refused` for a refusal)."""

    node: engine_rs.LedgerNode
    method: str  # the RPC's, as its answer is stored under
    prepare: Callable[[sqlite3.Connection], tuple[Any, ...]]
    # The business metrics' count of an answered call (its outcome tuple), in its batch's
    # tally: added once a label a batch, before the callers are answered (`Store._flush`).
    count: Callable[[metrics.Tally, Any], None] | None = None


Op = Callable[[sqlite3.Connection], Any] | LedgerCall
# A run of consecutive ledger calls: (index in the batch, node, its settle_batch arguments).
Segment = list[tuple[int, engine_rs.LedgerNode, tuple[Any, ...]]]

BUSY_TIMEOUT_MS = 30_000
# PRAGMA temp_store: the build's default (files, unless SQLite was built otherwise), memory
TEMP_DEFAULT, TEMP_MEMORY = 0, 2


# The files of a database: its own, SQLite's write-ahead log and shared-memory index, and the
# write turn's lock (WriterLock).
SUFFIXES = ("", "-wal", "-shm", ".lock")
PRIVATE = 0o600

# SQLite's primary result codes that mean the store itself cannot write, whatever the call.
STORE_FAILURES = frozenset(
    {
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)


class StoreUnavailable(Unavailable):
    """The store could not write a batch: it was rolled back whole, so a retry is safe."""

    def __init__(self, cause: BaseException) -> None:
        # The disk's reason is the operator's to see; any other is some caller's own.
        why = cause if isinstance(cause, sqlite3.Error | OSError) else "its batch failed"
        super().__init__(
            f"the store cannot write now ({why}); nothing of this call was kept, retry later"
        )


class Connection(sqlite3.Connection):
    """A store connection with the ledger on its handle; closing it closes the ledger
    first (the ledger must never outlive the handle it reads through)."""

    ledger: engine_rs.Ledger

    def close(self) -> None:
        ledger = self.__dict__.get("ledger")
        if ledger is not None:
            ledger.close()
        super().close()


def connect(path: str) -> Connection:
    """A connection in manual-transaction mode with the durability settings (the database
    file is made 0600 first when it does not exist), its ledger attached."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE))
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30, factory=Connection
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.ledger = engine_rs.Ledger(conn)
    return conn


def ledger_of(conn: sqlite3.Connection) -> engine_rs.Ledger:
    """The ledger of a store connection (an operation is handed the connection)."""
    if not isinstance(conn, Connection):
        raise TypeError("not a connection of the store (server/frontend/store/sqlite.py)")
    return conn.ledger


def init_db(path: str, keys: DataKeys | None = None) -> int:
    """Create or upgrade the schema; returns its version (`keys` for the steps that seal
    personal data already stored)."""
    conn = connect(path)
    try:
        return migrate(conn, keys)
    finally:
        conn.close()
        make_private(path)


def make_private(path: str) -> None:
    """Narrow the database's files to their owner (0600) where an earlier version left them
    readable by others."""
    for suffix in SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
            if mode & ~PRIVATE:
                os.chmod(path + suffix, mode & PRIVATE)


class Store:
    """One per process: group commit on the event loop's thread, a pool of readers."""

    def __init__(self, path: str, *, batch_max: int = 256, readers: int = 4) -> None:
        self.path = path
        self.batch_max = batch_max
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-read")
        self.read_groups = ReadGroups(self._readers, self._read_all)
        # BEGIN IMMEDIATE (which may wait for another worker process) and COMMIT (the fsync)
        # run on this thread, so the event loop never blocks on a lock or the disk.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
        self._conn: sqlite3.Connection | None = None
        self._temp_store = TEMP_DEFAULT  # the writer's (`_set_temp_store`)
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._sync_lock = threading.Lock()
        self._sync_conn: sqlite3.Connection | None = None
        self._writer_lock = WriterLock(path)
        self._watchers: list[Callable[[bool], None]] = []
        self.writable = True  # False from a failed batch until one commits
        metrics.STORE_WRITABLE.set(1)
        self.commits = 0
        self.ops = 0

    def watch(self, fn: Callable[[bool], None]) -> None:
        """Call `fn(writable)` on the event loop's thread whenever writability changes."""
        self._watchers.append(fn)

    def _set_writable(self, ok: bool, cause: BaseException | None = None) -> None:
        if ok == self.writable:
            return
        self.writable = ok
        metrics.STORE_WRITABLE.set(1 if ok else 0)
        if ok:
            log.warning("store: writes commit again")
        else:
            log.error("store: a write batch failed (%s); UNAVAILABLE until one commits", cause)
        for fn in self._watchers:
            fn(ok)

    # ------------------------------------------------------------------ writes
    async def write(self, op: Callable[[sqlite3.Connection], T] | LedgerCall) -> T:
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
        try:
            while self._pending:
                batch = self._pending[: self.batch_max]
                del self._pending[: self.batch_max]
                results = await self._run_batch([op for op, _ in batch])
                _count(batch, results)
                for (_, fut), (ok, value) in zip(batch, results, strict=True):
                    resolve(fut, ok, value)
        finally:
            self._flushing = False
            self._idle.set()

    async def _run_batch(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        """`ops` in one transaction: each one's outcome once the batch is durable, or, when
        the store could not write it, StoreUnavailable for every one of them."""
        loop = asyncio.get_running_loop()
        try:
            if self._conn is None:
                self._conn = await loop.run_in_executor(self._io, self._connect_writer)
            conn = self._conn
            self._set_temp_store(conn, ops)
            if not self._begin_now(conn):
                await loop.run_in_executor(self._io, self._begin_waiting, conn)
        except BaseException as exc:  # the write turn is not held
            return self._failed(len(ops), exc)
        try:
            results, tail = await self._run_ops(conn, ops)
            done = await self._finish(conn, tail)
        except _BatchUndone as undone:  # rolled back and the turn given back already
            return self._failed(len(ops), undone.cause)
        except _BatchFailed as failed:  # the turn is still held: give it back
            self._abandon(conn)
            return self._failed(len(ops), failed.cause)
        except asyncio.CancelledError:
            # The flush itself is cancelled (a shutdown): the batch, on a commit thread, ends
            # on its own and gives the turn back (`_finish`); its callers are not answered.
            raise
        except BaseException as exc:  # the commit failed: nobody is acknowledged
            self._drop_writer()
            return self._failed(len(ops), exc)
        _place(results, tail, done)
        self.commits += 1
        self.ops += len(ops)
        metrics.COMMIT_BATCH.observe(len(ops))
        self._set_writable(True)
        return [r if r is not None else (False, RuntimeError("no outcome")) for r in results]

    async def _run_ops(
        self, conn: sqlite3.Connection, ops: list[Op]
    ) -> tuple[list[tuple[bool, Any] | None], Segment]:
        """Every operation of a batch in order: Python ones here, each in its savepoint;
        runs of ledger calls in one Rust call on the commit thread, except the last run,
        returned for `_finish` to run with the COMMIT."""
        loop = asyncio.get_running_loop()
        results: list[tuple[bool, Any] | None] = [None] * len(ops)
        segment: Segment = []
        for i, op in enumerate(ops):
            if isinstance(op, LedgerCall):
                try:
                    segment.append((i, op.node, op.prepare(conn)))
                except BaseException as exc:
                    if _store_failure(exc) or not conn.in_transaction:
                        raise _BatchFailed(exc) from exc
                    results[i] = (False, exc)
                continue
            if segment:  # before a Python operation, which may read what they wrote
                done = await loop.run_in_executor(self._io, self._ledger_run, conn, segment)
                _place(results, segment, done)
                segment = []
            results[i] = _run_op(conn, op)
        return results, segment

    def _ledger_run(self, conn: sqlite3.Connection, segment: Segment) -> list[Any]:
        """A run of ledger calls in one `settle_batch` (on the commit thread; the GIL is
        released inside). Anything it raises loses the batch: a store failure, or a fault
        that may have left a call's savepoint open."""
        try:
            return ledger_of(conn).settle_batch(_node_of(segment), [a for _, _, a in segment])
        except BaseException as exc:
            raise _BatchFailed(exc) from exc

    async def _finish(self, conn: sqlite3.Connection, tail: Segment) -> list[Any]:
        """The batch's last run of ledger calls and its COMMIT, on the ledger's own commit
        thread (engine_rs/src/ledger/committer.rs), which never takes the GIL: one GIL-free
        run for both, collected by the loop when the thread's descriptor turns readable
        (bench/RESULTS.md, issue 15 step 23). Without ledger calls, the COMMIT on this
        store's commit thread. The write turn is given back once the batch has committed; a
        failure of the run or of its COMMIT loses the batch (rolled back and the turn given
        back: _BatchUndone; _BatchFailed when it could not start)."""
        loop = asyncio.get_running_loop()
        if not tail:
            await loop.run_in_executor(self._io, self._commit, conn)
            return []
        ledger = ledger_of(conn)
        finished: asyncio.Future[list[Any]] = loop.create_future()
        try:
            # the thread gives the turn back to other processes the moment it commits
            lock_fd = self._writer_lock.fd
            ledger.start_batch(_node_of(tail), [a for _, _, a in tail], True, lock_fd)
            fd = ledger.ready_fd
            assert fd is not None  # the ledger has its commit thread once a batch started
        except BaseException as exc:
            raise _BatchFailed(exc) from exc

        # The batch is finished here, when its outcome comes, whether or not anyone still
        # awaits it: a flush cancelled meanwhile must not keep the write turn.
        def collect() -> None:
            try:
                done = ledger.finished_batch()
            except BaseException as exc:
                loop.remove_reader(fd)
                self._abandon(conn)
                if not finished.done():
                    finished.set_exception(_BatchUndone(exc))
                return
            if done is None:  # woken early: the batch still runs
                return
            loop.remove_reader(fd)
            self._writer_lock.release()
            if not finished.done():
                finished.set_result(done)

        loop.add_reader(fd, collect)
        return await finished

    def _set_temp_store(self, conn: sqlite3.Connection, ops: list[Op]) -> None:
        """Before BEGIN: SQLite's temporary files (the savepoints' journal) in memory for a
        batch of ledger calls alone, on disk for any other. A batch of settles made one file,
        created, written and unlinked at every batch (7 % of Settle's throughput:
        bench/RESULTS.md, issue 15 step 22); nothing needs it after a crash (the WAL holds
        the batch), and a settle changes a few pages. An audit prune or a catalog increment
        may change more pages than memory should hold."""
        want = TEMP_MEMORY if all(isinstance(op, LedgerCall) for op in ops) else TEMP_DEFAULT
        if want != self._temp_store:
            conn.execute(f"PRAGMA temp_store={want}")
            self._temp_store = want

    def _failed(self, n: int, exc: BaseException) -> list[tuple[bool, Any]]:
        """The outcome of every operation of a batch that did not commit: UNAVAILABLE for all
        of them (never one caller's own error, which may name another's request)."""
        if isinstance(exc, OSError) or (isinstance(exc, sqlite3.Error) and _store_failure(exc)):
            metrics.STORE_FAILURES.inc()  # not a foreign lock held long: the disk
            self._set_writable(False, exc)
        return [(False, StoreUnavailable(exc))] * n

    def _connect_writer(self) -> sqlite3.Connection:
        conn = connect(self.path)
        # The writer never waits inside SQLite: the write turn is ours first.
        conn.execute("PRAGMA busy_timeout=0")
        self._temp_store = TEMP_DEFAULT
        return conn

    def _abandon(self, conn: sqlite3.Connection) -> None:
        """After an operation met a store failure: roll back what SQLite kept of the batch
        (it may have rolled back already) and give the write turn back."""
        try:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            self._writer_lock.release()
            self._drop_writer()

    def _drop_writer(self) -> None:
        """The next batch starts on a fresh connection (this one met a store failure)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _begin_now(self, conn: sqlite3.Connection) -> bool:
        """Take the write turn on the loop's thread when it is free (the common case: the
        lock is held only while a batch runs and commits); False when it must be waited for."""
        if not self._writer_lock.try_acquire():
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self._writer_lock.release()
            if _store_failure(exc):
                raise
            return False  # a connection outside medsettle holds the lock: wait for it
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
            _roll_back(conn)
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
                _roll_back(conn)
                self._writer_lock.release()
                raise
            self._commit(conn)
            return value

    # ------------------------------------------------------------------ reads
    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` on a reader thread in one snapshot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.read_sync, op)

    async def read_together(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`read`, in one snapshot with the other reads queued meanwhile (read_groups.py):
        for the hot path's reads, one hop to a reader thread per group, not per call."""
        return await self.read_groups.read(op)

    def read_sync(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return op(conn)
        finally:
            _end_read(conn)

    def _read_all(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[ReadOutcome]:
        """A group of reads in one snapshot, each one's outcome (on a reader thread)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            outcomes: list[ReadOutcome] = []
            for op in ops:
                try:
                    outcomes.append((True, op(conn)))
                except Exception as exc:  # this read's own outcome (a refusal, a failure)
                    outcomes.append((False, exc))
            return outcomes
        finally:
            _end_read(conn)

    def _reader(self) -> sqlite3.Connection:
        """This reader thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

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

    @property
    def fd(self) -> int | None:
        """The lock file's descriptor, once opened (the ledger's commit thread unlocks the
        flock on it the moment a batch commits: Store._finish)."""
        return self._fd

    def release(self) -> None:
        """Unlock (again, harmlessly, when the ledger's commit thread already has: an flock
        belongs to this descriptor's open file, never another process's), then let this
        process's other threads take the turn."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _BatchFailed(Exception):
    """An operation met a store failure: its batch cannot commit (SQLite may already have
    rolled the whole transaction back, savepoints and all)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _BatchUndone(_BatchFailed):
    """A batch on the ledger's commit thread failed: it was rolled back and the write turn
    given back already (`Store._finish`)."""


def _count(batch: list[tuple[Op, Any]], results: list[tuple[bool, Any]]) -> None:
    """The business metrics of a batch's answered ledger calls, added once a label (a
    labelled counter's increment takes a lock and writes its file: bench/RESULTS.md,
    issue 15 step 25). A fault in the counting is logged: the callers are answered."""
    tally = metrics.Tally()
    try:
        for (op, _), (ok, value) in zip(batch, results, strict=True):
            if ok and isinstance(op, LedgerCall) and op.count is not None:
                op.count(tally, value)
        tally.flush()
    except Exception:
        log.exception("the business metrics of a batch were not counted")


def _store_failure(exc: BaseException) -> bool:
    """Whether `exc` is SQLite saying the store cannot write (not that a statement is bad)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in STORE_FAILURES


def _roll_back(conn: sqlite3.Connection) -> None:
    """Roll back the transaction if SQLite has not already (after an I/O error it may have)."""
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _run_op(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
    """One operation in its own savepoint: one that raises is rolled back alone and its
    caller gets the exception; the batch goes on. A store failure, in the operation or in
    the savepoint's own statements, fails the batch (_BatchFailed)."""
    try:
        conn.execute("SAVEPOINT op")
    except sqlite3.Error as exc:
        raise _BatchFailed(exc) from exc
    try:
        value = op(conn)
    except BaseException as exc:
        if _store_failure(exc) or not conn.in_transaction:
            raise _BatchFailed(exc) from exc
        try:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
        except sqlite3.Error as inner:
            raise _BatchFailed(inner) from exc
        return False, exc
    try:
        conn.execute("RELEASE op")
    except sqlite3.Error as exc:
        raise _BatchFailed(exc) from exc
    return True, value


def _node_of(segment: Segment) -> engine_rs.LedgerNode:
    """The node a run of ledger calls settles for (the process's one front-end node)."""
    node = segment[0][1]
    if any(n is not node for _, n, _ in segment):
        raise RuntimeError("ledger calls of one batch for two nodes")
    return node


def _place(results: list[tuple[bool, Any] | None], segment: Segment, done: list[Any]) -> None:
    """The outcomes of a run of ledger calls into the batch's results (an exception value is
    that call's failure)."""
    for (i, _, _), value in zip(segment, done, strict=True):
        results[i] = (False, value) if isinstance(value, BaseException) else (True, value)


def _end_read(conn: sqlite3.Connection) -> None:
    """End a read's transaction (unless a failure inside it has already ended it: a ROLLBACK
    then would raise over the read's own outcome)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
