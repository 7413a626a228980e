"""Store-and-forward from a local-mode front-end to a center on PostgreSQL: settlements and
cancels reach the center in order; with the center down the front-end keeps settling and the
backlog drains by itself when it returns; replayed, duplicated and reordered batches never
make a second settlement; a person who settled elsewhere meanwhile shows as a recorded
difference, nothing overwritten."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from clients.reconcile import today
from medsettle.v1 import (
    center_pb2,
    center_pb2_grpc,
    common_pb2,
    reconciliation_pb2,
    reconciliation_pb2_grpc,
)
from server.demo.localserver import LocalServer
from server.frontend.forwarder import pending
from server.frontend.store.sqlite import Store
from server.security import datakeys
from server.security.pii import Vault
from tests.harness import CIVIL, EMPLOYEE, INST_A, RETIRED, admit, client, total

pytestmark = pytest.mark.pg


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def center_set(dsn: str) -> set[tuple[str, int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT setl_id, state, medfee_sumamt FROM settlements").fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def front_set(db: Path | str) -> set[tuple[str, int, int]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT setl_id, state, medfee_sumamt FROM settlements").fetchall()
    finally:
        conn.close()
    return {(r[0], r[1], r[2]) for r in rows}


def unsent(db: Path | str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def front(center: LocalServer, tmp_path: Path) -> Iterator[LocalServer]:
    server = LocalServer(
        tmp_path / "front.db",
        extra=["--center-target", center.target],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "1"},
        log=tmp_path / "front.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_link_cut_backlog_drains_and_books_balance(
    front: LocalServer, center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    c = client(front)
    settled = []
    for seed in range(60, 64):
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=6, seed=seed, med_type=11)
        settled.append(c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo)
    wait_for(lambda: unsent(front.db) == 0, "the first settlements to reach the center")
    assert center_set(pg_dsn) == front_set(front.db)

    center.stop()  # the dedicated line is down: local mode goes on settling
    for seed in range(64, 70):
        psn = (RETIRED, CIVIL)[seed % 2]
        mdtrt_id, ls = admit(c, psn, n_lines=6, seed=seed, med_type=11)
        settled.append(c.settle(mdtrt_id, psn.psn_no, medfee_sumamt=total(ls)).setlinfo)
    # Each person's latest settlement (an earlier one cannot be cancelled before it).
    c.cancel_settlement(settled[3].setl_id)
    c.cancel_settlement(settled[9].setl_id)
    time.sleep(1.5)
    assert unsent(front.db) == 8  # 6 settlements + 2 cancels wait in the outbox

    back = LocalServer(
        pg_dsn, port=center.port, extra=["--role", "center"], log=tmp_path / "center2.log"
    ).start()
    try:
        wait_for(lambda: unsent(front.db) == 0, "the backlog to drain")
        assert center_set(pg_dsn) == front_set(front.db)
        who = [EMPLOYEE.psn_no, RETIRED.psn_no, CIVIL.psn_no]
        with psycopg.connect(pg_dsn) as conn:
            diffs = conn.execute("SELECT COUNT(*) FROM accumulator_differences").fetchone()
            acc = conn.execute(
                "SELECT psn_no, dedc_paid, hifp_paid FROM accumulators WHERE opening = 0"
                " AND psn_no = ANY(%s) ORDER BY psn_no",
                (who,),
            ).fetchall()
        assert diffs == (0,)  # nobody settled elsewhere meanwhile
        conn2 = sqlite3.connect(front.db)
        mine = conn2.execute(
            "SELECT psn_no, dedc_paid, hifp_paid FROM accumulators WHERE opening = 0"
            f" AND psn_no IN ({', '.join('?' * len(who))}) ORDER BY psn_no",
            who,
        ).fetchall()
        conn2.close()
        assert [tuple(r) for r in acc] == [tuple(r) for r in mine]

        # Replaying everything, twice and reversed, changes nothing at the center.
        store = Store(str(front.db), readers=1)
        try:
            items = store.read_sync(lambda conn: pending_all(conn, str(front.db)))
        finally:
            store.close()
        with grpc.insecure_channel(back.target) as ch:
            stub = center_pb2_grpc.CenterStub(ch)
            for batch in (items, items[::-1], items):
                resp = stub.Forward(
                    center_pb2.ForwardRequest(
                        header=center_pb2.NodeHeader(node_id="01", fixmedins_code=INST_A),
                        items=batch,
                    ),
                    timeout=10,
                )
                assert {r.outcome for r in resp.results} == {center_pb2.DUPLICATE}
        assert center_set(pg_dsn) == front_set(front.db)

        # The finance clerk's view: balanced; then a settlement lost at the center shows.
        day = str(today())
        ok = reconcile(front, back, day)
        assert ok.returncode == 0 and "balanced: 10 settlements agree" in ok.stdout, ok.stdout
        lost = settled[2].setl_id
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("DELETE FROM setl_legs WHERE setl_id = %s", (lost,))
            conn.execute("DELETE FROM accumulator_differences WHERE setl_id = %s", (lost,))
            conn.execute("DELETE FROM settlements WHERE setl_id = %s", (lost,))
        off = reconcile(front, back, day)
        assert off.returncode == 1 and "NOT BALANCED" in off.stdout
        assert f"front-end only: {lost}" in off.stdout
    finally:
        back.stop()


def reconcile(
    front: LocalServer, center: LocalServer, day: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "reconcile",
            "--target",
            front.target,
            "--institution",
            INST_A,
            "--opter",
            "finance01",
            "--date",
            day,
            "--center",
            center.target,
            "--password-file",
            f"{front.db}.demo-password",
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pending_all(conn: sqlite3.Connection, db: str) -> list[center_pb2.ForwardItem]:
    """Every outbox row as a forward item, sent or not (for the replay)."""
    vault = Vault(datakeys.load("", db + ".key"))  # the front-end's own key beside its db
    conn.execute("UPDATE outbox SET sent_at = NULL")  # a snapshot-local change, rolled back
    return [item for _, item, _ in pending(conn, vault, 10_000)]


def test_a_person_settled_elsewhere_is_recorded_as_a_difference(
    front: LocalServer, center: LocalServer, pg_dsn: str
) -> None:
    """The center settled this person for another front-end (center mode) before this
    front-end's offline-looking local settlement arrives: applied, with both views kept."""
    with grpc.insecure_channel(center.target) as ch:
        stub = center_pb2_grpc.CenterStub(ch)
        stub.SettleSummary(
            center_pb2.CenterSettleRequest(
                header=center_pb2.NodeHeader(node_id="09", fixmedins_code=INST_A, msgid="X-1"),
                setl_id=f"S{INST_A}09000000000001",
                mdtrt_id=f"M{INST_A}09000000000001",
                psn_no=EMPLOYEE.psn_no,
                insutype=310,
                med_type=11,
                begndate=20260615,
                policy_version=202601,
                summary=center_pb2.VisitSummary(
                    medfee_sumamt=30_000, inscp_scp_amt=30_000, line_count=1
                ),
            ),
            timeout=10,
        )
    c = client(front)
    mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=6, seed=70, med_type=11)
    mine = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
    wait_for(lambda: unsent(front.db) == 0, "the settlement to reach the center")
    with psycopg.connect(pg_dsn) as conn:
        diff = conn.execute(
            "SELECT setl_id, ours->>'dedc_paid', theirs->>'dedc_paid' FROM accumulator_differences"
        ).fetchall()
        paid = conn.execute(
            "SELECT dedc_paid FROM accumulators WHERE psn_no = %s AND opening = 0",
            (EMPLOYEE.psn_no,),
        ).fetchone()
    assert diff == [(mine.setl_id, "30000", "0")]
    # Both deductibles count at the center: nothing was dropped or overwritten.
    assert paid == (30_000 + mine.act_pay_dedc,)
    # Reconciliation shows it: the center's Details carry it, the clerk's command prints it
    # and exits 1 although the front-end's settlements agree with the center's.
    day = str(today())
    with grpc.insecure_channel(center.target) as ch:
        details = reconciliation_pb2_grpc.ReconciliationStub(ch).Details(
            reconciliation_pb2.DetailsRequest(
                header=common_pb2.RequestHeader(fixmedins_code=INST_A, opter="clerk"),
                begin_date=int(day),
                end_date=int(day),
            ),
            timeout=10,
        )
    [d] = details.accumulator_differences
    assert (d.setl_id, d.psn_no) == (mine.setl_id, EMPLOYEE.psn_no)
    assert (d.center.dedc_paid, d.front_end.dedc_paid) == (30_000, 0)
    out = reconcile(front, center, day)
    assert out.returncode == 1, out.stdout
    assert "ACCUMULATORS DIFFERED for 1 settlement(s)" in out.stdout
    assert f"{mine.setl_id} {EMPLOYEE.psn_no}" in out.stdout
    assert "dedc_paid center 30000 front-end 0" in out.stdout
