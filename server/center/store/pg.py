"""The center's PostgreSQL store: a pool of async connections, transactions with retry.

A state change is an operation `async def op(conn) -> T` handed to `PgStore.transaction`: it
runs in one transaction (READ COMMITTED unless asked for SERIALIZABLE) that has committed,
with `synchronous_commit = on`, before `transaction` returns, so nothing is acknowledged
before it is on disk. A serialization failure or deadlock (SQLSTATE 40001, 40P01) rolls the
transaction back and the operation runs again on a fresh transaction after a jittered
backoff; operations must therefore keep their effects inside the connection.

Several center processes and servers share one database, so per-person accumulator updates
are serialised by PostgreSQL, never in process memory: an operation calls
`lock_accumulators`, which holds the row lock of the person's current accumulators until the
transaction ends.

Reads (`PgStore.read`) run in a REPEATABLE READ READ ONLY transaction: one snapshot, so
reconciliation totals and details agree, and such a transaction never fails to serialise.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncCursor, errors
from psycopg_pool import AsyncConnectionPool

from server.center.store.migrations import migrate
from server.persons import ACC_FIELDS
from server.security import audit
from server.security.datakeys import DataKeys

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)
BACKOFF_BASE_S = 0.005
BACKOFF_CAP_S = 0.5


def connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A plain connection (tools, migrations) in autocommit mode: transactions are explicit."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET synchronous_commit = on")
    return conn


def init_db(dsn: str, keys: DataKeys | None = None) -> int:
    """Create or upgrade the schema; returns its version. Safe to run from many processes.
    `keys` for the steps that seal personal data already stored."""
    with connect(dsn) as conn:
        return migrate(conn, keys)


async def _configure(conn: Conn) -> None:
    # Explicit, so a server configured with synchronous_commit = off cannot make the center
    # acknowledge a settlement that a crash would lose.
    await conn.execute("SET synchronous_commit = on")


def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 16) -> AsyncConnectionPool[Conn]:
    """An unopened pool of autocommit connections (`await pool.open()` before use)."""
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        configure=_configure,
        # A connection broken by a server restart is replaced at checkout instead of failing
        # the call that drew it.
        check=AsyncConnectionPool.check_connection,
        open=False,
        name="medsettle-center",
    )


def backoff(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): exponential, capped, with half of
    it random so transactions that collided do not collide again in step."""
    d = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(attempt - 1, 20))
    return d / 2 + random.uniform(0, d / 2)


class PgStore:
    """One per center process: the pool, and transactions with retry on top of it."""

    def __init__(
        self, dsn: str, *, min_size: int = 2, max_size: int = 16, retries: int = 10
    ) -> None:
        self.pool = create_pool(dsn, min_size=min_size, max_size=max_size)
        self.retries = retries
        self.retried = 0  # transactions run again after 40001/40P01 (for metrics)

    async def open(self, timeout: float = 30.0) -> None:
        """Open the pool; raises psycopg_pool.PoolTimeout if the server is not reachable."""
        await self.pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> PgStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def transaction(
        self, fn: Callable[[Conn], Awaitable[T]], *, serializable: bool = False
    ) -> T:
        """Run `fn(conn)` in one transaction and commit; retried on 40001/40P01 up to
        `retries` times, after which the last error propagates. Any other error rolls back
        and propagates at once (a lost connection may have committed: not ours to guess)."""
        attempt = 0
        while True:
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    if serializable:
                        await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    return await fn(conn)
            except RETRYABLE:
                attempt += 1
                if attempt > self.retries:
                    raise
                self.retried += 1
            # The connection is back in the pool while we wait.
            await asyncio.sleep(backoff(attempt))

    async def read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `fn(conn)` in one read-only snapshot."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return await fn(conn)


_WHERE = "psn_no = %(psn_no)s AND year = %(year)s AND pool = %(pool)s"
_LOCK = (
    f"SELECT {', '.join(ACC_FIELDS)} FROM accumulators WHERE {_WHERE} AND opening = 0 FOR UPDATE"
)
# The current row starts as the opening row when one was loaded, else as zeros.
_SEED = f"""
INSERT INTO accumulators (psn_no, year, pool, opening, {", ".join(ACC_FIELDS)})
SELECT %(psn_no)s, %(year)s, %(pool)s, 0, {", ".join(ACC_FIELDS)} FROM (
    SELECT {", ".join(ACC_FIELDS)}, 0 AS pri FROM accumulators WHERE {_WHERE} AND opening = 1
    UNION ALL
    SELECT {", ".join("0" for _ in ACC_FIELDS)}, 1
) AS seed ORDER BY pri LIMIT 1
ON CONFLICT DO NOTHING
"""
_UPDATE = (
    f"UPDATE accumulators SET {', '.join(f'{f} = %({f})s' for f in ACC_FIELDS)}"
    f" WHERE {_WHERE} AND opening = 0"
)


async def lock_accumulators(conn: Conn, psn_no: str, year: int, pool: str) -> dict[str, int]:
    """Lock the person's current accumulators for (year, pool) until the transaction ends
    and return them; a concurrent caller for the same person waits here.

    The row is created first when missing (from the opening row, else zeros), so there is
    always a row to lock; two first-time callers meet on the primary key and both end up
    locking the one row.
    """
    key = {"psn_no": psn_no, "year": year, "pool": pool}
    row = await (await conn.execute(_LOCK, key)).fetchone()
    if row is None:
        await conn.execute(_SEED, key)
        row = await (await conn.execute(_LOCK, key)).fetchone()
    if row is None:  # the INSERT above makes this unreachable
        raise RuntimeError(f"no accumulator row for {psn_no} {year} {pool}")
    return dict(zip(ACC_FIELDS, row, strict=True))


async def write_accumulators(
    conn: Conn, psn_no: str, year: int, pool: str, values: dict[str, int]
) -> None:
    """Store new current accumulators; call after `lock_accumulators` in the same transaction."""
    await conn.execute(_UPDATE, {"psn_no": psn_no, "year": year, "pool": pool, **values})


# ------------------------------------------------------------------ audit (security/audit.py)
AUDIT_LOCK = 0x6D65_6461  # advisory lock class of the audit chains; the chain's hash is the key


async def audit_append(conn: Conn, key: bytes, rec: audit.Record, chain: str) -> int:
    """Add `rec` to the end of `chain` in the caller's transaction; the chain's lock is held
    until it ends (one chain per institution, so others do not wait)."""
    return await audit_append_many(conn, key, [rec], chain)


async def audit_append_many(conn: Conn, key: bytes, records: list[audit.Record], chain: str) -> int:
    """`audit_append` of several records, in order, in one lock and one insert; the last
    record's sequence number."""
    heads = await audit_heads(conn, [chain])
    rows = audit_rows(key, chain, heads[chain], records)
    if rows:
        await conn.execute(AUDIT_INSERT_ALL.sql, AUDIT_INSERT_ALL.param(rows))
    return int(rows[-1][1]) if rows else heads[chain][0]


AUDIT_COLUMNS = (
    ("chain", "text"),
    ("seq", "bigint"),
    ("at", "bigint"),
    ("fixmedins_code", "text"),
    ("opter", "text"),
    ("roles", "text"),
    ("rpc", "text"),
    ("objects", "text"),
    ("outcome", "text"),
    ("hash", "bytea"),
)


@dataclass(frozen=True)
class InsertAll:
    """An INSERT of many rows in one statement (`insert_all`) whose one parameter is the
    rows as a JSON array of arrays (`param`), taken apart by PostgreSQL. An array parameter
    per column costs psycopg a Python dumper call per value (13 % of the center's samples
    in a batch of SettleSummary calls); one string is dumped in C and `json.dumps` is C.
    The parameter is `jsonb`, parsed once: `->>` on `json` text parses the row again for
    every column (30 settlements: 6.1 ms against 1.4 ms with jsonb, 2.9 with arrays)."""

    sql: str
    binary: tuple[int, ...]  # bytea columns: hex in the JSON
    documents: tuple[int, ...]  # jsonb columns: the document itself (psycopg's Jsonb or not)

    def param(self, rows: Sequence[Sequence[Any]]) -> tuple[str]:
        out: Sequence[Any] = rows
        if self.binary or self.documents:
            out = []
            for row in rows:
                r = list(row)
                for i in self.binary:
                    if r[i] is not None:
                        r[i] = bytes(r[i]).hex()
                for i in self.documents:
                    r[i] = getattr(r[i], "obj", r[i])
                out.append(r)
        return (json.dumps(out, ensure_ascii=False, separators=(",", ":")),)


def insert_all(table: str, columns: Sequence[tuple[str, str]]) -> InsertAll:
    """The INSERT of many rows of `table` with `columns` (name, SQL type) in their order.
    JSON numbers reach the integer columns as their digits (exact); texts are checked for
    control characters at the door (server/limits.py), so none holds a NUL."""
    names = ", ".join(name for name, _ in columns)
    values = []
    for i, (_, kind) in enumerate(columns):
        if kind == "bytea":
            values.append(f"decode(e->>{i}, 'hex')")
        elif kind == "jsonb":
            values.append(f"NULLIF(e->{i}, 'null'::jsonb)")
        else:
            values.append(f"(e->>{i})::{kind}")
    sql = (
        f"INSERT INTO {table} ({names}) SELECT {', '.join(values)}"
        " FROM jsonb_array_elements(%s::jsonb) AS r(e)"
    )
    binary = tuple(i for i, (_, kind) in enumerate(columns) if kind == "bytea")
    documents = tuple(i for i, (_, kind) in enumerate(columns) if kind == "jsonb")
    return InsertAll(sql, binary, documents)


def columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists, for unnest() (an UPDATE ... FROM unnest)."""
    return [[r[i] for r in rows] for i in range(width)]


AUDIT_INSERT_ALL = insert_all("audit", AUDIT_COLUMNS)


async def audit_heads(conn: Conn, chains: list[str]) -> dict[str, tuple[int, bytes]]:
    """Lock each chain (in name order) to the transaction's end and read its last link
    (seq, hash), all in one round trip."""
    async with conn.pipeline():
        queued = await queue_audit_heads(conn, chains)
    return await audit_heads_of(queued)


Queued = list[tuple[str, AsyncCursor[Any], AsyncCursor[Any]]]


async def queue_audit_heads(conn: Conn, chains: list[str]) -> Queued:
    """`audit_heads`' statements, queued in the caller's pipeline (so a batch that reads
    its rows in one round trip takes its chains' heads in the same one, after its row
    locks, the order every transaction takes them in); `audit_heads_of` after it."""
    queued = []
    for chain in sorted(set(chains)):
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (AUDIT_LOCK, chain))
        last = await conn.execute(
            "SELECT seq, hash FROM audit WHERE chain = %s ORDER BY seq DESC LIMIT 1",
            (chain,),
        )
        anchor = await conn.execute("SELECT seq, hash FROM audit_anchor WHERE chain = %s", (chain,))
        queued.append((chain, last, anchor))
    return queued


async def audit_heads_of(queued: Queued) -> dict[str, tuple[int, bytes]]:
    heads = {}
    for chain, last, anchor in queued:
        row = await last.fetchone() or await anchor.fetchone() or (0, audit.GENESIS)
        heads[chain] = (int(row[0]), bytes(row[1]))
    return heads


def audit_rows(
    key: bytes, chain: str, head: tuple[int, bytes], records: list[audit.Record]
) -> list[tuple[Any, ...]]:
    """The `audit` rows of `records` appended after `head` (its last seq and hash)."""
    seq, prev = head
    rows = []
    for rec in records:
        seq += 1
        prev = audit.link(key, chain, seq, prev, rec)
        rows.append((chain, seq, *rec.fields(), prev))
    return rows


async def audit_prune(conn: Conn, key: bytes, now: int, retention_days: int) -> int:
    cutoff = now - retention_days * audit.DAY_MS
    cur = await conn.execute(
        "SELECT DISTINCT ON (chain) chain, seq, hash FROM audit WHERE at < %s"
        " ORDER BY chain, seq DESC",
        (cutoff,),
    )
    gone = 0
    for chain, seq, h in await cur.fetchall():
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (AUDIT_LOCK, chain))
        mac = audit.anchor_mac(key, chain, seq, bytes(h), cutoff)
        await conn.execute(
            "INSERT INTO audit_anchor VALUES (%s, %s, %s, %s, %s) ON CONFLICT (chain) DO UPDATE"
            " SET seq = EXCLUDED.seq, hash = EXCLUDED.hash,"
            " pruned_before = EXCLUDED.pruned_before, mac = EXCLUDED.mac",
            (chain, seq, h, cutoff, mac),
        )
        done = await conn.execute("DELETE FROM audit WHERE chain = %s AND seq <= %s", (chain, seq))
        gone += done.rowcount
    return gone


def audit_verify(
    dsn: str,
    key: bytes,
    now: int,
    retention_days: int,
    want: tuple[str, int] | None = None,
) -> audit.Verdict:
    """Check every chain of the center's audit trail, streaming the rows."""
    with connect(dsn) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        anchors = {
            r[0]: (int(r[1]), bytes(r[2]), int(r[3]), bytes(r[4]))
            for r in conn.execute("SELECT chain, seq, hash, pruned_before, mac FROM audit_anchor")
        }
        with conn.cursor(name="audit_rows") as cur:
            cur.execute("SELECT * FROM audit ORDER BY chain, seq")
            return audit.verify(iter(cur), anchors, key, now, retention_days, want)
