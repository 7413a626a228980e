"""The center records a forwarded batch set-wise (server/center/store/batch.py): a batch of
settlements and cancels gives the same answers, item by item, and leaves the same ledger,
accumulators, balances and recorded differences as the same items forwarded one per call,
including two settlements of one person, a settlement and its cancel in one batch, a visit
settled again after its cancel, a person's first accumulator row, a duplicate inside the
batch, refused items between applied ones, and a person settled elsewhere meanwhile; and
two institutions' batches for the same persons, at once, add up."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from medsettle.v1 import center_pb2, center_pb2_grpc
from server.demo.localserver import LocalServer
from server.frontend.store.sqlite import Store
from server.persons import ACC_FIELDS
from tests.frontend.test_forwarding import pending_all
from tests.harness import (
    CIVIL,
    EMPLOYEE,
    INST_A,
    INST_B,
    RETIRED,
    accumulators,
    admit,
    client,
    total,
)
from tests.pg import center_server, fresh_database

pytestmark = pytest.mark.pg

YEAR, POOL = date.today().year, "outpatient"
USED: dict[str, dict[str, tuple[int, ...]]] = {}  # front-end -> psn_no -> `used`

# Each table's rows without what differs between two runs by nature: when the center
# received a row, and the sealed SetlInfo (a fresh nonce each time; its amounts are columns).
LEDGER = {
    "settlements": "setl_id, node_id, fixmedins_code, mdtrt_id, psn_no, insutype, clr_type,"
    " msgid, invono, setl_time, setl_date, state, mode, offline, medfee_sumamt,"
    " fund_pay_sumamt, acct_pay, psn_cash_pay, acc_year, acc_pool, acc_delta, cancel_id,"
    " cancel_msgid, cancel_time, cancel_date",
    "setl_legs": "*",
    "accumulators": "*",
    "accumulator_differences": "setl_id, psn_no, year, pool, ours, theirs",
    "persons": "psn_no, balc",
}


def ledger(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        return {
            t: sorted(repr(r) for r in conn.execute(f"SELECT {cols} FROM {t}").fetchall())
            for t, cols in LEDGER.items()
        }


def items_of(db: Path) -> list[center_pb2.ForwardItem]:
    store = Store(str(db), readers=1)
    try:
        return store.read_sync(lambda conn: pending_all(conn, str(db)))
    finally:
        store.close()


def forward(target: str, inst: str, items: list[center_pb2.ForwardItem]) -> list[tuple[int, str]]:
    with grpc.insecure_channel(target) as ch:
        resp = center_pb2_grpc.CenterStub(ch).Forward(
            center_pb2.ForwardRequest(
                header=center_pb2.NodeHeader(node_id="01", fixmedins_code=inst), items=items
            ),
            timeout=60,
        )
    return [(r.outcome, r.detail) for r in resp.results]


def settle(front: LocalServer, inst: str, psn: Any, seed: int, account: bool = False) -> str:
    c = client(front, inst)
    mdtrt_id, ls = admit(c, psn, n_lines=6, seed=seed, med_type=11)
    return c.settle(
        mdtrt_id, psn.psn_no, medfee_sumamt=total(ls), acct_used=account
    ).setlinfo.setl_id


@pytest.fixture(scope="module")
def forwarded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[center_pb2.ForwardItem]]:
    """What two local-mode front-ends (no center) would forward, by institution."""
    tmp = tmp_path_factory.mktemp("fronts")
    with LocalServer(tmp / "a.db", log=tmp / "a.log") as a:
        c = client(a, INST_A)
        settle(a, INST_A, EMPLOYEE, 1, account=True)
        second = settle(a, INST_A, RETIRED, 2, account=True)
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=6, seed=3, med_type=11)
        third = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), acct_used=True)
        c.cancel_settlement(third.setlinfo.setl_id)
        # The same visit settled again: its slot is free once the cancel is recorded.
        c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), acct_used=True)
        settle(a, INST_A, CIVIL, 4)
        c.cancel_settlement(second)
        settle(a, INST_A, RETIRED, 5)
    with LocalServer(tmp / "b.db", log=tmp / "b.log") as b:
        settle(b, INST_B, EMPLOYEE, 6)
        settle(b, INST_B, CIVIL, 7)
    for name, db in (("a", tmp / "a.db"), ("b", tmp / "b.db")):
        USED[name] = {p.psn_no: used(str(db), p.psn_no) for p in (EMPLOYEE, RETIRED, CIVIL)}
    return {INST_A: items_of(tmp / "a.db"), INST_B: items_of(tmp / "b.db")}


def used(db: str, psn_no: str) -> tuple[int, ...]:
    """What a front-end's settlements took of a person's year: its accumulators (the demo
    persons start the year at zero everywhere) and the account's balance change."""
    acc = accumulators(db, psn_no).get((YEAR, POOL), (0,) * len(ACC_FIELDS))
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT opening_balc - balc FROM persons WHERE psn_no = ?", (psn_no,)
        ).fetchone()
    finally:
        conn.close()
    return (*acc, row[0])


def used_at_center(dsn: str, psn_no: str) -> tuple[int, ...]:
    with psycopg.connect(dsn) as conn:
        acc = conn.execute(
            f"SELECT {', '.join(ACC_FIELDS)} FROM accumulators WHERE psn_no = %s AND year = %s"
            " AND pool = %s AND opening = 0",
            (psn_no, YEAR, POOL),
        ).fetchone()
        row = conn.execute(
            "SELECT opening_balc - balc FROM persons WHERE psn_no = %s", (psn_no,)
        ).fetchone()
    assert row is not None
    return (*(acc or (0,) * len(ACC_FIELDS)), row[0])


@pytest.fixture
def two_centers(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[tuple[str, str], ...]]:
    """Two centers on two fresh databases: ((target, dsn), (target, dsn))."""
    with fresh_database() as other:
        servers = [center_server(d, tmp_path / str(i)) for i, d in enumerate((pg_dsn, other))]
        for i, s in enumerate(servers):
            (tmp_path / str(i)).mkdir()
            s.start()
        try:
            yield tuple((s.target, d) for s, d in zip(servers, (pg_dsn, other), strict=True))
        finally:
            for s in servers:
                s.stop()


def test_a_batch_records_what_one_item_per_call_records(
    forwarded: dict[str, list[center_pb2.ForwardItem]], two_centers: Any
) -> None:
    a, b = forwarded[INST_A], forwarded[INST_B]
    assert [i.kind for i in a] == ["settle"] * 3 + [
        "cancel",
        "settle",
        "settle",
        "cancel",
        "settle",
    ]
    unknown = center_pb2.ForwardItem()
    unknown.CopyFrom(a[5])
    unknown.setlinfo.psn_no = "44999999999999"
    unknown.setl_id = unknown.setlinfo.setl_id = f"S{INST_A}01000000000900"
    unknown.setlinfo.mdtrt_id = f"M{INST_A}01000000000900"
    stranger = center_pb2.ForwardItem(
        seq=990,
        kind="cancel",
        setl_id=f"S{INST_A}01000000000999",
        cancel_id=f"C{INST_A}01000000000998",
    )
    stranger.cancel_time_ms = a[3].cancel_time_ms
    batch = [*a[:2], a[0], unknown, *a[2:5], stranger, a[3], *a[5:], a[6]]
    (one_by_one, one_dsn), (batched, batch_dsn) = two_centers
    for target in (one_by_one, batched):  # the persons settled at B first: differences at A
        assert {o for o, _ in forward(target, INST_B, b)} == {center_pb2.APPLIED}

    single = [r for item in batch for r in forward(one_by_one, INST_A, [item])]
    together = forward(batched, INST_A, batch)
    assert together == single
    outcomes = [o for o, _ in together]
    assert outcomes.count(center_pb2.DUPLICATE) == 3  # a[0], a[3] and a[6] again
    assert outcomes.count(center_pb2.REJECTED) == 2  # the unknown person, the stranger
    assert center_pb2.APPLIED_WITH_DIFFERENCE in outcomes  # EMPLOYEE and CIVIL settled at B
    assert "no insured person 44999999999999" in together[3][1]
    assert ledger(batch_dsn) == ledger(one_dsn)
    # And what the two front-ends took of each person's year, their own books, is what the
    # center holds taken (none of the refused items counts).
    for p in (EMPLOYEE, RETIRED, CIVIL):
        both = [x + y for x, y in zip(USED["a"][p.psn_no], USED["b"][p.psn_no], strict=True)]
        assert list(used_at_center(batch_dsn, p.psn_no)) == both, p.psn_no
    # Replayed whole, the batch changes nothing: every item is now a duplicate or refused.
    again = forward(batched, INST_A, batch)
    assert {o for o, _ in again} == {center_pb2.DUPLICATE, center_pb2.REJECTED}
    assert ledger(batch_dsn) == ledger(one_dsn)


def test_two_institutions_batches_at_once_add_up(
    forwarded: dict[str, list[center_pb2.ForwardItem]], two_centers: Any
) -> None:
    """A and B forward batches naming the same persons at the same moment: the row locks
    make them take turns, and the center ends where it ends when they go one after another."""
    (serial, serial_dsn), (concurrent, concurrent_dsn) = two_centers
    forward(serial, INST_B, forwarded[INST_B])
    forward(serial, INST_A, forwarded[INST_A])
    answers: dict[str, list[tuple[int, str]]] = {}

    def send(inst: str) -> None:
        answers[inst] = forward(concurrent, inst, forwarded[inst])

    threads = [threading.Thread(target=send, args=(inst,)) for inst in (INST_A, INST_B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for inst in (INST_A, INST_B):
        recorded = (center_pb2.APPLIED, center_pb2.APPLIED_WITH_DIFFERENCE)
        assert all(o in recorded for o, _ in answers[inst]), answers[inst]
    mine, theirs = ledger(concurrent_dsn), ledger(serial_dsn)
    # Who came first decides which settlements carry a recorded difference; the rest agrees.
    for table in ("settlements", "setl_legs", "accumulators", "persons"):
        assert mine[table] == theirs[table], table


def test_the_account_balance_is_held_across_a_batch(
    forwarded: dict[str, list[center_pb2.ForwardItem]], two_centers: Any
) -> None:
    """The center's balance is one payment short of a person's two account debits: the
    second is refused, in a batch as one per call, and nothing of it is written."""
    a = forwarded[INST_A]
    first, second = a[0].setlinfo.acct_pay, a[2].setlinfo.acct_pay
    assert first > 0 and second > 0 and a[0].setlinfo.psn_no == a[2].setlinfo.psn_no
    (one_by_one, one_dsn), (batched, batch_dsn) = two_centers
    for dsn in (one_dsn, batch_dsn):
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "UPDATE persons SET balc = %s, opening_balc = %s WHERE psn_no = %s",
                (first + second - 1, first + second - 1, EMPLOYEE.psn_no),
            )
    batch = a[:3]
    single = [r for item in batch for r in forward(one_by_one, INST_A, [item])]
    together = forward(batched, INST_A, batch)
    assert together == single
    assert together[2] == (
        center_pb2.REJECTED,
        f"account pays {second}, more than the center's balance {second - 1}",
    )
    assert ledger(batch_dsn) == ledger(one_dsn)
    assert used_at_center(batch_dsn, EMPLOYEE.psn_no)[-1] == first

    # With the money there, the second goes through; then its cancel and the visit settled
    # again arrive in one batch: the held row is cancelled before the visit's new one lands.
    for dsn in (one_dsn, batch_dsn):
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "UPDATE persons SET balc = balc + %s WHERE psn_no = %s", (second, EMPLOYEE.psn_no)
            )
    assert forward(one_by_one, INST_A, [a[2]]) == forward(batched, INST_A, [a[2]])
    assert [i.kind for i in a[3:5]] == ["cancel", "settle"]
    single = [r for item in a[3:5] for r in forward(one_by_one, INST_A, [item])]
    assert forward(batched, INST_A, a[3:5]) == single
    assert [o for o, _ in single] == [center_pb2.APPLIED] * 2
    assert ledger(batch_dsn) == ledger(one_dsn)


def test_texts_no_lookup_can_take_are_refused_at_the_door_or_alone(
    forwarded: dict[str, list[center_pb2.ForwardItem]], two_centers: Any
) -> None:
    """A NUL or an overlong id or person number refuses the whole request at the door
    (INVALID_ARGUMENT naming each field, nothing written); a NUL in an item's accumulator
    pool, which the door does not bound, is that item's refusal: the batch's reads do not
    take it (PostgreSQL's text cannot hold a NUL) and the rest of the batch applies."""
    (target, dsn), _ = two_centers
    a = forwarded[INST_A]

    def variant(n: int, field: str, value: str) -> center_pb2.ForwardItem:
        item = center_pb2.ForwardItem()
        item.CopyFrom(a[1])
        item.seq = 900 + n
        item.setl_id = item.setlinfo.setl_id = f"S{INST_A}01{900 + n:012d}"
        item.setlinfo.mdtrt_id = f"M{INST_A}01{900 + n:012d}"
        if field == "pool":
            item.accumulators_before.pool = item.accumulators_after.pool = value
        else:
            setattr(item.setlinfo, field, value)
        return item

    bad_ids = [variant(0, "psn_no", "44\x0001"), variant(1, "psn_no", "4" * 100_000)]
    bad_ids.append(variant(2, "mdtrt_id", "M\x00"))
    with pytest.raises(grpc.RpcError) as refused:
        forward(target, INST_A, [*bad_ids, a[0]])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for where in ("items[0].setlinfo.psn_no", "items[1].setlinfo.psn_no", "items[2].setlinfo"):
        assert where in (refused.value.details() or "")
    results = forward(target, INST_A, [variant(3, "pool", "o\x00"), a[0]])
    assert [o for o, _ in results] == [center_pb2.REJECTED, center_pb2.APPLIED]
    assert "the policy's rule uses" in results[0][1]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT setl_id FROM settlements").fetchall()
    assert rows == [(a[0].setlinfo.setl_id,)]
