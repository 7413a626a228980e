"""50 concurrent settles for one person: the deductible taken and the fund paid never exceed
the policy's limits.

One employee in service (EMPLOYEE) has 50 outpatient visits (med_type 11) at one hospital.
The demo policy's outpatient rule (emp-outpatient) takes one deductible a year (500 yuan =
50,000 fen), pays 60 % of the rest from the basic fund up to 6,000 yuan (600,000 fen) a
year, and lets the personal account pay the person's part. The visits are big enough in
total that both limits bind. All 50 are settled at once, each call with its own msgid on
its own connection, against a server with one worker and against one with two worker
processes sharing the SQLite file. Then:

- the deductible is taken once (sum of act_pay_dedc = min(in-scope total, 50,000)), the
  basic fund pays exactly its cap, and the totals of every fund equal those of the same 50
  visits settled one after another on a fresh server (which visit got which share may
  differ, the sums may not);
- in commit order (setl_id order) the settlements form a serial history: each takes the
  deductible and the account that the ones before it left;
- the final accumulators are the opening values plus the settlements' deltas, and the
  account balance never went below zero;
- cancelling all 50 at once brings accumulators and balance back to exactly the opening
  values.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import common_pb2, settlement_pb2
from server.demo.localserver import LocalServer
from tests.harness import (
    ACC_FIELDS,
    DAY,
    EMPLOYEE,
    INST_A,
    SETL_AMOUNTS,
    client,
    lines,
    total,
)

N = 50
LINES_PER_VISIT = 4  # ~40,000 fen in scope each: the deductible spans two visits
DEDUCTIBLE = 50_000  # emp-outpatient: annual deductible, fen
CAP = 600_000  # emp-outpatient: basic fund annual cap, fen
RATIO_BP = 6_000  # emp-outpatient: basic fund ratio for a person in service
YEAR = DAY // 10000
POOL = "outpatient"
SAFETY_S = 60.0


def new_msgid() -> str:
    return "C" + uuid.uuid4().hex


def own_connection_client(server: LocalServer) -> MedsettleClient:
    """A signed-in client on its own TCP connection (so with two workers, calls spread)."""
    ch = grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
    return client(server, INST_A, channel=ch)


def visit_lines(i: int) -> list[settlement_pb2.FeeLine]:
    return lines(LINES_PER_VISIT, seed=5000 + i)


def register_visits(server: LocalServer) -> list[tuple[str, int]]:
    """The 50 outpatient visits of EMPLOYEE with their lines; (mdtrt_id, total) each."""
    c = client(server)
    try:
        out = []
        for i in range(N):
            v = c.register(
                EMPLOYEE.psn_no,
                insutype=EMPLOYEE.insutype,
                med_type=11,
                begndate=DAY,
                ipt_otp_no=f"MZ{i:05d}",
                dise_codg=["J06.9"],
                msgid=new_msgid(),
            )
            ls = visit_lines(i)
            c.upload_fees(v.mdtrt_id, ls, msgid=new_msgid())
            out.append((v.mdtrt_id, total(ls)))
        return out
    finally:
        c.close()


def all_at_once(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) on n threads released together; every result, or raise the first
    error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(SAFETY_S)
            results[i] = fn(i)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY_S)
    assert not any(t.is_alive() for t in threads), "a call never returned"
    if errors:
        raise errors[0]
    return results


@dataclass
class Ledger:
    opening: dict[str, int]  # accumulators as loaded (zeros when none were)
    current: dict[str, int]
    deltas: list[dict[str, int]]  # of the settled (state 1) settlements
    opening_balc: int
    balc: int
    acct_paid: int  # by the settled settlements


@pytest.fixture
def db_reader() -> Iterator[Callable[[str], Ledger]]:
    def read(db: str) -> Ledger:
        conn = sqlite3.connect(db)
        try:
            cols = ", ".join(ACC_FIELDS)
            rows = {
                r[0]: dict(zip(ACC_FIELDS, r[1:], strict=True))
                for r in conn.execute(
                    f"SELECT opening, {cols} FROM accumulators"
                    " WHERE psn_no = ? AND year = ? AND pool = ?",
                    (EMPLOYEE.psn_no, YEAR, POOL),
                )
            }
            zeros = dict.fromkeys(ACC_FIELDS, 0)
            opening = rows.get(1, zeros)
            current = rows.get(0, opening)
            deltas = [
                json.loads(r[0])
                for r in conn.execute(
                    "SELECT acc_delta FROM settlements WHERE psn_no = ? AND state = 1"
                    " AND acc_year = ? AND acc_pool = ?",
                    (EMPLOYEE.psn_no, YEAR, POOL),
                )
            ]
            balc, opening_balc = conn.execute(
                "SELECT balc, opening_balc FROM persons WHERE psn_no = ?", (EMPLOYEE.psn_no,)
            ).fetchone()
            acct_paid = conn.execute(
                "SELECT COALESCE(SUM(acct_pay), 0) FROM settlements WHERE psn_no = ? AND state = 1",
                (EMPLOYEE.psn_no,),
            ).fetchone()[0]
            return Ledger(opening, current, deltas, opening_balc, balc, acct_paid)
        finally:
            conn.close()

    yield read


def totals(infos: list[common_pb2.SetlInfo]) -> dict[str, int]:
    out = {f: sum(getattr(i, f) for i in infos) for f in SETL_AMOUNTS}
    legs: Counter[str] = Counter()
    for i in infos:
        for leg in i.setldetail:
            legs[leg.fund_pay_type] += leg.fund_payamt
    out.update({f"leg {k}": v for k, v in legs.items()})
    return out


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> list[common_pb2.SetlInfo]:
    """The same 50 visits settled one after another on a fresh server."""
    tmp = tmp_path_factory.mktemp("sequential")
    server = LocalServer(tmp / "fe.db", log=tmp / "server.log").start()
    try:
        visits = register_visits(server)
        c = client(server)
        try:
            return [
                c.settle(
                    m, EMPLOYEE.psn_no, medfee_sumamt=amt, acct_used=True, msgid=new_msgid()
                ).setlinfo
                for m, amt in visits
            ]
        finally:
            c.close()
    finally:
        server.stop()


def check_serial_history(infos: list[common_pb2.SetlInfo], opening_balc: int) -> None:
    """In commit order each settlement took what the ones before it left: the annual
    deductible and the account balance."""
    dedc_left = DEDUCTIBLE
    balc = opening_balc
    hifp = 0
    for info in sorted(infos, key=lambda i: i.setl_id):
        assert info.act_pay_dedc == min(info.inscp_scp_amt, dedc_left), info.setl_id
        dedc_left -= info.act_pay_dedc
        hifp += info.hifp_pay
        assert hifp <= CAP, f"{info.setl_id}: basic fund {hifp} over the cap"
        assert 0 <= info.acct_pay <= balc, f"{info.setl_id}: account paid {info.acct_pay}"
        balc -= info.acct_pay
        assert info.balc == balc, f"{info.setl_id}: balance after {info.balc}, expected {balc}"
        assert info.balc >= 0
        assert info.fund_pay_sumamt + info.psn_part_amt == info.medfee_sumamt
        assert info.acct_pay + info.psn_cash_pay == info.psn_part_amt


def test_sequential_baseline_binds_both_limits(sequential: list[common_pb2.SetlInfo]) -> None:
    """The fixture itself: the 50 visits are big enough that deductible and cap bind."""
    t = totals(sequential)
    assert t["inscp_scp_amt"] > DEDUCTIBLE + CAP * 10_000 // RATIO_BP
    assert t["act_pay_dedc"] == DEDUCTIBLE
    assert t["hifp_pay"] == CAP
    # The deductible is split over more than one visit and the cap is hit mid-visit.
    assert sum(1 for i in sequential if i.act_pay_dedc) >= 2
    assert sum(1 for i in sequential if i.hifp_pay == 0 and i.act_pay_dedc == 0) >= 1
    check_serial_history(sequential, EMPLOYEE.balc)


@pytest.mark.parametrize("workers", [1, 2])
def test_fifty_concurrent_settles_for_one_person_respect_the_limits(
    tmp_path: Path,
    workers: int,
    sequential: list[common_pb2.SetlInfo],
    db_reader: Callable[[str], Ledger],
) -> None:
    server = LocalServer(tmp_path / "fe.db", workers=workers, log=tmp_path / "server.log")
    server.start()
    clients: list[MedsettleClient] = []
    try:
        visits = register_visits(server)
        before = db_reader(server.db)
        assert before.current == before.opening
        clients = [own_connection_client(server) for _ in range(N)]

        def settle(i: int) -> common_pb2.SetlInfo:
            mdtrt_id, amount = visits[i]
            return (
                clients[i]
                .settle(
                    mdtrt_id,
                    EMPLOYEE.psn_no,
                    medfee_sumamt=amount,
                    acct_used=True,
                    msgid=new_msgid(),
                )
                .setlinfo
            )

        infos: list[common_pb2.SetlInfo] = all_at_once(N, settle)
        assert len({i.setl_id for i in infos}) == N
        assert [i.mdtrt_id for i in infos] == [m for m, _ in visits]

        got = totals(infos)
        assert got["act_pay_dedc"] == min(got["inscp_scp_amt"], DEDUCTIBLE)
        assert got["act_pay_dedc"] <= DEDUCTIBLE
        assert got["hifp_pay"] <= CAP
        assert got == totals(sequential), "concurrent totals differ from sequential ones"
        check_serial_history(infos, before.opening_balc)

        after = db_reader(server.db)
        expected = {f: after.opening[f] + sum(d[f] for d in after.deltas) for f in ACC_FIELDS}
        assert len(after.deltas) == N
        assert after.current == expected
        assert after.current["dedc_paid"] - after.opening["dedc_paid"] == DEDUCTIBLE
        assert after.current["hifp_paid"] - after.opening["hifp_paid"] == CAP
        assert after.balc == after.opening_balc - after.acct_paid
        assert after.balc >= 0
        assert after.acct_paid == got["acct_pay"]

        def cancel(i: int) -> common_pb2.SetlInfo | MedsettleError:
            try:
                return (
                    clients[i]
                    .cancel_settlement(
                        infos[i].setl_id,
                        mdtrt_id=infos[i].mdtrt_id,
                        psn_no=EMPLOYEE.psn_no,
                        msgid=new_msgid(),
                    )
                    .setlinfo
                )
            except MedsettleError as exc:
                return exc

        # All at once: a cancel goes through only while its settlement is the person's
        # latest (every other was relied on by a later one). So what the storm cancels is
        # the newest few, in order (once the latest is gone the next may go in the same
        # storm), and every other cancel is refused.
        storm: list[common_pb2.SetlInfo | MedsettleError] = all_at_once(N, cancel)
        newest_first = sorted(range(N), key=lambda i: infos[i].setl_id, reverse=True)
        done = [i for i in newest_first if isinstance(storm[i], common_pb2.SetlInfo)]
        assert done and done == newest_first[: len(done)], done
        assert all(storm[i].state == common_pb2.CANCELLED for i in done)  # type: ignore[union-attr]
        assert all(
            isinstance(r, MedsettleError) and r.code == grpc.StatusCode.FAILED_PRECONDITION
            for i, r in enumerate(storm)
            if i not in done
        ), storm
        # Then the rest newest first, each alone: back to the opening values.
        for i in newest_first[len(done) :]:
            one = cancel(i)
            assert isinstance(one, common_pb2.SetlInfo), one
            assert one.state == common_pb2.CANCELLED

        final = db_reader(server.db)
        assert final.deltas == []
        assert final.current == final.opening, "accumulators not back to the opening values"
        assert final.balc == final.opening_balc
    finally:
        for c in clients:
            c.close()
        assert server.stop() == 0
