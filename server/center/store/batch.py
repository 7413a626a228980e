"""A batch of forwarded items against the center's ledger, set-wise (issue 15).

`Forward` carries hundreds of settlements and cancels; statement by statement they cost a
dozen round trips each. Here what a batch may touch is read in five statements (the
settlements it names, their fund legs, the visits' active settlements, the persons, the
accumulator rows), the items are decided one after another in memory over that view
(server/center/forwarded.py), and what they changed is written in a few more: COPY for new
settlements and legs, one `UPDATE ... FROM unnest` per table for the rest. An item sees
every earlier item of its batch, as it would statement by statement.

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

from server.center.store.pg import Conn
from server.persons import ACC_FIELDS, READ_COLUMNS

Key = tuple[str, int, str]  # psn_no, year, pool

# What a forwarded settlement is compared on when the center already holds its id.
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
SETTLEMENT_COLUMNS = (
    "setl_id",
    "node_id",
    "fixmedins_code",
    "mdtrt_id",
    "psn_no",
    "insutype",
    "clr_type",
    "msgid",
    "invono",
    "setl_time",
    "setl_date",
    "state",
    "mode",
    "offline",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "psn_cash_pay",
    "acc_year",
    "acc_pool",
    "acc_delta",
    "info",
    "received_at",
    "cancel_id",
    "cancel_time",
    "cancel_date",
)
SETTLED, CANCELLED = 1, 2

_ACC = ", ".join(ACC_FIELDS)
_ACC_ARRAYS = ", ".join("%s::bigint[]" for _ in ACC_FIELDS)


@dataclass
class Held:
    """A settlement as the batch sees it: held by the center, or recorded earlier in it."""

    values: dict[str, Any]  # the HELD fields, as stored
    legs: list[tuple[str, int, int]]  # (fund_pay_type, base, amount), sorted
    state: int
    cancel_id: str | None
    new: dict[str, Any] | None = None  # its row (SETTLEMENT_COLUMNS), when recorded here


@dataclass
class LedgerBatch:
    """The batch's view of the ledger and what it will write."""

    code: str  # the institution the batch is of
    settlements: dict[str, Held] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)  # mdtrt_id -> its settled setl_id
    persons: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # READ_COLUMNS rows
    balances: dict[str, int] = field(default_factory=dict)
    accumulators: dict[Key, dict[str, int]] = field(default_factory=dict)  # current or seed
    stored: set[Key] = field(default_factory=set)  # keys with a current row in the database
    # What the batch writes.
    touched: set[Key] = field(default_factory=set)
    moved: dict[str, int] = field(default_factory=dict)  # psn_no -> balance change
    recorded: list[dict[str, Any]] = field(default_factory=list)  # new settlements' rows
    legs: list[tuple[str, str, int, int]] = field(default_factory=list)
    cancels: list[tuple[str, str, int, int]] = field(default_factory=list)  # held ones
    differences: list[tuple[Any, ...]] = field(default_factory=list)

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
            _probe(
                f"setl_id, state, cancel_id, {', '.join(HELD)} FROM settlements",
                "setl_id",
                lock=True,
            ),
            (setl_ids,),
        )
        for setl_id, state, cancel_id, *held in await cur.fetchall():
            values = dict(zip(HELD, held, strict=True))
            self.settlements[setl_id] = Held(values, [], state, cancel_id)
            if values["fixmedins_code"] == self.code:  # only this institution's are undone
                psn_nos.add(values["psn_no"])
                keys.add((values["psn_no"], values["acc_year"], values["acc_pool"]))
        dup = [s for s in self.settlements if s in settle_ids]
        if dup:
            cur = await conn.execute(
                _probe("setl_id, fund_pay_type, base, amount FROM setl_legs", "setl_id"),
                (dup,),
            )
            for setl_id, *leg in await cur.fetchall():
                self.settlements[setl_id].legs.append((leg[0], leg[1], leg[2]))
            for s in dup:
                self.settlements[s].legs.sort()
        cur = await conn.execute(
            _probe(
                "mdtrt_id, setl_id FROM settlements",
                "mdtrt_id",
                " AND fixmedins_code = %s AND state = 1",  # the partial index's rows
            ),
            (mdtrt_ids, self.code),
        )
        self.active = {m: s for m, s in await cur.fetchall()}
        cur = await conn.execute(
            _probe(f"{READ_COLUMNS} FROM persons", "psn_no", lock=True),
            (sorted(psn_nos),),
        )
        for row in await cur.fetchall():
            self.persons[row[0]] = row
            self.balances[row[0]] = row[-1]  # READ_COLUMNS ends with balc
        ordered = sorted(keys)
        cur = await conn.execute(
            f"SELECT r.* FROM unnest(%s::text[], %s::int[], %s::text[]) WITH ORDINALITY"
            " AS u(k, y, p, n) CROSS JOIN LATERAL ("
            f"SELECT psn_no, year, pool, opening, {_ACC} FROM accumulators"
            " WHERE psn_no = u.k AND year = u.y AND pool = u.p"
            " ORDER BY opening OFFSET 0 FOR UPDATE) r"
            " ORDER BY u.n, r.opening",
            _columns(ordered, 3),
        )
        # Ordered by `opening`: the current row (0) comes first and is the one kept; the
        # loaded opening row (1) only seeds a current row not made yet.
        for psn_no, year, pool, opening, *acc in await cur.fetchall():
            key = (psn_no, year, pool)
            if opening == 0:
                self.stored.add(key)
            self.accumulators.setdefault(key, dict(zip(ACC_FIELDS, acc, strict=True)))

    def current(self, key: Key) -> dict[str, int]:
        """The person's accumulators for (year, pool) as of this point of the batch: the
        current row, else the opening one, else zeros."""
        return dict(self.accumulators.get(key) or dict.fromkeys(ACC_FIELDS, 0))

    def set_accumulators(self, key: Key, values: dict[str, int]) -> None:
        self.accumulators[key] = values
        self.touched.add(key)

    def move_balance(self, psn_no: str, change: int) -> None:
        if psn_no in self.balances:
            self.balances[psn_no] += change
            self.moved[psn_no] = self.moved.get(psn_no, 0) + change

    def record(self, row: dict[str, Any], legs: list[tuple[str, int, int]]) -> None:
        """A new settlement (its row by SETTLEMENT_COLUMNS) and its legs."""
        held = Held({f: row[f] for f in HELD}, sorted(legs), SETTLED, None, row)
        self.settlements[row["setl_id"]] = held
        self.active[row["mdtrt_id"]] = row["setl_id"]
        self.recorded.append(row)
        self.legs += [(row["setl_id"], *leg) for leg in legs]

    def cancel(self, setl_id: str, cancel_id: str, at: int, date: int) -> None:
        held = self.settlements[setl_id]
        held.state, held.cancel_id = CANCELLED, cancel_id
        if self.active.get(held.values["mdtrt_id"]) == setl_id:
            del self.active[held.values["mdtrt_id"]]
        if held.new is not None:  # recorded in this batch: inserted as cancelled
            held.new.update(state=CANCELLED, cancel_id=cancel_id, cancel_time=at, cancel_date=date)
        else:
            self.cancels.append((setl_id, cancel_id, at, date))

    async def write(self, conn: Conn) -> None:
        """Write what the batch's items changed."""
        if self.cancels:  # first: a visit settled again in this batch needs its slot free
            await conn.execute(
                "UPDATE settlements s SET state = 2, cancel_id = u.cancel_id,"
                " cancel_time = u.at, cancel_date = u.date"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::int[])"
                " AS u(setl_id, cancel_id, at, date) WHERE s.setl_id = u.setl_id",
                _columns(self.cancels, 4),
            )
        if self.recorded:
            async with conn.cursor() as cur:
                copy_sql = f"COPY settlements ({', '.join(SETTLEMENT_COLUMNS)}) FROM STDIN"
                async with cur.copy(copy_sql) as copy:
                    for row in self.recorded:
                        row = row | {"acc_delta": Jsonb(row["acc_delta"])}
                        await copy.write_row([row.get(c) for c in SETTLEMENT_COLUMNS])
                async with cur.copy("COPY setl_legs FROM STDIN") as copy:
                    for leg in self.legs:
                        await copy.write_row(leg)
        await self._write_accumulators(conn)
        moved = [(p, d) for p, d in sorted(self.moved.items()) if d]
        if moved:
            await conn.execute(
                "UPDATE persons p SET balc = p.balc + u.change"
                " FROM unnest(%s::text[], %s::bigint[]) AS u(psn_no, change)"
                " WHERE p.psn_no = u.psn_no",
                _columns(moved, 2),
            )
        if self.differences:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO accumulator_differences VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    self.differences,
                )

    async def _write_accumulators(self, conn: Conn) -> None:
        rows = [(*k, *(self.accumulators[k][f] for f in ACC_FIELDS)) for k in sorted(self.touched)]
        old = [r for r in rows if r[:3] in self.stored]
        new = [r for r in rows if r[:3] not in self.stored]
        width = 3 + len(ACC_FIELDS)
        if old:
            sets = ", ".join(f"{f} = u.{f}" for f in ACC_FIELDS)
            await conn.execute(
                f"UPDATE accumulators a SET {sets}"
                f" FROM unnest(%s::text[], %s::int[], %s::text[], {_ACC_ARRAYS})"
                f" AS u(psn_no, year, pool, {_ACC}) WHERE a.psn_no = u.psn_no"
                " AND a.year = u.year AND a.pool = u.pool AND a.opening = 0",
                _columns(old, width),
            )
        if new:
            cur = await conn.execute(
                f"INSERT INTO accumulators (psn_no, year, pool, opening, {_ACC})"
                f" SELECT psn_no, year, pool, 0, {_ACC}"
                f" FROM unnest(%s::text[], %s::int[], %s::text[], {_ACC_ARRAYS})"
                f" AS u(psn_no, year, pool, {_ACC}) ON CONFLICT DO NOTHING RETURNING 1",
                _columns(new, width),
            )
            if len(await cur.fetchall()) != len(new):
                # Another transaction made a current row this batch read as missing: its
                # values were not the ones decided on. Run the batch again.
                raise errors.SerializationFailure(
                    "an accumulator row was created by another transaction during the batch"
                )


def _probe(select: str, column: str, more: str = "", *, lock: bool = False) -> str:
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


def _columns(rows: list[Any], width: int) -> list[list[Any]]:
    """Rows as `width` column lists, for unnest()."""
    return [[r[i] for r in rows] for i in range(width)]
