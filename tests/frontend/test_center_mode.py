"""A front-end in center mode against a real center on PostgreSQL: the HIS sees the same
answer as in local mode, the center holds the settlement and the accumulators, retries are
idempotent end to end, a cancel goes through the center, and a center that does not answer
makes the settle UNAVAILABLE with nothing written (the retry then settles exactly once)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest

from clients.sdk import MedsettleError
from medsettle.v1 import center_pb2, common_pb2, settlement_pb2
from server.demo.localserver import LocalServer, free_port
from tests.frontend.test_metrics import grown, money_of, scrape, value
from tests.harness import (
    CIVIL,
    EMPLOYEE,
    INST_A,
    RETIRED,
    SECOND_STAY,
    SETL_AMOUNTS,
    admit,
    client,
    snapshot,
    total,
)
from tests.pg import fresh_database

DEMO_POLICY = Path(__file__).resolve().parents[2] / "server" / "demo" / "demo_city_policy.toml"

pytestmark = pytest.mark.pg


@pytest.fixture
def front(center: LocalServer, tmp_path: Path) -> Iterator[LocalServer]:
    server = LocalServer(
        tmp_path / "front.db",
        extra=["--mode", "center", "--center-target", center.target],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "2"},
        log=tmp_path / "front.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def center_rows(dsn: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def test_center_mode_answers_like_local_mode(
    front: LocalServer, frontend: LocalServer, pg_dsn: str
) -> None:
    for seed, psn in ((51, RETIRED), (52, SECOND_STAY)):
        answers = []
        for server in (front, frontend):
            c = client(server)
            mdtrt_id, ls = admit(c, psn, n_lines=30, seed=seed)
            pre = c.pre_settle(mdtrt_id, psn.psn_no, medfee_sumamt=total(ls), acct_used=True)
            done = c.settle(mdtrt_id, psn.psn_no, medfee_sumamt=total(ls), acct_used=True)
            assert pre.setlinfo.fund_pay_sumamt == done.setlinfo.fund_pay_sumamt
            answers.append(done.setlinfo)
        central, local = answers
        assert [getattr(central, k) for k in SETL_AMOUNTS] == [
            getattr(local, k) for k in SETL_AMOUNTS
        ]
        assert [(g.fund_pay_type, g.fund_payamt, g.setl_proc_info) for g in central.setldetail] == [
            (g.fund_pay_type, g.fund_payamt, g.setl_proc_info) for g in local.setldetail
        ]
        assert central.mode == common_pb2.CENTER and local.mode == common_pb2.LOCAL
        assert central.setl_id.startswith(f"S{INST_A}01H")
        held = center_rows(
            pg_dsn,
            "SELECT state, medfee_sumamt FROM settlements WHERE setl_id = %s",
            central.setl_id,
        )
        assert held == [(1, central.medfee_sumamt)]
    # The center keeps the accumulators; the front-end forwards nothing in center mode.
    acc = center_rows(
        pg_dsn,
        "SELECT inpatient_count FROM accumulators WHERE psn_no = %s AND opening = 0",
        SECOND_STAY.psn_no,
    )
    assert acc == [(2,)]
    assert snapshot(front.db)["outbox"] == []


def sqlite_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_retry_and_cancel_go_through_the_center(
    center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    mport = free_port()
    front = LocalServer(
        tmp_path / "front.db",
        extra=["--mode", "center", "--center-target", center.target, "--metrics-port", str(mport)],
        log=tmp_path / "front.log",
    ).start()
    try:
        _retry_and_cancel(front, mport, pg_dsn)
    finally:
        front.stop()


def _retry_and_cancel(front: LocalServer, mport: int, pg_dsn: str) -> None:
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=20, seed=53)
    first = c.settle(
        mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True, msgid="CM-SETL-1"
    )
    before = snapshot(front.db)
    again = c.settle(
        mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True, msgid="CM-SETL-1"
    )
    assert again.SerializeToString() == first.SerializeToString()
    assert snapshot(front.db) == before
    assert center_rows(pg_dsn, "SELECT COUNT(*) FROM settlements") == [(1,)]

    counted = scrape(mport)
    cancelled = c.cancel_settlement(first.setlinfo.setl_id, msgid="CM-CANCEL-1").setlinfo
    assert cancelled.state == common_pb2.CANCELLED
    retried = c.cancel_settlement(first.setlinfo.setl_id, msgid="CM-CANCEL-1").setlinfo
    assert retried == cancelled
    with pytest.raises(MedsettleError) as err:  # cancelled already: a new msgid is refused
        c.cancel_settlement(first.setlinfo.setl_id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # Counted as a local cancel is: once, its money per fund, the retry as a replay.
    after = scrape(mport)
    cancels = {"mode": "center", "role": "frontend"}
    for outcome, n in (("cancelled", 1), ("replayed", 1), ("FAILED_PRECONDITION", 1)):
        assert grown(counted, after, "medsettle_cancels_total", **cancels, outcome=outcome) == n
    for fund, fen in money_of([first.setlinfo]).items():
        assert grown(counted, after, "medsettle_fund_cancelled_fen_total", fund=fund) == fen
    assert center_rows(pg_dsn, "SELECT state, cancel_id FROM settlements") == [
        (2, cancelled.cancel_id)
    ]
    acc = center_rows(
        pg_dsn,
        "SELECT dedc_paid, hifp_paid FROM accumulators WHERE psn_no = %s AND opening = 0",
        RETIRED.psn_no,
    )
    balc = center_rows(pg_dsn, "SELECT balc FROM persons WHERE psn_no = %s", RETIRED.psn_no)
    assert acc == [(0, 0)] and balc == [(RETIRED.balc,)]


def test_center_down_is_unavailable_then_the_retry_settles_once(
    front: LocalServer, center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=20, seed=54)
    center.stop()
    before = snapshot(front.db)
    with pytest.raises(MedsettleError) as err:
        c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), msgid="CM-DOWN-1")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "retry with the same msgid" in err.value.message
    # Nothing is written but the safety net for an answer that might have been lost: the
    # cancel of the center's settlement, left for after the retries' grace period.
    after = snapshot(front.db)
    assert [row[1] for row in after.pop("outbox")] == ["undo"]
    assert after == {k: v for k, v in before.items() if k != "outbox"}
    back = LocalServer(
        pg_dsn, port=center.port, extra=["--role", "center"], log=tmp_path / "center2.log"
    ).start()
    try:
        # As a HIS retries: the front-end's channel to the center may take a few seconds to
        # connect again (UNAVAILABLE meanwhile, nothing kept), so the SDK retries with backoff.
        c.retries, c.backoff_s = 6, 0.25
        done = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), msgid="CM-DOWN-1")
        assert done.setlinfo.state == common_pb2.SETTLED
        assert center_rows(pg_dsn, "SELECT COUNT(*) FROM settlements") == [(1,)]
        assert snapshot(front.db)["outbox"] == []  # kept: nothing left to cancel
    finally:
        back.stop()


def test_offline_fallback_within_limits_then_forwarded(
    center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    """The emergency plan: with the center down a center-mode front-end settles locally,
    marked offline, within its limits (beyond them UNAVAILABLE): the front-end's settings
    while the policy has no `offline` table, the policy's once it has one. The settlements
    reach the center when the link returns."""
    front = LocalServer(
        tmp_path / "offline.db",
        extra=["--mode", "center", "--center-target", center.target],
        env={
            "MEDSETTLE_CENTER_DEADLINE_S": "1",
            "MEDSETTLE_OFFLINE_FALLBACK": "true",
            "MEDSETTLE_OFFLINE_MAX_PER_DAY": "1",
        },
        log=tmp_path / "offline.log",
    ).start()
    try:
        c = client(front)
        first, ls1 = admit(c, RETIRED, n_lines=10, seed=55, med_type=11)
        second, ls2 = admit(c, RETIRED, n_lines=10, seed=56, med_type=11)
        third, ls3 = admit(c, RETIRED, n_lines=10, seed=57, med_type=11)
        center.stop()
        info = c.settle(first, RETIRED.psn_no, medfee_sumamt=total(ls1)).setlinfo
        assert info.offline and info.mode == common_pb2.LOCAL
        with pytest.raises(MedsettleError) as err:  # the settings allow one a day
            c.settle(second, RETIRED.psn_no, medfee_sumamt=total(ls2))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "1 offline settlements (this front-end's settings)" in err.value.message

        # A policy version with an emergency plan of two a day (published at the center
        # too, as a center would, so center-mode settles may name it later).
        version = c.get_policy().version + 1
        text = DEMO_POLICY.read_text(encoding="utf-8").replace(
            "version = 2026_01\n",
            f"version = {version}\noffline = {{ max_medfee_fen = 500000, max_per_day = 2 }}\n",
        )
        pv = c.put_policy(text)
        assert pv.version == version
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(
                "INSERT INTO policies VALUES (%s, 'demo-city', 'offline plan', %s, 0)",
                (version, c.get_policy(version).canonical_json),
            )
        second_info = c.settle(second, RETIRED.psn_no, medfee_sumamt=total(ls2)).setlinfo
        assert second_info.offline and second_info.policy_version == version
        with pytest.raises(MedsettleError) as err:
            c.settle(third, RETIRED.psn_no, medfee_sumamt=total(ls3))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert f"2 offline settlements (policy demo-city version {version})" in err.value.message

        back = LocalServer(
            pg_dsn, port=center.port, extra=["--role", "center"], log=tmp_path / "center3.log"
        ).start()
        try:
            deadline = time.monotonic() + 30
            while len(center_rows(pg_dsn, "SELECT offline, mode FROM settlements")) < 2:
                assert time.monotonic() < deadline, "the offline settlements were not forwarded"
                time.sleep(0.1)
            assert sorted(
                center_rows(pg_dsn, "SELECT setl_id, offline, mode FROM settlements")
            ) == sorted([(info.setl_id, 1, 1), (second_info.setl_id, 1, 1)])
            later = c.settle(third, RETIRED.psn_no, medfee_sumamt=total(ls3)).setlinfo
            assert later.mode == common_pb2.CENTER and not later.offline
        finally:
            back.stop()
    finally:
        front.stop()


def test_routing_by_insured_region(center: LocalServer, tmp_path: Path, pg_dsn: str) -> None:
    """With centers keyed by insured region, a person's settlement goes to the center of the
    region where they are insured, not to the default one."""
    with fresh_database() as other_dsn:
        regional = LocalServer(other_dsn, extra=["--role", "center"], log=tmp_path / "r.log")
        regional.start()
        front = LocalServer(
            tmp_path / "routed.db",
            extra=["--mode", "center", "--center-target", center.target],
            env={"MEDSETTLE_CENTERS": f"440100={regional.target}"},
            log=tmp_path / "routed.log",
        ).start()
        try:
            c = client(front)
            mdtrt_id, ls = admit(c, RETIRED, n_lines=10, seed=57, med_type=11)
            info = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls)).setlinfo
            assert info.mode == common_pb2.CENTER
            assert center_rows(other_dsn, "SELECT setl_id FROM settlements") == [(info.setl_id,)]
            assert center_rows(pg_dsn, "SELECT setl_id FROM settlements") == []
        finally:
            front.stop()
            regional.stop()


def test_policy_and_catalog_versions_are_pulled_from_the_center(
    center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    """A new policy version and a new catalog version published at the center reach the
    front-end by themselves and are in force for the next settlement."""
    front = LocalServer(
        tmp_path / "pull.db",
        extra=["--center-target", center.target],
        env={"MEDSETTLE_REFDATA_PULL_S": "0.3"},
        log=tmp_path / "pull.log",
    ).start()
    try:
        c = client(front)
        mdtrt_id, ls = admit(c, RETIRED, n_lines=20, seed=58)
        before = c.pre_settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls)).setlinfo
        with psycopg.connect(pg_dsn) as conn:
            doc = json.loads(
                conn.execute("SELECT canonical_json FROM policies").fetchone()[0]  # type: ignore[index]
            )
            doc["version"] = 202602
            doc["rules"][0]["deductible"]["by_admission_fen"] = [100_000, 50_000]
            conn.execute(
                "INSERT INTO policies VALUES (%s, %s, %s, %s, %s)",
                (202602, doc["id"], doc["name"], json.dumps(doc), 0),
            )
            conn.execute("UPDATE catalog_items SET price_cap = 1, ver = 2")  # every cap lowered
            conn.execute("INSERT INTO catalog_versions VALUES (2, 0, 3000)")
        deadline = time.monotonic() + 20
        while c.get_policy().version != 202602:
            assert time.monotonic() < deadline, "the policy version never arrived"
            time.sleep(0.2)
        while True:
            info = c.pre_settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls)).setlinfo
            if info.catalog_version == 2:
                break
            assert time.monotonic() < deadline, "the catalog version never arrived"
            time.sleep(0.2)
        assert info.policy_version == 202602
        assert "起付线 1000.00" in info.setldetail[0].setl_proc_info  # the new deductible
        assert info.overlmt_amt > before.overlmt_amt  # the lowered price caps are in force
    finally:
        front.stop()


def test_settles_at_once_travel_to_the_center_together(
    center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    """Center-mode settles reaching the front-end together go to the center in shared
    SettleSummaries calls (center_link.py); each HIS call still gets its own answer, a retry
    sent beside its first try the same bytes, and each visit is settled once on each side,
    to the same fen."""
    mport = free_port()
    front = LocalServer(
        tmp_path / "together.db",
        extra=["--mode", "center", "--center-target", center.target, "--metrics-port", str(mport)],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "20"},
        log=tmp_path / "together.log",
    ).start()
    try:
        c = client(front)
        calls = []
        for i, psn in enumerate([RETIRED, EMPLOYEE, CIVIL] * 6):
            mdtrt_id, ls = admit(c, psn, n_lines=8, seed=300 + i, med_type=11)
            calls.append((psn.psn_no, mdtrt_id, total(ls), f"CM-TOGETHER-{i}"))
        calls += calls[:3]  # retries, sent with their first tries
        gate = threading.Barrier(len(calls))

        def go(call: tuple[str, str, int, str]) -> bytes:
            psn_no, mdtrt_id, fee, msgid = call
            gate.wait()
            resp = c.settle(mdtrt_id, psn_no, medfee_sumamt=fee, acct_used=True, msgid=msgid)
            return resp.SerializeToString()

        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(go, calls))
        sent = scrape(mport)
    finally:
        front.stop()
    assert answers[-3:] == answers[:3]
    infos = [settlement_pb2.SettleResponse.FromString(a).setlinfo for a in answers[:-3]]
    assert all(i.state == common_pb2.SETTLED and i.mode == common_pb2.CENTER for i in infos)
    calls_made = value(sent, "medsettle_center_link_batch_settles_count")
    settles_sent = value(sent, "medsettle_center_link_batch_settles_sum")
    # A retry reaching the front-end after its first try was kept is answered there from the
    # stored answer; one beside its first try travels too and the center replays it.
    assert len(infos) <= settles_sent <= len(calls)
    assert calls_made < settles_sent  # some travelled together
    # Counted with the keeps' batches (store/sqlite.py `_count`): each settlement once, its
    # money per fund to the fen, each retry as a replay (kept from the center's replay, or
    # answered here from the stored answer).
    center_mode = {"mode": "center", "role": "frontend"}
    assert grown({}, sent, "medsettle_settlements_total", **center_mode, outcome="settled") == len(
        infos
    )
    assert grown({}, sent, "medsettle_settlements_total", **center_mode, outcome="replayed") == 3
    for fund, fen in money_of(infos).items():
        assert value(sent, "medsettle_fund_paid_fen_total", fund=fund) == fen, fund
    at_center = center_rows(pg_dsn, "SELECT setl_id, fund_pay_sumamt, acct_pay FROM settlements")
    assert sorted(at_center) == sorted((i.setl_id, i.fund_pay_sumamt, i.acct_pay) for i in infos)
    here = sqlite_rows(tmp_path / "together.db", "SELECT setl_id, fund_pay_sumamt FROM settlements")
    assert sorted(here) == sorted((i.setl_id, i.fund_pay_sumamt) for i in infos)


class _Garbled:
    """A center whose settle answers do not decode (a fault, or a hostile peer): every
    item of a `SettleSummaries` call is answered OK with bytes that are not a
    CenterSettleResponse; anything else is UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.calls = 0
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "medsettle.v1.Center",
                    {"SettleSummaries": grpc.unary_unary_rpc_method_handler(self._settle)},
                )
            ]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _settle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        n = len(center_pb2.CenterSettleBatchBytes.FromString(request).calls)
        resp = center_pb2.CenterSettleBatchResponseBytes()
        for _ in range(n):
            resp.outcomes.add(answer=b"\x0a\xff\x01")  # a field longer than the bytes
        return resp.SerializeToString()


def test_an_answer_that_cannot_be_read_is_unavailable_and_left_to_cancel(
    tmp_path: Path,
) -> None:
    """The center's answer reaches the ledger as bytes: one that does not decode refuses the
    keep as UNAVAILABLE (the center's fault, not the HIS's request), keeps nothing, and
    leaves the cancel of what the center may have settled for after the retries' grace,
    as for an answer lost on the way."""
    garbled = _Garbled()
    garbled.server.start()
    front = LocalServer(
        tmp_path / "garbled.db",
        extra=["--mode", "center", "--center-target", f"127.0.0.1:{garbled.port}"],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "5"},
        log=tmp_path / "garbled.log",
    ).start()
    try:
        c = client(front)
        mdtrt_id, ls = admit(c, RETIRED, n_lines=6, seed=57, med_type=11)
        before = snapshot(front.db)
        with pytest.raises(MedsettleError) as err:
            c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), msgid="CM-GARBLED-1")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the center's answer could not be read" in err.value.message
        assert garbled.calls == 1
        after = snapshot(front.db)
        undo = after.pop("outbox")
        assert [row[1] for row in undo] == ["undo"]
        assert after == {k: v for k, v in before.items() if k != "outbox"}
    finally:
        front.stop()
        garbled.server.stop(None)
