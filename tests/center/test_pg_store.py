"""The center's PostgreSQL store on a real server: migrations (also from several threads and
processes at once), transactions, retry on serialization failure, per-person row locks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from server.center.store.migrations import MIGRATION_LOCK, MIGRATIONS
from server.center.store.pg import (
    Conn,
    PgStore,
    connect,
    init_db,
    lock_accumulators,
    write_accumulators,
)
from server.persons import ACC_FIELDS

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parents[2]
LATEST = max(v for v, _, _ in MIGRATIONS)
PSN = ("P0001", 2026, "310")


def _one(dsn: str, query: str) -> Any:
    with connect(dsn) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def _applied(dsn: str) -> list[int]:
    with connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def _wait_for_lock_waiters(conn: psycopg.Connection[Any], n: int) -> None:
    """Block until `n` sessions of this database wait on the migration advisory lock."""
    for _ in range(600):
        waiting = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
        ).fetchone()
        if waiting and waiting[0] >= n:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"fewer than {n} migrators ever waited on the advisory lock")


def test_migrations_apply_once_and_again_is_a_no_op(pg_dsn: str) -> None:
    assert init_db(pg_dsn) == LATEST
    assert init_db(pg_dsn) == LATEST
    assert _applied(pg_dsn) == [v for v, _, _ in MIGRATIONS]
    assert _one(pg_dsn, "SELECT value FROM meta WHERE key = 'refdata_gen'") == 0
    with connect(pg_dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'settlements'")
        }
    assert {
        "institutions",
        "persons",
        "accumulators",
        "catalog_items",
        "catalog_versions",
        "mappings",
        "policies",
        "settlements",
        "setl_legs",
        "idempotency",
        "accumulator_differences",
    } <= tables
    assert any("(fixmedins_code, setl_date)" in i for i in indexes)
    assert any("(fixmedins_code, cancel_date)" in i for i in indexes)


def test_migrations_from_concurrent_threads(pg_dsn: str) -> None:
    # Hold the lock so every migrator is provably waiting on it before any may run.
    with connect(pg_dsn) as holder, ThreadPoolExecutor(4) as pool:
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            futures = [pool.submit(init_db, pg_dsn) for _ in range(4)]
            _wait_for_lock_waiters(holder, 4)
        assert [f.result(timeout=60) for f in futures] == [LATEST] * 4
    assert _applied(pg_dsn) == [v for v, _, _ in MIGRATIONS]


def test_migrations_from_concurrent_processes(pg_dsn: str) -> None:
    code = "import sys; from server.center.store.pg import init_db; print(init_db(sys.argv[1]))"
    with connect(pg_dsn) as holder:
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", code, pg_dsn],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(3)
            ]
            _wait_for_lock_waiters(holder, 3)
        outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert [o.strip() for o in outs] == [str(LATEST)] * 3
    assert _applied(pg_dsn) == [v for v, _, _ in MIGRATIONS]


async def _institutions(conn: Conn) -> list[str]:
    cur = await conn.execute("SELECT fixmedins_code FROM institutions ORDER BY 1")
    return [r[0] for r in await cur.fetchall()]


def _insert_institution(code: str) -> Any:
    async def op(conn: Conn) -> None:
        await conn.execute("INSERT INTO institutions VALUES (%s, 'test', 3, '440100')", (code,))

    return op


def test_transaction_commits_and_rolls_back(pg_dsn: str) -> None:
    init_db(pg_dsn)

    async def main() -> None:
        async with PgStore(pg_dsn, min_size=1, max_size=2) as store:

            async def ok(conn: Conn) -> int:
                await _insert_institution("H1")(conn)
                return 7

            async def fails(conn: Conn) -> None:
                await _insert_institution("H2")(conn)
                raise ValueError("refused")

            assert await store.transaction(ok) == 7
            with pytest.raises(ValueError, match="refused"):
                await store.transaction(fails)
            assert await store.read(_institutions) == ["H1"]
            with pytest.raises(errors.ReadOnlySqlTransaction):
                await store.read(_insert_institution("H3"))
            assert store.retried == 0

    asyncio.run(main())
    # Committed, not merely visible to the session that wrote it.
    assert _one(pg_dsn, "SELECT string_agg(fixmedins_code, ',') FROM institutions") == "H1"
    assert _one(pg_dsn, "SHOW synchronous_commit") == "on"


def test_a_connection_the_server_dropped_is_replaced_at_checkout(pg_dsn: str) -> None:
    """A pool connection whose backend the server ended (as a restart does) is not handed to
    a transaction: the pool's check at checkout finds it gone and replaces it (without the
    check, this transaction would fail)."""
    init_db(pg_dsn)

    async def backends(store: PgStore) -> set[int]:
        async def pid(conn: Conn) -> int:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            assert row is not None
            return int(row[0])

        return {await store.transaction(pid) for _ in range(3)}

    async def main() -> None:
        async with PgStore(pg_dsn, min_size=1, max_size=1) as store:
            first = await backends(store)
            assert len(first) == 1  # one connection, kept across checkouts
            pid = next(iter(first))
            with connect(pg_dsn) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                for _ in range(200):  # the backend has said its goodbye and gone
                    gone = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                    if admin.execute(gone, (pid,)).fetchone() is None:
                        break
                    threading.Event().wait(0.02)
            second = await backends(store)
            assert len(second) == 1 and second != first
            assert store.retried == 0

    asyncio.run(main())


def test_serialization_failure_from_fn_is_retried(pg_dsn: str) -> None:
    init_db(pg_dsn)
    calls = 0

    async def flaky(conn: Conn) -> str:
        nonlocal calls
        calls += 1
        await _insert_institution("H1")(conn)
        if calls == 1:
            raise errors.SerializationFailure("provoked")
        return "done"

    async def always(conn: Conn) -> None:
        raise errors.DeadlockDetected("provoked")

    async def main() -> None:
        async with PgStore(pg_dsn, min_size=1, max_size=1, retries=2) as store:
            assert await store.transaction(flaky) == "done"
            assert (calls, store.retried) == (2, 1)
            assert await store.read(_institutions) == ["H1"]  # the first attempt rolled back
            with pytest.raises(errors.DeadlockDetected):
                await store.transaction(always)
            assert store.retried == 3

    asyncio.run(main())


def test_real_serialization_failure_is_retried(pg_dsn: str) -> None:
    """Write skew under SERIALIZABLE: each transaction counts the rows, then adds one. Run
    side by side, one of them must fail with 40001; its retry sees the other's row."""
    init_db(pg_dsn)
    calls = {"a": 0, "b": 0}

    async def main() -> list[int]:
        both_read = asyncio.Barrier(2)
        async with PgStore(pg_dsn, min_size=2, max_size=2) as store:

            async def add(name: str) -> int:
                async def op(conn: Conn) -> int:
                    calls[name] += 1
                    cur = await conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'")
                    row = await cur.fetchone()
                    assert row is not None
                    if calls[name] == 1:  # only the first attempts meet
                        await both_read.wait()
                    await conn.execute("INSERT INTO meta VALUES (%s, %s)", (f"k{name}", row[0]))
                    return int(row[0])

                return await store.transaction(op, serializable=True)

            seen = await asyncio.gather(add("a"), add("b"))
            assert store.retried >= 1
            return sorted(seen)

    assert asyncio.run(main()) == [0, 1]
    assert sum(calls.values()) >= 3


def test_lock_accumulators_seeds_from_the_opening_row(pg_dsn: str) -> None:
    init_db(pg_dsn)
    with connect(pg_dsn) as conn:
        conn.execute(
            f"INSERT INTO accumulators (psn_no, year, pool, opening, {', '.join(ACC_FIELDS)})"
            f" VALUES ('P0001', 2026, '310', 1, {', '.join(['0'] * len(ACC_FIELDS))})"
        )
        conn.execute("UPDATE accumulators SET dedc_paid = 130000, inpatient_count = 1")

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        async with PgStore(pg_dsn, min_size=1, max_size=1) as store:

            async def both(conn: Conn) -> tuple[dict[str, int], dict[str, int]]:
                return (
                    await lock_accumulators(conn, *PSN),
                    await lock_accumulators(conn, "P0002", 2026, "310"),
                )

            return await store.transaction(both)

    seeded, fresh = asyncio.run(main())
    assert seeded == {**dict.fromkeys(ACC_FIELDS, 0), "dedc_paid": 130000, "inpatient_count": 1}
    assert fresh == dict.fromkeys(ACC_FIELDS, 0)
    assert _one(pg_dsn, "SELECT count(*) FROM accumulators WHERE opening = 0") == 2


def test_lock_accumulators_makes_a_second_locker_wait(pg_dsn: str) -> None:
    init_db(pg_dsn)

    async def main() -> None:
        async with PgStore(pg_dsn, min_size=2, max_size=2) as store:
            locked = asyncio.Event()
            release = asyncio.Event()

            async def first(conn: Conn) -> None:
                acc = await lock_accumulators(conn, *PSN)
                locked.set()
                await release.wait()
                await write_accumulators(conn, *PSN, {**acc, "dedc_paid": acc["dedc_paid"] + 1})

            async def second(conn: Conn) -> int:
                return (await lock_accumulators(conn, *PSN))["dedc_paid"]

            # The row exists beforehand, so the wait is the row lock's, not the seed INSERT's.
            await store.transaction(lambda conn: lock_accumulators(conn, *PSN))
            t1 = asyncio.create_task(store.transaction(first))
            await locked.wait()
            t2 = asyncio.create_task(store.transaction(second))
            await asyncio.sleep(0.3)
            assert not t2.done()  # blocked on the row lock
            release.set()
            await t1
            assert await asyncio.wait_for(t2, 10) == 1  # saw the first one's commit

    asyncio.run(main())


def test_lock_accumulators_serialises_concurrent_updaters(pg_dsn: str) -> None:
    """Two threads, each with its own loop and pool like two center processes, each
    read-modify-write the same person's accumulators 200 times: no increment is lost."""
    init_db(pg_dsn)
    rounds = 200
    start = threading.Barrier(2)

    async def updater() -> None:
        async with PgStore(pg_dsn, min_size=1, max_size=1) as store:

            async def bump(conn: Conn) -> None:
                acc = await lock_accumulators(conn, *PSN)
                acc["dedc_paid"] += 1
                acc["hifp_paid"] += 25
                await write_accumulators(conn, *PSN, acc)

            start.wait()
            for _ in range(rounds):
                await store.transaction(bump)

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(asyncio.run, updater()) for _ in range(2)]:
            f.result(timeout=120)
    with connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT dedc_paid, hifp_paid, count(*) OVER () FROM accumulators"
            " WHERE psn_no = 'P0001' AND opening = 0"
        ).fetchone()
    assert row == (2 * rounds, 2 * rounds * 25, 1)


def test_the_sealing_migrations_seal_what_a_center_holds(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A center database of the layout before (clear persons and stored answers) is sealed
    by migrations 4 and 5; without the data key they refuse and change nothing."""
    from server.center.store import migrations as pg_migrations
    from server.demo import dataset as demo_data
    from server.persons import PERSON_COLUMNS
    from server.security.datakeys import DataKeys
    from server.security.pii import Vault

    full = list(pg_migrations.MIGRATIONS)
    monkeypatch.setattr(pg_migrations, "MIGRATIONS", [m for m in full if m[0] <= 3])
    assert init_db(pg_dsn) == 3
    p = demo_data.persons()[1]
    row = {c: getattr(p, c, 0) for c in PERSON_COLUMNS}
    row.update(cvlserv_flag=0, maf_flag=0, retired=0, balc=100, opening_balc=100)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO persons ({', '.join(PERSON_COLUMNS)})"
            f" VALUES ({', '.join(['%s'] * len(PERSON_COLUMNS))})",
            [row[c] for c in PERSON_COLUMNS],
        )
        conn.execute(
            "INSERT INTO idempotency VALUES ('H1', 'M1', 'SettleSummary', '\\x00', %s, 'S1', 0)",
            (p.psn_name.encode(),),
        )
    monkeypatch.setattr(pg_migrations, "MIGRATIONS", full)
    with pytest.raises(RuntimeError, match="needs the data key"):
        init_db(pg_dsn)
    assert _one(pg_dsn, "SELECT psn_name FROM persons") == p.psn_name
    keys = DataKeys.derive(bytes(range(32)))
    assert init_db(pg_dsn, keys) == LATEST
    vault = Vault(keys)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        name, idx = conn.execute("SELECT psn_name, cert_idx FROM persons").fetchone()  # type: ignore[misc]
        (answer,) = conn.execute("SELECT response FROM idempotency").fetchone()  # type: ignore[misc]
    assert vault.open("psn_name", p.psn_no, bytes(name)) == p.psn_name
    assert bytes(idx) == vault.index("psn_cert_no", p.psn_cert_no)
    assert vault.open_answer("H1", "M1", bytes(answer)) == p.psn_name.encode()
