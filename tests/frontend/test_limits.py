"""What one request may carry, on a real front-end: ids and codes longer than the national
field lengths are INVALID_ARGUMENT naming the field (unary, nested, in any message of a
stream) and write nothing, so refused calls with huge ids cannot grow the database; a flood
of refusals is summarised rather than recorded one by one and the chain still verifies; fee
lines and visits beyond the money bounds are refused; and a day whose settlements sum beyond
int64 is answered exactly (or OUT_OF_RANGE naming the field), never INTERNAL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import center_pb2, center_pb2_grpc, settlement_pb2
from server.auditing import SUMMARY
from server.demo.localserver import ROOT, LocalServer
from server.limits import FIELD_MAX
from server.security import audit
from tests.harness import (
    ALL_ROLES,
    DAY,
    EMPLOYEE,
    INST_A,
    RETIRED,
    audit_rows,
    client,
    lines,
    snapshot,
)

Code = grpc.StatusCode
MAX_LINE = 1_000_000  # fen: the bounds of the `bounded` server
MAX_VISIT = 2_500_000


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    d = tmp_path_factory.mktemp("limits")
    s = LocalServer(
        d / "l.db",
        env={
            "MEDSETTLE_MAX_LINE_FEE_FEN": str(MAX_LINE),
            "MEDSETTLE_MAX_VISIT_FEE_FEN": str(MAX_VISIT),
        },
        log=d / "l.log",
    ).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def c(bounded: LocalServer) -> Iterator[MedsettleClient]:
    with client(bounded) as cl:
        yield cl


def refused(send: Callable[[], object], code: Code = Code.INVALID_ARGUMENT) -> MedsettleError:
    with pytest.raises(MedsettleError) as err:
        send()
    assert err.value.code == code, err.value.message
    return err.value


def unchanged(
    server: LocalServer, send: Callable[[], object], field: str, *, audited: bool = False
) -> None:
    """`send` is INVALID_ARGUMENT naming `field` and writes nothing: no audit record when
    refused at the door, only its own when `audited` (refused by the write itself)."""
    before, trail = snapshot(server.db), len(audit_rows(server.db))
    err = refused(send)
    assert field in [f for f, _ in err.violations], err.violations
    assert snapshot(server.db) == before
    added = audit_rows(server.db)[trail:]
    assert len(added) == audited
    assert all(str(r[3]).startswith("INVALID_ARGUMENT: ") for r in added)


def visit(c: MedsettleClient, n: int) -> str:
    return c.register(
        RETIRED.psn_no,
        insutype=RETIRED.insutype,
        med_type=11,
        begndate=DAY,
        ipt_otp_no=f"L{n}",
    ).mdtrt_id


def line(sn: str, amount: int, *, cnt: int = 10_000, pric: int | None = None) -> Any:
    base = lines(1)[0]
    return settlement_pb2.FeeLine(
        feedetl_sn=sn,
        medins_list_codg=base.medins_list_codg,
        cnt=cnt,
        pric=amount if pric is None else pric,
        det_item_fee_sumamt=amount,
        fee_ocur_date=DAY,
    )


# ---------------------------------------------------------------------------- ids
def test_oversize_ids_are_refused_at_the_door_naming_the_field(
    bounded: LocalServer, c: MedsettleClient
) -> None:
    mdtrt_id = visit(c, 1)
    long_sn = [*lines(2), settlement_pb2.FeeLine(feedetl_sn="S" * 31, medins_list_codg="X")]
    unchanged(bounded, lambda: c.upload_fees(mdtrt_id, long_sn), "lines[2].feedetl_sn")
    unchanged(bounded, lambda: c.get_settlement("S" * 31), "setl_id")
    unchanged(bounded, lambda: c.cancel_settlement("S1", psn_no="P" * 31), "psn_no")
    other = MedsettleClient(bounded.target, fixmedins_code=INST_A, opter="O" * 31, retries=0)
    with other:
        unchanged(bounded, other.sign_in, "header.opter")
    # Every message of a stream: the second message's line is named in its place.
    in_second = [*lines(3), settlement_pb2.FeeLine(feedetl_sn="9", medins_list_codg="H" * 51)]
    unchanged(
        bounded,
        lambda: c.stream_fees(mdtrt_id, in_second, chunk=2),
        "messages[1].lines[1].medins_list_codg",
    )
    # Within the bounds the same calls are served.
    assert c.upload_fees(mdtrt_id, lines(2)).line_count == 2


@pytest.mark.pg
def test_the_center_holds_ids_to_their_lengths_too(center: LocalServer) -> None:
    """The center's services pass the same door: a forwarded item naming a 31-character
    setl_id is INVALID_ARGUMENT naming it, before the center reads or records anything."""
    header = center_pb2.NodeHeader(node_id="01", fixmedins_code=INST_A, msgid="LIM-1")
    item = center_pb2.ForwardItem(seq=1, kind="cancel", setl_id="S" * 31, cancel_id="C1")
    with grpc.insecure_channel(center.target) as ch:
        stub = center_pb2_grpc.CenterStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Forward(center_pb2.ForwardRequest(header=header, items=[item]), timeout=10)
    refusal = MedsettleError.from_rpc(err.value)
    assert refusal.code == Code.INVALID_ARGUMENT, refusal.message
    assert [f for f, _ in refusal.violations] == ["items[0].setl_id"]


def test_refused_calls_with_huge_ids_do_not_grow_the_database(bounded: LocalServer) -> None:
    """Twenty anonymous calls naming a 1 MB setl_id: each would have been an audit record
    of a megabyte, kept 180 days."""
    huge = "S" * (1 << 20)
    files = [Path(bounded.db + s) for s in ("", "-wal")]
    before = sum(f.stat().st_size for f in files if f.exists())
    with anonymous(bounded) as a:
        for _ in range(20):
            err = refused(lambda: a.get_settlement(huge))
            assert [f for f, _ in err.violations] == ["setl_id"]
            assert len(err.message) < 200  # the answer does not carry the value back either
    after = sum(f.stat().st_size for f in files if f.exists())
    assert after - before < 64 * 1024


def test_an_oversize_value_is_kept_as_its_digest() -> None:
    """An audit record never keeps a value longer than any id may be (whatever reaches it
    around the door), only its digest; a certificate number is masked."""
    req = settlement_pb2.GetSettlementRequest(setl_id="S" * 100_000)
    kept = audit.objects_of(req, "peer=" + "p" * 1000)
    assert kept == f"setl_id={audit.digest('S' * 100_000)};peer={audit.digest('p' * 1000)}"
    assert len(kept) < 100
    person = settlement_pb2.GetPersonRequest(mdtrt_cert_no="440106195603120011")
    assert audit.objects_of(person) == "mdtrt_cert_no=4401**********0011"


def anonymous(server: LocalServer) -> MedsettleClient:
    """A client with a sign_no the server never issued."""
    c = MedsettleClient(server.target, fixmedins_code=INST_A, opter=ALL_ROLES, retries=0)
    c.sign_no = "0" * 32
    return c


def test_a_flood_of_refusals_is_summarised_and_the_chain_verifies(tmp_path: Path) -> None:
    """Refusals beyond max_refusal_audits_per_s (1 here) are counted and summarised in a
    record a second: 200 refused calls leave a handful of records that account for all."""
    n = 200
    env = {"MEDSETTLE_MAX_REFUSAL_AUDITS_PER_S": "1"}
    with LocalServer(tmp_path / "f.db", env=env, log=tmp_path / "f.log") as server:
        trail = len(audit_rows(server.db))
        with anonymous(server) as a:
            for _ in range(n):
                refused(lambda: a.get_settlement("S1"), Code.UNAUTHENTICATED)

        def accounted() -> tuple[int, int, int]:
            """Refusals recorded one by one, counted in summaries, and the summaries."""
            added = audit_rows(server.db)[trail:]
            one = [r for r in added if str(r[3]).startswith("UNAUTHENTICATED: ")]
            summaries = [str(r[3]) for r in added if str(r[3]).startswith(f"{SUMMARY}: ")]
            assert len(one) + len(summaries) == len(added), added
            counted = sum(int(o.split()[1]) for o in summaries)
            return len(one), counted, len(summaries)

        deadline = time.monotonic() + 30  # the last summary follows within a second
        while sum(accounted()[:2]) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        one_by_one, counted, summaries = accounted()
    assert one_by_one + counted == n  # every refusal is accounted for, ...
    assert one_by_one + summaries < 40  # ... in a handful of records, not 200
    verify = subprocess.run(
        [sys.executable, "-m", "server.cli", "audit", "verify", "--db", str(tmp_path / "f.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---------------------------------------------------------------------------- money
def test_fee_lines_beyond_the_money_bounds_are_refused(
    bounded: LocalServer, c: MedsettleClient
) -> None:
    mdtrt_id = visit(c, 2)
    huge = 2**62
    unchanged(
        bounded,
        lambda: c.upload_fees(mdtrt_id, [line("1", 100), line("2", huge)]),
        "lines[1].det_item_fee_sumamt",
    )
    unchanged(
        bounded,
        lambda: c.upload_fees(mdtrt_id, [line("1", 100, cnt=1, pric=MAX_LINE + 1)]),
        "lines[0].pric",
    )
    unchanged(  # cnt x pric would be beyond a line's bound (the amount claims little)
        bounded,
        lambda: c.upload_fees(mdtrt_id, [line("1", 100, cnt=10_000 * 1000, pric=MAX_LINE)]),
        "lines[0].cnt",
    )
    unchanged(  # in a stream, the line is named by its place in the whole stream
        bounded,
        lambda: c.stream_fees(mdtrt_id, [line("1", 100), line("2", 100), line("3", huge)], chunk=2),
        "lines[2].det_item_fee_sumamt",
    )
    # The visit's total: lines stored earlier count.
    c.upload_fees(mdtrt_id, [line("1", MAX_LINE), line("2", MAX_LINE)])
    unchanged(
        bounded,
        lambda: c.upload_fees(mdtrt_id, [line("3", 100_000), line("4", MAX_LINE)]),
        "lines[1].det_item_fee_sumamt",
        audited=True,
    )
    assert c.upload_fees(mdtrt_id, [line("3", MAX_VISIT - 2 * MAX_LINE)]).line_count == 1


def _local_day(offset_days: int = 0) -> int:
    t = time.gmtime(time.time() + 8 * 3600 + offset_days * 86400)
    return t.tm_year * 10000 + t.tm_mon * 100 + t.tm_mday


def test_totals_of_a_day_of_maximal_settlements(tmp_path: Path) -> None:
    """Four settlements of 2^62 fen (a server whose bounds allow it): their day's sum is
    beyond int64, OUT_OF_RANGE naming the field; once three are cancelled that day the
    day's totals are exact, though the settled and the cancelled sums each overflow int64."""
    big = 2**62
    bounds = {"MEDSETTLE_MAX_LINE_FEE_FEN": str(big), "MEDSETTLE_MAX_VISIT_FEE_FEN": str(big)}
    with LocalServer(tmp_path / "t.db", env=bounds, log=tmp_path / "t.log") as server:
        cl = client(server)
        setl_ids = []
        for n in range(4):
            mdtrt_id = cl.register(
                EMPLOYEE.psn_no,
                insutype=EMPLOYEE.insutype,
                med_type=11,
                begndate=DAY,
                ipt_otp_no=f"T{n}",
            ).mdtrt_id
            cl.upload_fees(mdtrt_id, [line("1", big)])
            info = cl.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=big).setlinfo
            setl_ids.append(info.setl_id)
        days = (_local_day(-1), _local_day(1))
        err = refused(lambda: cl.totals(*days), Code.OUT_OF_RANGE)
        assert "medfee_sumamt" in [f for f, _ in err.violations]
        for setl_id in reversed(setl_ids[1:]):  # newest first (each relied on the earlier)
            cl.cancel_settlement(setl_id)
        rows = cl.totals(*days).rows
        assert [(r.setl_count, r.cancel_count, r.medfee_sumamt) for r in rows] == [(4, 3, big)]
        assert rows[0].psn_cash_pay + rows[0].fund_pay_sumamt + rows[0].acct_pay == big
        cl.close()


def test_the_sdk_ids_are_within_the_bounds(c: MedsettleClient) -> None:
    """The SDK's msgid (institution, time, pid, nonce, sequence) and the server's sign_no
    fit the door's bounds of those fields."""
    assert len(c.new_msgid()) <= FIELD_MAX["msgid"]
    assert len(c.sign_no) <= FIELD_MAX["sign_no"]


@pytest.mark.pg
def test_the_center_summarises_a_flood_of_refusals(pg_dsn: str, tmp_path: Path) -> None:
    """The center's refusals share the same budget: 100 refused settles (an unknown person)
    leave a handful of audit records that account for all of them."""
    n = 100
    server = LocalServer(
        pg_dsn,
        extra=["--role", "center"],
        env={"MEDSETTLE_MAX_REFUSAL_AUDITS_PER_S": "1"},
        log=tmp_path / "center.log",
    )
    with server, psycopg.connect(pg_dsn, autocommit=True) as db:
        with grpc.insecure_channel(server.target) as ch:
            stub = center_pb2_grpc.CenterStub(ch)
            for i in range(n):
                req = center_pb2.CenterSettleRequest(
                    header=center_pb2.NodeHeader(
                        node_id="01", fixmedins_code=INST_A, msgid=f"F{i}"
                    ),
                    setl_id=f"S{INST_A}01{i:012d}",
                    mdtrt_id=f"M{INST_A}01{i:012d}",
                    psn_no="44999999999999",
                    insutype=310,
                    med_type=11,
                    begndate=DAY,
                    summary=center_pb2.VisitSummary(
                        medfee_sumamt=100, inscp_scp_amt=100, line_count=1
                    ),
                    policy_version=202601,
                )
                with pytest.raises(grpc.RpcError) as err:
                    stub.SettleSummary(req, timeout=10)
                assert err.value.code() == Code.NOT_FOUND

        def accounted() -> tuple[int, int, int]:
            added = db.execute(
                "SELECT outcome FROM audit WHERE rpc LIKE '%SettleSummary' OR rpc = ''"
            ).fetchall()
            one = [o for (o,) in added if o.startswith("NOT_FOUND: ")]
            summaries = [o for (o,) in added if o.startswith(f"{SUMMARY}: ")]
            return len(one), sum(int(s.split()[1]) for s in summaries), len(summaries)

        deadline = time.monotonic() + 30
        while sum(accounted()[:2]) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        one_by_one, counted, summaries = accounted()
    assert one_by_one + counted == n
    assert one_by_one + summaries < 30
