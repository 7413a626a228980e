"""A batch of forwarded items against the center's ledger, set-wise (issue 15).

`Forward` carries hundreds of settlements and cancels; statement by statement they cost a
dozen round trips each. Here what a batch may touch is read in five statements (the
settlements it names, their fund legs, the visits' active settlements, the persons, the
accumulator rows); the items are decided one after another over that view by the engine
(`engine_rs.ForwardBatch.decide`, engine_rs/src/center/forward.rs, with the GIL released);
and what they changed is written in a few more: COPY for new settlements and legs (the
engine makes the COPY text), one `UPDATE ... FROM unnest` per table for the rest. An item
sees every earlier item of its batch, as it would statement by statement.

Locks, all to the transaction's end and each set in key order, so two batches (or a batch
and a center-mode settle) meet in the same order: the settlements the batch names, the
persons, the accumulator rows. A current accumulator row that did not exist when read and
is created meanwhile by another transaction makes the batch run again (a serialization
failure, retried by `PgStore.transaction`), so nothing is decided on values it did not lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import errors
from psycopg.types.json import Jsonb

import engine_rs
from server.center.store.pg import Conn, columns_of
from server.persons import ACC_FIELDS, READ_COLUMNS

Key = tuple[str, int, str]  # psn_no, year, pool

# What a forwarded settlement is compared on when the center already holds its id: the
# columns read after setl_id, state and cancel_id, in the order the engine takes them
# (engine_rs/src/python/center.rs, `view_of`).
HELD = (
    "node_id",
    "fixmedins_code",
    "mdtrt_id",
    "psn_no",
    "msgid",
    "setl_time",
    "mode",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "psn_cash_pay",
    "acc_year",
    "acc_pool",
    "acc_delta",
)

_KEY_OF_HELD = ("fixmedins_code", "psn_no", "acc_year", "acc_pool")
_COPY_SETTLEMENTS = (
    f"COPY settlements ({', '.join(engine_rs.CENTER_SETTLEMENT_COLUMNS)}) FROM STDIN"
)
_ACC = ", ".join(ACC_FIELDS)
_ACC_ARRAYS = ", ".join("%s::bigint[]" for _ in ACC_FIELDS)


@dataclass
class LedgerBatch:
    """The rows a batch's items may touch, as read (and locked) for the engine's decision."""

    code: str  # the institution the batch is of
    settlements: list[tuple[Any, ...]] = field(default_factory=list)  # setl_id, state,
    # cancel_id, then HELD
    legs: list[tuple[Any, ...]] = field(default_factory=list)  # setl_id, fund, base, amount
    active: list[tuple[str, str]] = field(default_factory=list)  # mdtrt_id, setl_id
    persons: list[tuple[Any, ...]] = field(default_factory=list)  # READ_COLUMNS
    accumulators: list[tuple[Any, ...]] = field(default_factory=list)  # key, opening, ACC

    async def load(
        self,
        conn: Conn,
        setl_ids: list[str],
        settle_ids: set[str],
        mdtrt_ids: list[str],
        psn_nos: set[str],
        keys: set[Key],
    ) -> None:
        """Read (and lock) what items naming these may touch; the persons and accumulator
        keys of the settlements named are added to the given ones."""
        cur = await conn.execute(
            probe(
                f"setl_id, state, cancel_id, {', '.join(HELD)} FROM settlements",
                "setl_id",
                lock=True,
            ),
            (setl_ids,),
        )
        self.settlements = await cur.fetchall()
        fixmedins_code, psn_no, year, pool = (3 + HELD.index(f) for f in _KEY_OF_HELD)
        for row in self.settlements:
            if row[fixmedins_code] == self.code:  # only this institution's are undone
                psn_nos.add(row[psn_no])
                keys.add((row[psn_no], row[year], row[pool]))
        dup = [row[0] for row in self.settlements if row[0] in settle_ids]
        if dup:
            cur = await conn.execute(
                probe("setl_id, fund_pay_type, base, amount FROM setl_legs", "setl_id"),
                (dup,),
            )
            self.legs = await cur.fetchall()
        cur = await conn.execute(
            probe(
                "mdtrt_id, setl_id FROM settlements",
                "mdtrt_id",
                " AND fixmedins_code = %s AND state = 1",  # the partial index's rows
            ),
            (mdtrt_ids, self.code),
        )
        self.active = await cur.fetchall()
        cur = await conn.execute(
            probe(f"{READ_COLUMNS} FROM persons", "psn_no", lock=True),
            (sorted(psn_nos),),
        )
        self.persons = await cur.fetchall()
        self.accumulators = await lock_accumulator_rows(conn, keys)

    @staticmethod
    async def write(conn: Conn, decided: engine_rs.ForwardDecision) -> None:
        """Write what the batch's items changed (as the engine decided it)."""
        cancels = decided.cancels
        if cancels[0]:  # first: a visit settled again in this batch needs its slot free
            await conn.execute(
                "UPDATE settlements s SET state = 2, cancel_id = u.cancel_id,"
                " cancel_time = u.at, cancel_date = u.date"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::int[])"
                " AS u(setl_id, cancel_id, at, date) WHERE s.setl_id = u.setl_id",
                cancels,
            )
        if decided.recorded:
            async with conn.cursor() as cur:
                async with cur.copy(_COPY_SETTLEMENTS) as copy:
                    await copy.write(decided.settlements_copy)
                async with cur.copy("COPY setl_legs FROM STDIN") as copy:
                    await copy.write(decided.legs_copy)
        await write_accumulators(conn, *decided.accumulators)
        moved = decided.moved
        if moved[0]:
            await conn.execute(
                "UPDATE persons p SET balc = p.balc + u.change"
                " FROM unnest(%s::text[], %s::bigint[]) AS u(psn_no, change)"
                " WHERE p.psn_no = u.psn_no",
                moved,
            )
        differences = [(*d[:4], Jsonb(d[4]), Jsonb(d[5]), d[6]) for d in decided.differences]
        if differences:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO accumulator_differences VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    differences,
                )


async def lock_accumulator_rows(conn: Conn, keys: set[Key]) -> list[tuple[Any, ...]]:
    """The accumulator rows of `keys` (psn_no, year, pool, opening, ACC_FIELDS), locked in
    key order; a key's current row (opening 0) comes before its loaded opening row (1),
    which only seeds a current row not made yet."""
    ordered = sorted(keys)
    cur = await conn.execute(
        f"SELECT r.* FROM unnest(%s::text[], %s::int[], %s::text[]) WITH ORDINALITY"
        " AS u(k, y, p, n) CROSS JOIN LATERAL ("
        f"SELECT psn_no, year, pool, opening, {_ACC} FROM accumulators"
        " WHERE psn_no = u.k AND year = u.y AND pool = u.p"
        " ORDER BY opening OFFSET 0 FOR UPDATE) r"
        " ORDER BY u.n, r.opening",
        columns_of(ordered, 3),
    )
    return await cur.fetchall()


_SETS = ", ".join(f"{f} = u.{f}" for f in ACC_FIELDS)
# Accumulator rows decided over locked ones, as columns psn_no, year, pool, then ACC_FIELDS:
# rows that exist, and rows read as missing (RETURNING 1 for each one made).
ACC_UPDATE = (
    f"UPDATE accumulators a SET {_SETS}"
    f" FROM unnest(%s::text[], %s::int[], %s::text[], {_ACC_ARRAYS})"
    f" AS u(psn_no, year, pool, {_ACC}) WHERE a.psn_no = u.psn_no"
    " AND a.year = u.year AND a.pool = u.pool AND a.opening = 0"
)
ACC_INSERT = (
    f"INSERT INTO accumulators (psn_no, year, pool, opening, {_ACC})"
    f" SELECT psn_no, year, pool, 0, {_ACC}"
    f" FROM unnest(%s::text[], %s::int[], %s::text[], {_ACC_ARRAYS})"
    f" AS u(psn_no, year, pool, {_ACC}) ON CONFLICT DO NOTHING RETURNING 1"
)


def require_made(made: int, new: list[list[Any]]) -> None:
    """After ACC_INSERT: a row of `new` that another transaction made meanwhile (its values
    were not the ones decided on) makes the batch run again."""
    if made != len(new[0]):
        raise errors.SerializationFailure(
            "an accumulator row was created by another transaction during the batch"
        )


async def write_accumulators(conn: Conn, old: list[list[Any]], new: list[list[Any]]) -> None:
    """Store accumulator rows decided over locked ones: `old` (rows that exist) and `new`
    (rows read as missing), each as columns psn_no, year, pool, then ACC_FIELDS."""
    if old[0]:
        await conn.execute(ACC_UPDATE, old)
    if new[0]:
        cur = await conn.execute(ACC_INSERT, new)
        require_made(len(await cur.fetchall()), new)


def probe(select: str, column: str, more: str = "", *, lock: bool = False) -> str:
    """`SELECT <select> WHERE <column> = <key><more>` for each key of the array %s, in the
    array's order (so rows are locked, with `lock`, in that order).

    One index probe per key, whatever the planner believes of the table: `= ANY(%s)` or a
    join can be planned as a scan of the table (or of an institution's part of it, once per
    key) when the statistics lag its growth, as during a drain into a new center; a batch
    then costs seconds. `OFFSET 0` keeps the subquery a subquery, probed once per key."""
    return (
        "SELECT r.* FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, n) CROSS JOIN LATERAL"
        f" (SELECT {select} WHERE {column} = u.k{more} OFFSET 0"
        f"{' FOR UPDATE' if lock else ''}) r ORDER BY u.n"
    )
