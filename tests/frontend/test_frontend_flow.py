"""The front-end's HIS flow over gRPC against a real server and SQLite file: inpatient and
outpatient visits end to end, idempotent retries (identical bytes, nothing written), cancel
and settle again, reversal by msgid, queries, institution isolation and reconciliation."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import common_pb2, reconciliation_pb2, settlement_pb2
from server.demo.localserver import LocalServer
from server.frontend.store import line_results
from tests.harness import (
    CHILD,
    CIVIL,
    DAY,
    EMPLOYEE,
    FILED,
    INST_A,
    INST_B,
    INST_FAR,
    RETIRED,
    SECOND_STAY,
    SETL_AMOUNTS,
    accumulators,
    admit,
    client,
    lines,
    snapshot,
    total,
)

MONEY = (*SETL_AMOUNTS, "balc")


def amounts(info: common_pb2.SetlInfo) -> dict[str, Any]:
    legs = [
        (g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt, g.setl_proc_info) for g in info.setldetail
    ]
    return {**{k: getattr(info, k) for k in MONEY}, "legs": legs}


def check_invariants(info: common_pb2.SetlInfo) -> None:
    assert all(getattr(info, k) >= 0 for k in MONEY)
    assert (
        info.fulamt_ownpay_amt + info.overlmt_amt + info.preselfpay_amt + info.inscp_scp_amt
        == info.medfee_sumamt
    )
    assert info.fund_pay_sumamt + info.acct_pay + info.psn_cash_pay == info.medfee_sumamt
    assert info.psn_part_amt == info.acct_pay + info.psn_cash_pay
    assert sum(g.fund_payamt for g in info.setldetail) == info.fund_pay_sumamt
    assert sum(c.det_item_fee_sumamt for c in info.categories) == info.medfee_sumamt


def raw(c: MedsettleClient, method: str) -> Any:
    """A raw unary call returning the response bytes as sent."""
    return c.channel.unary_unary(
        f"/medsettle.v1.Settlement/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=None,
    )


def test_inpatient_visit_end_to_end(frontend: LocalServer) -> None:
    c = client(frontend)
    person = c.get_person("02", RETIRED.psn_cert_no)
    assert (person.psn_no, person.psn_name, person.retired) == (RETIRED.psn_no, "张建国", True)
    assert person.balc == RETIRED.balc
    visit = c.register(
        person.psn_no,
        insutype=310,
        med_type=21,
        begndate=DAY,
        ipt_otp_no="ZY1",
        dise_codg=["I21.9"],
    )
    ls = lines(2000, seed=3)
    up = c.stream_fees(visit.mdtrt_id, ls, chunk=300)
    assert (up.line_count, up.visit_line_count, up.det_item_fee_sumamt) == (2000, 2000, total(ls))
    assert [r.feedetl_sn for r in up.results] == [ln.feedetl_sn for ln in ls]
    for r in up.results:
        assert r.fulamt_ownpay_amt + r.overlmt_amt + r.preselfpay_amt + r.inscp_scp_amt == (
            r.det_item_fee_sumamt
        )
    assert any(r.chrgitm_lv == 0 for r in up.results)  # the demo leaves some items unmapped

    before = snapshot(frontend.db)
    pre = c.pre_settle(visit.mdtrt_id, person.psn_no, medfee_sumamt=total(ls), acct_used=True)
    assert snapshot(frontend.db) == before  # pre-settlement changes nothing
    assert pre.setlinfo.setl_id == ""

    done = c.settle(
        visit.mdtrt_id, person.psn_no, medfee_sumamt=total(ls), acct_used=True, invono="FP1"
    )
    info = done.setlinfo
    check_invariants(info)
    assert amounts(info) == amounts(pre.setlinfo)
    assert info.setl_id and info.state == common_pb2.SETTLED and info.mode == common_pb2.LOCAL
    assert info.rule_id == "emp-inpatient-lv3" and info.clr_type == 21 and info.line_count == 2000
    assert info.act_pay_dedc == 130_000  # first admission at a tertiary hospital
    assert info.acct_pay == RETIRED.balc  # the account pays up to its balance
    assert c.get_person("02", RETIRED.psn_cert_no).balc == 0
    assert c.get_settlement(info.setl_id).setlinfo == info

    by_visit = c.query_settlements(mdtrt_id=visit.mdtrt_id).settlements
    by_invoice = c.query_settlements(invono="FP1").settlements
    now = int(time.time() * 1000)
    window = settlement_pb2.TimeRange()
    window.begin.FromMilliseconds(now - 60_000)
    window.end.FromMilliseconds(now + 60_000)
    by_time = c.query_settlements(time_range=window).settlements
    assert [s.setl_id for s in by_visit] == [s.setl_id for s in by_invoice] == [info.setl_id]
    assert [s.setl_id for s in by_time] == [info.setl_id]

    conn = sqlite3.connect(frontend.db)
    (blob,) = conn.execute(
        "SELECT line_results FROM settlements WHERE setl_id = ?", (info.setl_id,)
    ).fetchone()
    kept = line_results.decode(blob)
    assert len(kept) == 2000
    assert sum(r[4] for r in kept) == info.medfee_sumamt  # det_item_fee_sumamt
    assert sum(r[8] for r in kept) == info.inscp_scp_amt
    outbox = conn.execute("SELECT kind, ref FROM outbox").fetchall()
    assert outbox == [("settle", info.setl_id)]
    conn.close()


def test_outpatient_visits_share_the_annual_deductible(frontend: LocalServer) -> None:
    c = client(frontend)
    taken = []
    for seed in (1, 2, 3):
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=8, seed=seed, med_type=11)
        info = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), acct_used=True).setlinfo
        check_invariants(info)
        assert info.rule_id == "emp-outpatient" and info.clr_type == 11
        taken.append(info.act_pay_dedc)
    assert sum(taken) <= 50_000
    acc = accumulators(frontend.db, EMPLOYEE.psn_no)[(2026, "outpatient")]
    assert acc[1] == sum(taken)  # dedc_paid


def test_second_admission_deductible_and_civil_servant_and_resident(frontend: LocalServer) -> None:
    c = client(frontend)
    mdtrt_id, ls = admit(c, SECOND_STAY, n_lines=30, seed=4)
    second = c.settle(mdtrt_id, SECOND_STAY.psn_no, medfee_sumamt=total(ls)).setlinfo
    assert second.act_pay_dedc == 65_000  # second admission: 650 yuan
    mdtrt_id, ls = admit(c, CIVIL, n_lines=30, seed=5)
    civil = c.settle(mdtrt_id, CIVIL.psn_no, medfee_sumamt=total(ls)).setlinfo
    assert civil.cvlserv_pay > 0 and any(g.fund_pay_type == "320100" for g in civil.setldetail)
    mdtrt_id, ls = admit(c, CHILD, n_lines=30, seed=6)
    child = c.settle(mdtrt_id, CHILD.psn_no, medfee_sumamt=total(ls)).setlinfo
    assert child.rule_id == "res-inpatient" and child.setldetail[0].fund_pay_type == "390100"
    for info in (second, civil, child):
        check_invariants(info)


def test_cross_region_filed_person(frontend: LocalServer) -> None:
    far = client(frontend, INST_FAR)
    mdtrt_id, ls = admit(far, FILED, n_lines=30, seed=7)
    away = far.pre_settle(mdtrt_id, FILED.psn_no, medfee_sumamt=total(ls)).setlinfo
    home = client(frontend, INST_A)
    mdtrt_id2, ls2 = admit(home, FILED, n_lines=30, seed=7)
    local = home.pre_settle(mdtrt_id2, FILED.psn_no, medfee_sumamt=total(ls2)).setlinfo
    # Filed cross-region treatment keeps the home ratio (the demo policy's filed adjustment
    # is 0); the tertiary hospitals' deductible applies in both.
    assert away.act_pay_dedc == local.act_pay_dedc == 130_000
    check_invariants(away)


def test_retry_returns_identical_bytes_and_writes_nothing(frontend: LocalServer) -> None:
    c = client(frontend)
    reg = settlement_pb2.RegisterRequest(
        header=c.header("RETRY-REG-1"),
        psn_no=RETIRED.psn_no,
        insutype=310,
        med_type=21,
        begndate=DAY,
        ipt_otp_no="ZY9",
        dise_codg=["I21.9"],
    )
    first_reg = raw(c, "Register")(reg, timeout=5)
    mdtrt_id = settlement_pb2.RegisterResponse.FromString(first_reg).mdtrt_id
    ls = lines(40, seed=8)
    up = settlement_pb2.UploadFeesRequest(
        header=c.header("RETRY-UP-1"), mdtrt_id=mdtrt_id, lines=ls
    )
    first_up = raw(c, "UploadFees")(up, timeout=5)
    setl = settlement_pb2.SettleRequest(
        header=c.header("RETRY-SETL-1"),
        mdtrt_id=mdtrt_id,
        psn_no=RETIRED.psn_no,
        medfee_sumamt=total(ls),
        acct_used_flag=True,
    )
    first_setl = raw(c, "Settle")(setl, timeout=5)
    c.sign_in()  # a retry after signing in again is still the same request
    for req in (reg, up, setl):
        req.header.sign_no = c.sign_no
    after_sign_in = snapshot(frontend.db)
    assert raw(c, "Register")(reg, timeout=5) == first_reg
    assert raw(c, "UploadFees")(up, timeout=5) == first_up
    assert raw(c, "Settle")(setl, timeout=5) == first_setl
    assert snapshot(frontend.db) == after_sign_in

    setl.medfee_sumamt += 1  # same msgid, another payload
    with pytest.raises(grpc.RpcError) as err:
        raw(c, "Settle")(setl, timeout=5)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "RETRY-SETL-1" in (err.value.details() or "")


def test_cancel_restores_accumulators_and_settling_again_gives_the_same(
    frontend: LocalServer,
) -> None:
    c = client(frontend)
    acc0 = accumulators(frontend.db, SECOND_STAY.psn_no)
    balc0 = c.get_person("02", SECOND_STAY.psn_cert_no).balc
    mdtrt_id, ls = admit(c, SECOND_STAY, n_lines=60, seed=9)
    first = c.settle(mdtrt_id, SECOND_STAY.psn_no, medfee_sumamt=total(ls), acct_used=True).setlinfo
    assert accumulators(frontend.db, SECOND_STAY.psn_no) != acc0
    cancelled = c.cancel_settlement(first.setl_id, mdtrt_id=mdtrt_id).setlinfo
    assert cancelled.state == common_pb2.CANCELLED and cancelled.cancel_id
    assert (
        accumulators(frontend.db, SECOND_STAY.psn_no)[(2026, "inpatient")]
        == acc0[(2026, "inpatient")]
    )
    assert c.get_person("02", SECOND_STAY.psn_cert_no).balc == balc0
    kept = c.get_settlement(first.setl_id).setlinfo  # the cancelled settlement stays visible
    assert kept.state == common_pb2.CANCELLED and kept.cancel_msgid == cancelled.cancel_msgid
    again = c.settle(mdtrt_id, SECOND_STAY.psn_no, medfee_sumamt=total(ls), acct_used=True).setlinfo
    assert again.setl_id != first.setl_id
    assert amounts(again) == amounts(first)
    states = [s.state for s in c.query_settlements(mdtrt_id=mdtrt_id).settlements]
    assert states == [common_pb2.CANCELLED, common_pb2.SETTLED]


def test_a_cancel_waits_for_the_later_settlements_that_relied_on_it(
    frontend: LocalServer,
) -> None:
    """A settlement is cancelled only while it is the person's latest in its accumulator
    year and pool: the refusal names the later ones newest first (another institution's
    only by number) and writes nothing; cancelled newest first, each goes."""
    a, b = client(frontend), client(frontend, INST_B)
    settled = []
    for who, seed in ((a, 731), (a, 732), (b, 733), (a, 734)):
        mdtrt_id, ls = admit(who, CIVIL, n_lines=6, seed=seed, med_type=11)
        settled.append((who, who.settle(mdtrt_id, CIVIL.psn_no, medfee_sumamt=total(ls)).setlinfo))
    first, second, _, last = (info for _, info in settled)
    conn = sqlite3.connect(frontend.db)
    try:
        year, pool = conn.execute(
            "SELECT acc_year, acc_pool FROM settlements WHERE setl_id = ?", (first.setl_id,)
        ).fetchone()
    finally:
        conn.close()
    before = snapshot(frontend.db)
    with pytest.raises(MedsettleError) as err:
        a.cancel_settlement(first.setl_id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.message == (
        f"setl_id: {first.setl_id} is not the person's latest settlement of {year} ({pool});"
        " later settlements relied on its accumulators: cancel them first, newest first"
        f" ({last.setl_id}, {second.setl_id}, 1 at other institutions), then this one, and"
        " settle them again"
    )
    assert snapshot(frontend.db) == before
    for who, info in reversed(settled):
        assert who.cancel_settlement(info.setl_id).setlinfo.state == common_pb2.CANCELLED


def test_reverse_by_msgid(frontend: LocalServer) -> None:
    c = client(frontend)
    mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=20, seed=10)
    acc0 = accumulators(frontend.db, EMPLOYEE.psn_no)
    done = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), msgid="REV-SETL-1").setlinfo
    rev = c.reverse("REV-SETL-1", "Settle")
    assert rev.original_found and rev.setlinfo.setl_id == done.setl_id
    assert rev.setlinfo.state == common_pb2.CANCELLED
    zero = (0,) * 8
    after = accumulators(frontend.db, EMPLOYEE.psn_no)
    assert after[(2026, "inpatient")] == acc0.get((2026, "inpatient"), zero)
    # Reversing again reports it, and changes nothing.
    before = snapshot(frontend.db)
    again = c.reverse("REV-SETL-1")
    assert "already cancelled" in again.reversed
    assert {k: v for k, v in snapshot(frontend.db).items() if k != "idempotency"} == {
        k: v for k, v in before.items() if k != "idempotency"
    }

    # A call that never arrived: its msgid is burnt, a late copy is refused.
    gone = c.reverse("NEVER-SENT-1")
    assert not gone.original_found
    with pytest.raises(MedsettleError) as err:
        c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), msgid="NEVER-SENT-1")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION

    # Reverse an upload: its lines go; reverse a registration: the visit is cancelled.
    v = c.register(
        EMPLOYEE.psn_no,
        insutype=310,
        med_type=11,
        begndate=DAY,
        ipt_otp_no="MZ1",
        msgid="REV-REG-1",
    )
    c.upload_fees(v.mdtrt_id, lines(5, seed=11), msgid="REV-UP-1")
    assert "5 lines" in c.reverse("REV-UP-1").reversed
    assert "cancelled" in c.reverse("REV-REG-1").reversed
    with pytest.raises(MedsettleError) as err:
        c.upload_fees(v.mdtrt_id, lines(5, seed=11))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_an_institution_sees_only_its_own(frontend: LocalServer) -> None:
    a, b = client(frontend, INST_A), client(frontend, INST_B)
    mdtrt_id, ls = admit(a, EMPLOYEE, n_lines=10, seed=12, med_type=11)
    info = a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), invono="INV-A").setlinfo
    for call in (
        lambda: b.get_settlement(info.setl_id),
        lambda: b.cancel_settlement(info.setl_id),
        lambda: b.query_settlements(mdtrt_id=mdtrt_id),
        lambda: b.upload_fees(mdtrt_id, lines(2, seed=13, inst=INST_B)),
        lambda: b.pre_settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)),
    ):
        with pytest.raises(MedsettleError) as err:
            call()
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert list(b.query_settlements(invono="INV-A").settlements) == []
    day = int(time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600)))
    assert list(b.totals(day, day).rows) == []


def test_reconciliation_totals_and_details(frontend: LocalServer) -> None:
    c = client(frontend)
    settled = []
    for seed, psn in ((14, EMPLOYEE), (15, CIVIL), (16, RETIRED)):
        mdtrt_id, ls = admit(c, psn, n_lines=12, seed=seed, med_type=11)
        settled.append(c.settle(mdtrt_id, psn.psn_no, medfee_sumamt=total(ls)).setlinfo)
    c.cancel_settlement(settled[0].setl_id)
    day = int(time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600)))
    tot = c.totals(day, day)
    assert len(tot.rows) == 1
    row = tot.rows[0]
    assert (row.insutype, row.clr_type, row.setl_count, row.cancel_count) == (310, 11, 3, 1)
    live = settled[1:]
    assert row.medfee_sumamt == sum(s.medfee_sumamt for s in live)
    assert row.fund_pay_sumamt == sum(s.fund_pay_sumamt for s in live)
    assert sum(f.fund_payamt for f in row.funds) == row.fund_pay_sumamt
    assert c.totals(day, day, expected=list(tot.rows)).balanced
    wrong = reconciliation_pb2.TotalsRow()
    wrong.CopyFrom(row)
    wrong.psn_cash_pay += 1
    off = c.totals(day, day, expected=[wrong])
    assert not off.balanced and "psn_cash_pay" in off.differences[0]

    mine = c.details(day, day)
    assert mine.ours_count == 3
    theirs = [r.ours for r in mine.results]
    assert c.details(day, day, theirs).balanced
    missing = c.details(day, day, theirs[1:])
    assert [(r.match, r.ours.setl_id) for r in missing.results] == [
        (reconciliation_pb2.OURS_ONLY, settled[0].setl_id)
    ]
    changed = [reconciliation_pb2.DetailRow() for _ in theirs]
    for dst, src in zip(changed, theirs, strict=True):
        dst.CopyFrom(src)
    changed[0].state = common_pb2.SETTLED  # the HIS never recorded the cancel
    diff = c.details(day, day, changed)
    assert [r.match for r in diff.results] == [reconciliation_pb2.DIFFERENT]


def test_signed_out_or_unsigned_callers_are_refused(frontend: LocalServer) -> None:
    c = client(frontend)
    c.sign_out()
    with pytest.raises(MedsettleError) as err:
        c.get_person("02", RETIRED.psn_cert_no)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    stranger = MedsettleClient(frontend.target, fixmedins_code="H99999999999", opter="x")
    with pytest.raises(MedsettleError) as err:
        stranger.sign_in()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert c.ping(b"abc").payload == b"abc"  # Ping needs no sign-in


def test_details_pages_a_busy_day_and_refuses_an_answer_too_big(tmp_path: Path) -> None:
    """A listing larger than the server's message limit is refused with advice to page, and
    paging returns the same rows in the same order, each once."""
    server = LocalServer(
        tmp_path / "small.db",
        env={"MEDSETTLE_MAX_MESSAGE_BYTES": "3000"},
        log=tmp_path / "small.log",
    ).start()
    try:
        c = client(server)
        for seed in range(30, 52):
            mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=2, seed=seed, med_type=11)
            c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))
        day = int(time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600)))
        with pytest.raises(MedsettleError) as err:
            c.details(day, day)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "22 settlements" in str(err.value) and "page_size" in str(err.value)
        pages = list(c.detail_pages(day, day, page_size=5))
        assert [p.ours_count for p in pages] == [5, 5, 5, 5, 2]
        assert [bool(p.next_page_token) for p in pages] == [True] * 4 + [False]
        ids = [r.ours.setl_id for p in pages for r in p.results]
        assert len(set(ids)) == 22
        times = [r.ours.setl_time.ToMilliseconds() for p in pages for r in p.results]
        assert times == sorted(times)
        for bad, says in (
            ({"page_size": 10_001}, "page_size"),
            ({"page_size": 5, "compare": True}, "page_size"),
            ({"page_token": "x"}, "page_token"),
            ({"page_size": 5, "page_token": "nonsense"}, "page_token"),
        ):
            with pytest.raises(MedsettleError) as err:
                c.call(
                    c.reconciliation.Details,
                    reconciliation_pb2.DetailsRequest(
                        header=c.header(), begin_date=day, end_date=day, **bad
                    ),
                )
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert [f for f, _ in err.value.violations] == [says], bad
    finally:
        server.stop()
