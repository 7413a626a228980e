"""The center on PostgreSQL (center mode): a real center process over a fresh database, fed
summaries the way a front-end sends them. The same inputs settle the same in center mode and
local mode; concurrent settles of one person from two front-ends and two center processes
keep to the policy's limits; retries are idempotent; a cancel restores the accumulators."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from medsettle.v1 import center_pb2, center_pb2_grpc, common_pb2
from server.demo.localserver import LocalServer
from tests.harness import (
    CHILD,
    CIVIL,
    DAY,
    EMPLOYEE,
    FILED,
    INST_A,
    INST_FAR,
    RETIRED,
    SECOND_STAY,
    SETL_AMOUNTS,
    admit,
    client,
    total,
)
from tests.pg import center_server

pytestmark = pytest.mark.pg
_ids = itertools.count(1)


def request(
    psn: Any,
    summary: center_pb2.VisitSummary,
    *,
    inst: str = INST_A,
    node: str = "01",
    med_type: int = 21,
    acct: bool = False,
    policy_version: int = 202601,
) -> center_pb2.CenterSettleRequest:
    n = next(_ids)
    return center_pb2.CenterSettleRequest(
        header=center_pb2.NodeHeader(
            node_id=node, fixmedins_code=inst, msgid=f"C-{node}-{n}", opter="t"
        ),
        setl_id=f"S{inst}{node}{n:012d}",
        mdtrt_id=f"M{inst}{node}{n:012d}",
        psn_no=psn.psn_no,
        insutype=psn.insutype,
        med_type=med_type,
        begndate=DAY,
        summary=summary,
        acct_used_flag=acct,
        policy_version=policy_version,
        catalog_version=1,
    )


def summary_of(info: common_pb2.SetlInfo) -> center_pb2.VisitSummary:
    return center_pb2.VisitSummary(
        medfee_sumamt=info.medfee_sumamt,
        fulamt_ownpay_amt=info.fulamt_ownpay_amt,
        overlmt_amt=info.overlmt_amt,
        preselfpay_amt=info.preselfpay_amt,
        inscp_scp_amt=info.inscp_scp_amt,
        line_count=info.line_count,
        categories=list(info.categories),
    )


def in_scope(fen: int) -> center_pb2.VisitSummary:
    return center_pb2.VisitSummary(medfee_sumamt=fen, inscp_scp_amt=fen, line_count=1)


def settle(target: str, req: center_pb2.CenterSettleRequest) -> common_pb2.SetlInfo:
    with grpc.insecure_channel(target) as ch:
        return center_pb2_grpc.CenterStub(ch).SettleSummary(req, timeout=30).setlinfo


def amounts(info: common_pb2.SetlInfo) -> tuple[Any, ...]:
    legs = [
        (g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt, g.setl_proc_info) for g in info.setldetail
    ]
    return (*(getattr(info, k) for k in SETL_AMOUNTS), info.balc, info.rule_id, legs)


def test_center_mode_settles_like_local_mode(frontend: LocalServer, center: LocalServer) -> None:
    """Each person's visit pre-settled by a local-mode front-end and settled by the center
    from the front-end's summary: identical amounts, legs and derivations."""
    cases = [
        (INST_A, RETIRED, True),
        (INST_A, CIVIL, False),
        (INST_A, CHILD, False),
        (INST_A, SECOND_STAY, True),
        (INST_FAR, FILED, True),
    ]
    for seed, (inst, psn, acct) in enumerate(cases, start=40):
        c = client(frontend, inst)
        mdtrt_id, ls = admit(c, psn, n_lines=40, seed=seed)
        local = c.pre_settle(mdtrt_id, psn.psn_no, medfee_sumamt=total(ls), acct_used=acct).setlinfo
        req = request(psn, summary_of(local), inst=inst, acct=acct)
        remote = settle(center.target, req)
        assert amounts(remote) == amounts(local), psn.psn_name
        assert remote.mode == common_pb2.CENTER and remote.setl_id == req.setl_id
        assert list(remote.categories) == list(local.categories)


def test_concurrent_settles_of_one_person_keep_the_limits(pg_dsn: str, tmp_path: Path) -> None:
    """40 outpatient settles of one person at once, from two front-ends (node ids) into two
    center processes: the annual deductible is taken exactly once in all and the fund pays
    exactly up to its annual cap, as settling them one after another would."""
    reqs = [
        request(EMPLOYEE, in_scope(40_000), node="0" + str(1 + i % 2), med_type=11)
        for i in range(40)
    ]
    server = center_server(pg_dsn, tmp_path, workers=2).start()
    try:
        with ThreadPoolExecutor(20) as pool:
            infos = list(pool.map(lambda r: settle(server.target, r), reqs))
    finally:
        server.stop()
    assert sum(i.act_pay_dedc for i in infos) == 50_000
    assert sum(i.hifp_pay for i in infos) == 600_000  # the annual outpatient cap binds
    assert {i.setl_id for i in infos} == {r.setl_id for r in reqs}
    assert all(i.fund_pay_sumamt + i.acct_pay + i.psn_cash_pay == 40_000 for i in infos)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT dedc_paid, hifp_paid FROM accumulators WHERE psn_no = %s AND opening = 0"
            " AND pool = 'outpatient'",
            (EMPLOYEE.psn_no,),
        ).fetchone()
        n = conn.execute("SELECT COUNT(*) FROM settlements").fetchone()
    assert row == (50_000, 600_000) and n == (40,)


def test_retries_refusals_and_cancel(center: LocalServer, pg_dsn: str) -> None:
    with grpc.insecure_channel(center.target) as ch:
        stub = center_pb2_grpc.CenterStub(ch)
        raw: Any = ch.unary_unary(
            "/medsettle.v1.Center/SettleSummary",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=None,
        )
        req = request(RETIRED, in_scope(500_000), acct=True)
        first = raw(req, timeout=10)
        assert raw(req, timeout=10) == first  # a retry: the same bytes, nothing new
        info = center_pb2.CenterSettleResponse.FromString(first).setlinfo
        assert info.act_pay_dedc == 130_000 and info.acct_pay == info.psn_part_amt > 0

        def code(fn: Any, r: Any) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as err:
                fn(r, timeout=10)
            return err.value.code()

        other = center_pb2.CenterSettleRequest()
        other.CopyFrom(req)
        other.summary.medfee_sumamt += 1
        other.summary.inscp_scp_amt += 1
        assert code(stub.SettleSummary, other) == grpc.StatusCode.ALREADY_EXISTS
        reused = request(RETIRED, in_scope(1000))
        reused.setl_id = req.setl_id
        assert code(stub.SettleSummary, reused) == grpc.StatusCode.ALREADY_EXISTS
        bad = request(RETIRED, in_scope(1000))
        bad.summary.inscp_scp_amt -= 1
        assert code(stub.SettleSummary, bad) == grpc.StatusCode.INVALID_ARGUMENT
        # Absurd money, and a NUL PostgreSQL cannot store: refused at the door, not INTERNAL.
        absurd = request(RETIRED, in_scope(2**62))
        assert code(stub.SettleSummary, absurd) == grpc.StatusCode.INVALID_ARGUMENT
        nul = request(RETIRED, in_scope(1000))
        nul.header.opter = "t\x00"
        assert code(stub.SettleSummary, nul) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(stub.SettleSummary, request(RETIRED, in_scope(1000), policy_version=1)) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        foreign = request(RETIRED, in_scope(1000), node="02")
        foreign.setl_id = f"S{INST_A}01999"
        assert code(stub.SettleSummary, foreign) == grpc.StatusCode.INVALID_ARGUMENT
        nobody = request(RETIRED, in_scope(1000))
        nobody.psn_no = "0"
        assert code(stub.SettleSummary, nobody) == grpc.StatusCode.NOT_FOUND
        assert code(stub.Forward, center_pb2.ForwardRequest()) == grpc.StatusCode.INVALID_ARGUMENT
        versions = stub.PolicySince(center_pb2.PolicySinceRequest(since_version=0), timeout=10)
        assert [v.version for v in versions.versions] == [202601]

        cancel = center_pb2.CenterCancelRequest(
            header=center_pb2.NodeHeader(node_id="01", fixmedins_code=INST_A, msgid="CX-1"),
            setl_id=req.setl_id,
            cancel_id=f"C{INST_A}01000000000001",
        )
        done = stub.CancelSettlement(cancel, timeout=10).setlinfo
        assert done.state == common_pb2.CANCELLED
        again = center_pb2.CenterCancelRequest()
        again.CopyFrom(cancel)
        again.header.msgid = "CX-2"
        assert code(stub.CancelSettlement, again) == grpc.StatusCode.FAILED_PRECONDITION
    with psycopg.connect(pg_dsn) as conn:
        acc = conn.execute(
            "SELECT dedc_paid, hifp_paid, inpatient_count FROM accumulators"
            " WHERE psn_no = %s AND opening = 0",
            (RETIRED.psn_no,),
        ).fetchall()
        balc = conn.execute("SELECT balc FROM persons WHERE psn_no = %s", (RETIRED.psn_no,))
        assert acc == [(0, 0, 0)] and balc.fetchone() == (RETIRED.balc,)


def test_a_node_answers_for_the_first_front_end_machine_only(
    center: LocalServer, pg_dsn: str
) -> None:
    """Center mode: the first instance id that settles under (institution, node) holds it;
    another machine's calls under that node are FAILED_PRECONDITION and write nothing, and
    the instance id is no part of a call's idempotent payload."""
    first, second = "a" * 32, "b" * 32
    with grpc.insecure_channel(center.target) as ch:
        stub = center_pb2_grpc.CenterStub(ch)
        req = request(EMPLOYEE, in_scope(30_000), med_type=11)
        req.header.instance_id = first
        done = stub.SettleSummary(req, timeout=10)
        req.header.instance_id = ""  # the same call from a worker that sends none
        assert stub.SettleSummary(req, timeout=10) == done
        with psycopg.connect(pg_dsn) as conn:
            before = conn.execute("SELECT setl_id FROM settlements").fetchall()
        for pre in (False, True):
            other = request(CIVIL, in_scope(30_000), med_type=11)
            other.header.instance_id, other.pre_settle = second, pre
            with pytest.raises(grpc.RpcError) as err:
                stub.SettleSummary(other, timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert (err.value.details() or "").startswith(f"node clash: node 01 of {INST_A}")
            assert "--node-id" in (err.value.details() or "")
        elsewhere = request(CIVIL, in_scope(30_000), node="02", med_type=11)
        elsewhere.header.instance_id = second  # its own node: its own
        stub.SettleSummary(elsewhere, timeout=10)
    with psycopg.connect(pg_dsn) as conn:
        after = conn.execute("SELECT setl_id FROM settlements").fetchall()
        bound = conn.execute("SELECT node_id, instance_id FROM nodes ORDER BY 1").fetchall()
    assert sorted(after) == sorted([*before, (elsewhere.setl_id,)])
    assert bound == [("01", first), ("02", second)]
