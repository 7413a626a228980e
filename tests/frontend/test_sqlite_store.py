"""The front-end's SQLite store on real files: group commit, per-operation rollback, the
write turn shared by two stores (as two worker processes share it), a batch that meets a
write failure (rolled back whole, UNAVAILABLE, the turn given back, writes again once the
disk is back), the schema upgrade from version 1, and the line-results blob layout."""

from __future__ import annotations

import asyncio
import json
import select
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import engine_rs
from medsettle.v1 import settlement_pb2
from server.frontend.store import line_results
from server.frontend.store.migrations import MIGRATIONS, _statements, migrate
from server.frontend.store.sqlite import LedgerCall, Store, init_db, ledger_of
from server.security.datakeys import DataKeys
from server.security.pii import Vault


def _make_table(path: Path) -> None:
    """The table, in a database already in WAL mode, as `init_db` leaves one before any
    store opens it (two stores switching a rollback-journal file to WAL at once meet a
    lock their writers, which never wait inside SQLite, are refused at once)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    conn.commit()
    conn.close()


def _rows(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT k, v FROM t ORDER BY k").fetchall()
    finally:
        conn.close()


def test_group_commit_shares_fsyncs_and_rolls_back_one_failing_op(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _make_table(db)
    store = Store(str(db), readers=1)

    def put(k: int) -> Callable[[sqlite3.Connection], int]:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))
            if k % 10 == 3:  # written, then refused: its row must not survive
                raise ValueError(f"refuse {k}")
            return k

        return op

    async def main() -> list[object]:
        return await asyncio.gather(
            *(store.write(put(k)) for k in range(200)),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(main())
    finally:
        store.close()
    refused = [k for k in range(200) if k % 10 == 3]
    for k, r in enumerate(results):
        if k in refused:
            assert isinstance(r, ValueError) and str(r) == f"refuse {k}"
        else:
            assert r == k
    assert _rows(db) == [(k, f"v{k}") for k in range(200) if k not in refused]
    assert store.ops == 200 and store.commits < 20  # queued operations shared commits


def test_two_stores_take_turns_on_one_file(tmp_path: Path) -> None:
    """Two stores on one file (as two worker processes have): every increment of a counter
    read-modify-written by both survives."""
    db = tmp_path / "s.db"
    _make_table(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO t VALUES (0, '0')")
    conn.commit()
    conn.close()

    def bump(conn: sqlite3.Connection) -> None:
        (v,) = conn.execute("SELECT v FROM t WHERE k = 0").fetchone()
        conn.execute("UPDATE t SET v = ? WHERE k = 0", (str(int(v) + 1),))

    def run(store: Store, n: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(store.write(bump) for _ in range(n)))

        asyncio.run(main())

    a, b = Store(str(db), readers=1), Store(str(db), readers=1)
    try:
        threads = [threading.Thread(target=run, args=(s, 300)) for s in (a, b)]
        for t in threads:
            t.start()
        b.write_sync(bump)  # a tool's write in between
        for t in threads:
            t.join()
    finally:
        a.close()
        b.close()
    assert _rows(db) == [(0, "601")]


# Run in a process of its own: the file-size limit (RLIMIT_FSIZE, every write past byte 1
# fails as on a full disk) must not touch the test runner's files. It prints what happened.
FAILING_DISK = """
import asyncio, json, resource, signal, sys
from server.frontend.store.sqlite import Store, StoreUnavailable

db = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
a, b = Store(db, readers=1), Store(db, readers=1)  # two workers' stores on one file


def put(k, size):
    def op(conn):
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(k + i, "v" * size) for i in range(2000)])
        return k
    return op


def ok_or_error(fut):
    try:
        return fut.result()
    except StoreUnavailable:
        return "UNAVAILABLE"
    except Exception as exc:
        return repr(exc)


async def main():
    await a.write(put(30000, 1))  # both stores have their writer connection open
    await b.write(put(32000, 1))
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    # a large operation (pages spill inside it) and a small one share a batch
    futs = [asyncio.ensure_future(a.write(put(k, size))) for k, size in ((0, 2000), (5000, 1))]
    await asyncio.wait(futs, timeout=20)
    failed = [ok_or_error(f) if f.done() else "HUNG" for f in futs]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    other = await asyncio.wait_for(b.write(put(10000, 10)), 20)  # the turn was given back
    again = await asyncio.wait_for(a.write(put(20000, 10)), 20)
    print(json.dumps([failed, other, again, a.writable]))


asyncio.run(main())
a.close()
b.close()
"""


def test_a_batch_that_meets_a_write_failure_fails_whole_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    _make_table(db)
    run = subprocess.run(
        [sys.executable, "-c", FAILING_DISK, str(db)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [["UNAVAILABLE", "UNAVAILABLE"], 10000, 20000, True]
    keys = [k for k, _ in _rows(db)]
    # nothing of the failed batch
    assert keys == [*range(10000, 12000), *range(20000, 22000), *range(30000, 34000)]


def test_line_results_round_trip() -> None:
    sns = ["000001", "行2", ""]
    codes = ["XA01", "", "Z99-草药"]
    ints = np.arange(24, dtype=np.int64).reshape(3, 8) - 5
    blob = line_results.encode(sns, codes, ints)
    assert line_results.decode(blob) == [
        (sn, code, *row) for sn, code, row in zip(sns, codes, ints.tolist(), strict=True)
    ]
    assert line_results.decode(line_results.encode([], [], np.zeros((0, 8), np.int64))) == []
    with pytest.raises(ValueError, match="left over"):
        line_results.decode(blob + b"x")
    with pytest.raises(ValueError, match="differ in length"):
        line_results.encode(sns, codes[:2], ints)


def test_version_1_database_upgrades_its_line_results(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    v1 = MIGRATIONS[0]
    assert v1[0] == 1 and isinstance(v1[2], str)
    for stmt in _statements(v1[2]):
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', datetime('now'))")
    conn.execute(
        "INSERT INTO settlements (id, setl_id, fixmedins_code, mdtrt_id, visit_id, psn_no,"
        " insutype, clr_type, msgid, invono, setl_time, setl_date, state, mode, offline,"
        " medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, acc_year, acc_pool,"
        " acc_delta, acc_before, info) VALUES (1, 'S1', 'H1', 'M1', 1, 'P1', 310, 11, 'm', '',"
        " 0, 20260101, 1, 1, 0, 300, 0, 0, 300, 2026, 'emp', '{}', '{}', x'')"
    )
    old = [("0002", "Y2", 2, 3, 200, 0, 0, 0, 200, 0), ("0001", "Y1", 1, 1, 100, 5, 6, 7, 82, 1)]
    conn.executemany("INSERT INTO setl_lines VALUES ('S1', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", old)
    conn.close()

    keys = DataKeys.derive(bytes(range(32)))
    with pytest.raises(RuntimeError, match="needs the data key"):  # it holds a settlement
        init_db(str(db))
    assert init_db(str(db), keys) == max(v for v, _, _ in MIGRATIONS)
    conn = sqlite3.connect(db)
    (blob, info) = conn.execute(
        "SELECT line_results, info FROM settlements WHERE setl_id = 'S1'"
    ).fetchone()
    assert line_results.decode(blob) == sorted(old)
    assert Vault(keys).open_setlinfo("S1", info) == b""  # sealed by migration 6
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "setl_lines" not in tables
    (cancel_idx,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'settlements_inst_cancel'"
    ).fetchone()
    assert "WHERE cancel_date IS NOT NULL" in cancel_idx
    conn.close()
    # A second run finds nothing to do.
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(conn) == max(v for v, _, _ in MIGRATIONS)
    conn.close()


def test_connections_are_durable_and_a_batch_of_ledger_calls_keeps_its_journal_in_memory(
    tmp_path: Path,
) -> None:
    """A fresh file opens in WAL with an fsync at every commit (synchronous=FULL), for the
    writer and the readers. The writer keeps SQLite's temporary files (the savepoints'
    journal) in memory for a batch of ledger calls alone, and on disk for a batch with any
    other operation (an audit prune may change more pages than memory should hold); the
    readers keep theirs on disk."""
    store = Store(str(tmp_path / "s.db"), readers=1)

    def settings(conn: sqlite3.Connection) -> tuple[str, int, int]:
        return (
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA synchronous").fetchone()[0],
            conn.execute("PRAGMA temp_store").fetchone()[0],
        )

    def probe(conn: sqlite3.Connection) -> tuple[Any, ...]:
        # a ledger call refused in its preparation: the batch's setting is its outcome
        raise LookupError(settings(conn))

    def ledger_call() -> LedgerCall:
        return LedgerCall(cast(Any, None), "Settle", probe)

    async def in_ledger_batch() -> object:
        try:
            await store.write(ledger_call())
        except LookupError as exc:
            return exc.args[0]
        raise AssertionError("the probe did not run")

    async def main() -> list[object]:
        alone = [await in_ledger_batch() for _ in range(2)]
        mixed = await asyncio.gather(
            store.write(settings), in_ledger_batch(), return_exceptions=True
        )
        after = await in_ledger_batch()
        return [*alone, *mixed, after, await store.read(settings)]

    try:
        alone, again, mixed_op, mixed_call, after, read = asyncio.run(main())
    finally:
        store.close()
    assert alone == again == after == ("wal", 2, 2)  # FULL; MEMORY
    assert mixed_op == mixed_call == ("wal", 2, 0)  # FULL; the build's default (files)
    assert read == ("wal", 2, 0)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_flush_cancelled_around_a_ledger_batch_leaves_the_turn_free(
    tmp_path: Path, when: str
) -> None:
    """A batch of ledger calls runs on the ledger's own thread while the store's flush waits
    for its outcome. A flush cancelled meanwhile (a shutdown), before the outcome came or
    after it came but before the flush took it, does not keep this process's write turn:
    the next write runs. (The cancelled flush's callers are not answered.)"""
    path = str(tmp_path / "s.db")
    init_db(path)
    store = Store(path, readers=1)
    node = engine_rs.LedgerNode("01", 480, bytes(32), 1, bytes(32))
    caller = ("H1", 3, "440100", "op", "clerk", "/medsettle.v1.Settlement/CancelSettlement")
    request = settlement_pb2.CancelSettlementRequest(setl_id="S-none").SerializeToString()
    args = ("CancelSettlement", request, b"h", 1, caller, None, None, None)
    call = LedgerCall(node, "CancelSettlement", lambda conn: args)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[Any] = asyncio.ensure_future(store.write(call))
        # the batch is on the ledger's thread once its ledger has a wake-up descriptor
        while store._conn is None or ledger_of(store._conn).ready_fd is None:
            await asyncio.sleep(0)
        if when == "after":  # the outcome collected, the flush not yet resumed
            ready = ledger_of(store._conn).ready_fd
            assert ready is not None
            await loop.run_in_executor(None, select.select, [ready], [], [], 30)
            await asyncio.sleep(0)
        assert store._task is not None
        store._task.cancel()
        first.cancel()
        deadline = loop.time() + 30
        while not store._writer_lock.try_acquire():
            assert loop.time() < deadline, "the write turn was never given back"
            await asyncio.sleep(0.01)
        store._writer_lock.release()
        with pytest.raises(engine_rs.Refused, match="no settlement S-none"):
            await asyncio.wait_for(store.write(call), 30)

    try:
        asyncio.run(main())
    finally:
        store.close()
