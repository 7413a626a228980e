"""Reconciliation of one institution's ledger (3201 totals, 3202 details).

Days are the configured local day. A settlement counts on the day it was settled; a cancel
counts on the day it was cancelled, with the cancelled amounts taken off. So a day's totals
never change once the day is over, whatever happens to its settlements later.

Sums cannot overflow: the database sums the high and low halves of every amount apart and
Python joins them (limits.split_sum); a total that does not fit its int64 field is
OUT_OF_RANGE naming it, never an internal error.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from medsettle.v1 import catalog_pb2, reconciliation_pb2
from server.codes import valid_date
from server.errors import ResourceExhausted, Violations
from server.limits import check_int64, joined, split_sum
from server.persons import ACC_FIELDS

Key = tuple[int, int, int]  # (day, insutype, clr_type)
# Runs one query (written with `?` placeholders) and returns its rows: the same queries serve
# the front-end's SQLite ledger and the center's PostgreSQL one.
Fetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def sqlite_fetch(conn: sqlite3.Connection) -> Fetch:
    return lambda sql, args: conn.execute(sql, args).fetchall()


def _check_range(begin: int, end: int) -> None:
    v = Violations()
    v.require(valid_date(begin), "begin_date", f"{begin} is not a yyyymmdd date")
    v.require(valid_date(end), "end_date", f"{end} is not a yyyymmdd date")
    if valid_date(begin) and valid_date(end):
        v.require(begin <= end, "end_date", "is before begin_date")
    v.raise_if_any()


# A settlement's amounts that a day's totals sum (settlements' and TotalsRow's names alike).
AMOUNT_COLUMNS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")


def totals_rows(
    fetch: Fetch, code: str, begin: int, end: int
) -> list[reconciliation_pb2.TotalsRow]:
    cells: dict[Key, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "c": 0, **dict.fromkeys(AMOUNT_COLUMNS, 0), "funds": defaultdict(int)}
    )
    amounts = ", ".join(split_sum(f"s.{c}") for c in AMOUNT_COLUMNS)
    # (sign, date column, state filter): settlements on their day, cancels on theirs.
    for sign, day_col in ((1, "setl_date"), (-1, "cancel_date")):
        rows = fetch(
            f"SELECT s.{day_col}, s.insutype, s.clr_type, COUNT(*), {amounts}"
            f" FROM settlements s WHERE s.fixmedins_code = ? AND s.{day_col} BETWEEN ? AND ?"
            f" GROUP BY s.{day_col}, s.insutype, s.clr_type",
            (code, begin, end),
        )
        # int(): PostgreSQL sums BIGINT as NUMERIC (exact; never a float).
        for day, ins, clr, n, *halves in rows:
            cell = cells[(day, ins, clr)]
            cell["n" if sign > 0 else "c"] += int(n)
            for k, name in enumerate(AMOUNT_COLUMNS):
                cell[name] += sign * joined(halves[2 * k], halves[2 * k + 1])
        legs = fetch(
            f"SELECT s.{day_col}, s.insutype, s.clr_type, l.fund_pay_type,"
            f" {split_sum('l.amount')}"
            " FROM settlements s JOIN setl_legs l ON l.setl_id = s.setl_id"
            f" WHERE s.fixmedins_code = ? AND s.{day_col} BETWEEN ? AND ?"
            f" GROUP BY s.{day_col}, s.insutype, s.clr_type, l.fund_pay_type",
            (code, begin, end),
        )
        for day, ins, clr, fpt, hi, lo in legs:
            cells[(day, ins, clr)]["funds"][fpt] += sign * joined(hi, lo)
    out = []
    for (day, ins, clr), cell in sorted(cells.items()):
        where = f"{day} insutype {ins} clr_type {clr}"
        out.append(
            reconciliation_pb2.TotalsRow(
                setl_date=day,
                insutype=ins,
                clr_type=clr,
                setl_count=cell["n"],
                cancel_count=cell["c"],
                **{name: check_int64(cell[name], name, where) for name in AMOUNT_COLUMNS},
                funds=[
                    reconciliation_pb2.FundSum(
                        fund_pay_type=f, fund_payamt=check_int64(a, f"fund {f}", where)
                    )
                    for f, a in sorted(cell["funds"].items())
                ],
            )
        )
    return out


def totals(
    fetch: Fetch, code: str, req: reconciliation_pb2.TotalsRequest
) -> reconciliation_pb2.TotalsResponse:
    _check_range(req.begin_date, req.end_date)
    rows = totals_rows(fetch, code, req.begin_date, req.end_date)
    resp = reconciliation_pb2.TotalsResponse(rows=rows, balanced=True)
    if req.expected:
        ours = {(r.setl_date, r.insutype, r.clr_type): r for r in rows}
        theirs = {(r.setl_date, r.insutype, r.clr_type): r for r in req.expected}
        for key in sorted(ours.keys() | theirs.keys()):
            a, b = ours.get(key), theirs.get(key)
            label = f"{key[0]} insutype {key[1]} clr_type {key[2]}"
            if a is None:
                resp.differences.append(f"{label}: only in the caller's totals")
            elif b is None:
                resp.differences.append(f"{label}: only in ours ({a.setl_count} settlements)")
            else:
                diff = _row_diff(a, b)
                if diff:
                    resp.differences.append(f"{label}: {diff}")
        resp.balanced = not resp.differences
    return resp


def _row_diff(a: reconciliation_pb2.TotalsRow, b: reconciliation_pb2.TotalsRow) -> str:
    parts = []
    for f in (
        "setl_count",
        "cancel_count",
        "medfee_sumamt",
        "fund_pay_sumamt",
        "acct_pay",
        "psn_cash_pay",
    ):
        x, y = getattr(a, f), getattr(b, f)
        if x != y:
            parts.append(f"{f} ours {x} theirs {y}")
    fa = {s.fund_pay_type: s.fund_payamt for s in a.funds}
    fb = {s.fund_pay_type: s.fund_payamt for s in b.funds}
    for f in sorted(fa.keys() | fb.keys()):
        if fa.get(f, 0) != fb.get(f, 0):
            parts.append(f"fund {f} ours {fa.get(f, 0)} theirs {fb.get(f, 0)}")
    return "; ".join(parts)


def detail_rows(
    fetch: Fetch,
    code: str,
    begin: int,
    end: int,
    after: tuple[int, str] | None = None,
    limit: int = 0,
) -> list[reconciliation_pb2.DetailRow]:
    """The institution's settlements made or cancelled on days begin..end in settlement-time
    order; a page of `limit` rows after the (setl_time, setl_id) `after` when given."""
    sql = (
        "SELECT setl_id, msgid, mdtrt_id, psn_no, insutype, clr_type, state, setl_time,"
        " cancel_time, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay"
        " FROM settlements WHERE fixmedins_code = ?"
        " AND (setl_date BETWEEN ? AND ? OR cancel_date BETWEEN ? AND ?)"
    )
    args: list[Any] = [code, begin, end, begin, end]
    if after is not None:
        sql += " AND (setl_time > ? OR (setl_time = ? AND setl_id > ?))"
        args += [after[0], after[0], after[1]]
    sql += " ORDER BY setl_time, setl_id"
    if limit:
        sql += " LIMIT ?"
        args.append(limit)
    rows = fetch(sql, args)
    out = []
    for r in rows:
        d = reconciliation_pb2.DetailRow(
            setl_id=r[0],
            msgid=r[1],
            mdtrt_id=r[2],
            psn_no=r[3],
            insutype=r[4],
            clr_type=r[5],
            state=r[6],
            medfee_sumamt=r[9],
            fund_pay_sumamt=r[10],
            acct_pay=r[11],
            psn_cash_pay=r[12],
        )
        d.setl_time.FromMilliseconds(r[7])
        if r[8] is not None:
            d.cancel_time.FromMilliseconds(r[8])
        out.append(d)
    return out


def _same(a: reconciliation_pb2.DetailRow, b: reconciliation_pb2.DetailRow) -> bool:
    return (a.state, a.medfee_sumamt, a.fund_pay_sumamt, a.acct_pay, a.psn_cash_pay) == (
        b.state,
        b.medfee_sumamt,
        b.fund_pay_sumamt,
        b.acct_pay,
        b.psn_cash_pay,
    )


MAX_PAGE = 10_000


def _page(req: reconciliation_pb2.DetailsRequest) -> tuple[int, tuple[int, str] | None]:
    """The page size and the position after which it starts (None: the first page)."""
    v = Violations()
    v.require(0 <= req.page_size <= MAX_PAGE, "page_size", f"must be 0..{MAX_PAGE}")
    if req.page_size and (req.theirs or req.compare):
        v.add("page_size", "pages a listing; a comparison takes the whole range")
    if req.page_token and not req.page_size:
        v.add("page_token", "needs page_size")
    after = None
    if req.page_token and req.page_size:
        t, sep, setl_id = req.page_token.partition(":")
        if not (sep and t.isdigit() and setl_id):
            v.add("page_token", "is not a token this server issued")
        else:
            after = (int(t), setl_id)
    v.raise_if_any()
    return req.page_size, after


def details(
    fetch: Fetch, code: str, req: reconciliation_pb2.DetailsRequest, max_bytes: int = 0
) -> reconciliation_pb2.DetailsResponse:
    """The rows of the range (a page of them), or the differences from `theirs`; an
    unpaged answer over `max_bytes` (the server's message limit) is RESOURCE_EXHAUSTED with
    the advice to page."""
    resp = _details(fetch, code, req)
    if max_bytes and not req.page_size and resp.ByteSize() > max_bytes - 1024:
        raise ResourceExhausted(
            f"the answer would be {resp.ByteSize():,} bytes ({resp.ours_count:,} settlements),"
            f" over this server's {max_bytes:,}; ask with page_size (up to {MAX_PAGE:,})"
            " or a shorter date range"
        )
    return resp


def _details(
    fetch: Fetch, code: str, req: reconciliation_pb2.DetailsRequest
) -> reconciliation_pb2.DetailsResponse:
    _check_range(req.begin_date, req.end_date)
    size, after = _page(req)
    ours = detail_rows(fetch, code, req.begin_date, req.end_date, after, size + 1 if size else 0)
    more = bool(size) and len(ours) > size
    if more:
        del ours[size:]
    resp = reconciliation_pb2.DetailsResponse(ours_count=len(ours), balanced=True)
    if more:
        last = ours[-1]
        resp.next_page_token = f"{last.setl_time.ToMilliseconds()}:{last.setl_id}"
    if not req.theirs and not req.compare:
        resp.results.extend(
            reconciliation_pb2.DetailResult(match=reconciliation_pb2.MATCHED, ours=o) for o in ours
        )
        return resp
    theirs = {t.setl_id: t for t in req.theirs}
    for o in ours:
        t = theirs.pop(o.setl_id, None)
        if t is None:
            resp.results.append(
                reconciliation_pb2.DetailResult(match=reconciliation_pb2.OURS_ONLY, ours=o)
            )
        elif not _same(o, t):
            resp.results.append(
                reconciliation_pb2.DetailResult(
                    match=reconciliation_pb2.DIFFERENT, ours=o, theirs=t
                )
            )
    for t in theirs.values():
        resp.results.append(
            reconciliation_pb2.DetailResult(match=reconciliation_pb2.THEIRS_ONLY, theirs=t)
        )
    resp.balanced = not resp.results
    return resp


def accumulator_differences(
    fetch: Fetch, code: str, begin: int, end: int
) -> list[reconciliation_pb2.AccumulatorDifference]:
    """The center's recorded accumulator differences of the institution's settlements made
    on days begin..end (the table exists only in the center's database)."""
    rows = fetch(
        "SELECT d.setl_id, d.psn_no, d.year, d.pool, d.ours, d.theirs"
        " FROM accumulator_differences d JOIN settlements s ON s.setl_id = d.setl_id"
        " WHERE s.fixmedins_code = ? AND s.setl_date BETWEEN ? AND ?"
        " ORDER BY s.setl_time, d.setl_id",
        (code, begin, end),
    )

    def acc(year: int, pool: str, values: dict[str, int]) -> catalog_pb2.Accumulator:
        return catalog_pb2.Accumulator(
            year=year, pool=pool, **{f: int(values.get(f, 0)) for f in ACC_FIELDS}
        )

    return [
        reconciliation_pb2.AccumulatorDifference(
            setl_id=setl_id,
            psn_no=psn_no,
            center=acc(year, pool, ours),
            front_end=acc(year, pool, theirs),
        )
        for setl_id, psn_no, year, pool, ours, theirs in rows
    ]
