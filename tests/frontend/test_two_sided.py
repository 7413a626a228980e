"""Operations that touch both a front-end and the center leave the two sides together:
a refused cancel changes neither side, a reversal of a center-mode Settle cancels it at the
center too, a settlement the center committed but the front-end could not keep (the visit
changed meanwhile) is cancelled at the center, and a settlement is cancelled only while no
later one of the person relied on its accumulators (issue 13, points 3 and 4)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from clients.sdk import MedsettleError
from medsettle.v1 import common_pb2
from server.demo.localserver import ROOT, LocalServer
from tests.harness import (
    ALL_ROLES,
    INST_A,
    PASSWORD,
    RETIRED,
    admit,
    audit_rows,
    client,
    snapshot,
    total,
)


def center_rows(dsn: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


class HoldingProxy:
    """A TCP relay in front of the center whose answers can be held back (the center
    commits, and the front-end hears of it only when the test releases them) and whose line
    can be cut right after an answer got through (`cut_after_answer`) and mended."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.released = threading.Event()
        self.released.set()
        self.cut_after_answer = False
        self._up = threading.Event()
        self._up.set()
        self._answered = False
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():  # the line is cut: the caller sees it at once
                down.close()
                continue
            up = socket.create_connection(self.upstream)
            self._sockets += [down, up]
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers:
                    self.released.wait()
                elif self.cut_after_answer and self._answered:
                    self.cut()  # the first thing the front-end sends after the answer
                    return
                dst.sendall(data)
                if answers and self.cut_after_answer:
                    self._answered = True
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self._up.clear()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def mend(self) -> None:
        self.cut_after_answer = self._answered = False
        self._up.set()

    def close(self) -> None:
        self._closing = True
        self.released.set()
        self._listener.close()


@pytest.fixture
def proxy(center: LocalServer) -> Iterator[HoldingProxy]:
    p = HoldingProxy(center.target)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def front(proxy: HoldingProxy, tmp_path: Path) -> Iterator[LocalServer]:
    """A center-mode front-end whose link to the center runs through `proxy`."""
    server = LocalServer(
        tmp_path / "front.db",
        extra=["--mode", "center", "--center-target", proxy.target],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "3"},
        log=tmp_path / "front.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _outbox(db: str | Path) -> list[tuple[str, str, object]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT kind, ref, sent_at FROM outbox ORDER BY id").fetchall()
    finally:
        conn.close()


def _state_at_center(dsn: str, setl_id: str) -> int:
    rows = center_rows(dsn, "SELECT state FROM settlements WHERE setl_id = %s", setl_id)
    assert len(rows) == 1, rows
    state = rows[0][0]
    assert isinstance(state, int)
    return state


def _center_acc(dsn: str) -> list[tuple[object, ...]]:
    return center_rows(
        dsn,
        "SELECT dedc_paid, hifp_paid, inpatient_count FROM accumulators"
        " WHERE psn_no = %s AND opening = 0",
        RETIRED.psn_no,
    )


@pytest.mark.pg
def test_refused_center_mode_cancel_changes_neither_side(front: LocalServer, pg_dsn: str) -> None:
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=12, seed=71)
    setl = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True).setlinfo
    before_front = snapshot(front.db)
    before_center = center_rows(pg_dsn, "SELECT setl_id, state FROM settlements")
    for kwargs, field in (
        ({"psn_no": "P-not-the-person"}, "psn_no"),
        ({"mdtrt_id": "M-not-the-visit"}, "mdtrt_id"),
    ):
        with pytest.raises(MedsettleError) as err:
            c.cancel_settlement(setl.setl_id, **kwargs)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in err.value.violations] == [field]
        assert snapshot(front.db) == before_front
        assert center_rows(pg_dsn, "SELECT setl_id, state FROM settlements") == before_center
    # The correct cancel then goes through on both sides.
    done = c.cancel_settlement(setl.setl_id, psn_no=RETIRED.psn_no, mdtrt_id=mdtrt_id).setlinfo
    assert done.state == common_pb2.CANCELLED
    assert _state_at_center(pg_dsn, setl.setl_id) == common_pb2.CANCELLED


@pytest.mark.pg
def test_reversal_of_a_center_mode_settle_cancels_it_at_the_center(
    front: LocalServer, pg_dsn: str
) -> None:
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=12, seed=72)
    amount = total(ls)
    setl = c.settle(
        mdtrt_id, RETIRED.psn_no, medfee_sumamt=amount, acct_used=True, msgid="TS-SETL-1"
    ).setlinfo
    # A reversal the front-end refuses (the wrong oinfno) cancels nothing at the center.
    with pytest.raises(MedsettleError) as err:
        c.reverse("TS-SETL-1", "2207")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _state_at_center(pg_dsn, setl.setl_id) == common_pb2.SETTLED
    rev = c.reverse("TS-SETL-1", "Settle")
    assert rev.original_found and rev.setlinfo.state == common_pb2.CANCELLED
    assert _state_at_center(pg_dsn, setl.setl_id) == common_pb2.CANCELLED
    assert _center_acc(pg_dsn) == [(0, 0, 0)]
    assert center_rows(pg_dsn, "SELECT balc FROM persons WHERE psn_no = %s", RETIRED.psn_no) == [
        (RETIRED.balc,)
    ]
    # The visit can be settled again, and the center takes it.
    again = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=amount, acct_used=True).setlinfo
    assert again.state == common_pb2.SETTLED
    assert _state_at_center(pg_dsn, again.setl_id) == common_pb2.SETTLED


@pytest.mark.pg
@pytest.mark.parametrize("line", ["up", "cut"])
def test_settlement_the_front_end_could_not_keep_is_cancelled_at_the_center(
    front: LocalServer, proxy: HoldingProxy, pg_dsn: str, line: str
) -> None:
    """With the line up the front-end cancels at once; with the line cut just after the
    center's answer, the cancel waits in the outbox and the forwarder sends it later."""
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=12, seed=73)
    outcome: list[BaseException | object] = []

    def settle() -> None:
        try:
            outcome.append(
                client(front).settle(
                    mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    proxy.released.clear()  # the center's answer is held once it has committed
    t = threading.Thread(target=settle)
    t.start()
    deadline = time.monotonic() + 15
    while not center_rows(pg_dsn, "SELECT 1 FROM settlements") and time.monotonic() < deadline:
        time.sleep(0.05)
    (setl_id,) = center_rows(pg_dsn, "SELECT setl_id FROM settlements")[0]
    assert _state_at_center(pg_dsn, str(setl_id)) == common_pb2.SETTLED
    c.delete_fees(mdtrt_id, [ls[0].feedetl_sn])  # meanwhile the HIS deletes a line here
    proxy.cut_after_answer = line == "cut"
    proxy.released.set()
    t.join(30)
    (got,) = outcome
    assert isinstance(got, MedsettleError) and got.code == grpc.StatusCode.FAILED_PRECONDITION
    if line == "cut":
        assert _state_at_center(pg_dsn, str(setl_id)) == common_pb2.SETTLED
        assert [(k, r) for k, r, _ in _outbox(front.db)] == [("undo", setl_id)]
        proxy.mend()
        deadline = time.monotonic() + 30
        while _outbox(front.db)[0][2] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _outbox(front.db)[0][2] is not None  # sent: the center confirmed
    # The center's settlement is cancelled, its accumulators and the account restored.
    assert _state_at_center(pg_dsn, str(setl_id)) == common_pb2.CANCELLED
    assert _center_acc(pg_dsn) == [(0, 0, 0)]
    assert center_rows(pg_dsn, "SELECT balc FROM persons WHERE psn_no = %s", RETIRED.psn_no) == [
        (RETIRED.balc,)
    ]
    assert snapshot(front.db)["settlements"] == []


def test_an_earlier_settlement_is_cancelled_only_after_the_later_ones(
    frontend: LocalServer,
) -> None:
    c = client(frontend)
    first_visit, first_lines = admit(c, RETIRED, n_lines=20, seed=74)
    first = c.settle(first_visit, RETIRED.psn_no, medfee_sumamt=total(first_lines)).setlinfo
    assert first.act_pay_dedc == 130_000  # the year's first admission
    second_visit, second_lines = admit(c, RETIRED, n_lines=20, seed=75)
    second = c.settle(second_visit, RETIRED.psn_no, medfee_sumamt=total(second_lines)).setlinfo
    assert second.act_pay_dedc == 65_000  # priced as the second: it relied on the first
    before = snapshot(frontend.db)
    audits = len(audit_rows(frontend.db))
    for attempt in (
        lambda: c.cancel_settlement(first.setl_id),
        lambda: c.reverse(first.msgid, "Settle"),
    ):
        with pytest.raises(MedsettleError) as err:
            attempt()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert second.setl_id in err.value.message
        assert snapshot(frontend.db) == before
    assert len(audit_rows(frontend.db)) == audits + 2  # the two refusals, audited
    # Newest first, then the earlier one: the accumulators return to the opening values.
    c.cancel_settlement(second.setl_id)
    c.cancel_settlement(first.setl_id)
    again = c.settle(first_visit, RETIRED.psn_no, medfee_sumamt=total(first_lines)).setlinfo
    assert [(g.fund_pay_type, g.fund_payamt) for g in again.setldetail] == [
        (g.fund_pay_type, g.fund_payamt) for g in first.setldetail
    ]
    assert again.act_pay_dedc == first.act_pay_dedc


@pytest.fixture
def quick_front(proxy: HoldingProxy, tmp_path: Path) -> Iterator[LocalServer]:
    """`front`, but a lost answer's settlement is cancelled at the center after 1 s."""
    server = LocalServer(
        tmp_path / "quick.db",
        extra=["--mode", "center", "--center-target", proxy.target],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "3", "MEDSETTLE_CENTER_RETRY_GRACE_S": "1"},
        log=tmp_path / "quick.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _lose_the_answer(
    server: LocalServer, proxy: HoldingProxy, dsn: str, mdtrt_id: str, amount: int, msgid: str
) -> str:
    """Settle while the center's answer is lost on the line: UNAVAILABLE to the HIS, though
    the center committed. Returns the center's setl_id."""
    outcome: list[BaseException | object] = []

    def settle() -> None:
        try:
            c = client(server)
            outcome.append(c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=amount, msgid=msgid))
        except BaseException as exc:
            outcome.append(exc)

    proxy.released.clear()
    t = threading.Thread(target=settle)
    t.start()
    deadline = time.monotonic() + 15
    while not center_rows(dsn, "SELECT 1 FROM settlements") and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.cut()
    t.join(30)
    proxy.mend()
    proxy.released.set()
    (got,) = outcome
    assert isinstance(got, MedsettleError) and got.code == grpc.StatusCode.UNAVAILABLE, got
    (setl_id,) = center_rows(dsn, "SELECT setl_id FROM settlements")[0]
    assert _state_at_center(dsn, str(setl_id)) == common_pb2.SETTLED
    return str(setl_id)


@pytest.mark.pg
def test_a_lost_answer_is_kept_by_the_retry(
    front: LocalServer, proxy: HoldingProxy, pg_dsn: str
) -> None:
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=8, seed=76)
    setl_id = _lose_the_answer(front, proxy, pg_dsn, mdtrt_id, total(ls), "TS-LOST-1")
    assert [(k, r, s) for k, r, s in _outbox(front.db)] == [("undo", setl_id, None)]
    kept = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), msgid="TS-LOST-1").setlinfo
    assert kept.setl_id == setl_id and kept.state == common_pb2.SETTLED
    assert _outbox(front.db) == []  # the retry kept it: nothing to cancel any more
    assert _state_at_center(pg_dsn, setl_id) == common_pb2.SETTLED


@pytest.mark.pg
def test_a_lost_answer_not_retried_is_cancelled_at_the_center(
    quick_front: LocalServer, proxy: HoldingProxy, pg_dsn: str
) -> None:
    c = client(quick_front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=8, seed=77)
    setl_id = _lose_the_answer(quick_front, proxy, pg_dsn, mdtrt_id, total(ls), "TS-LOST-2")
    deadline = time.monotonic() + 30
    while _state_at_center(pg_dsn, setl_id) == common_pb2.SETTLED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state_at_center(pg_dsn, setl_id) == common_pb2.CANCELLED
    assert _center_acc(pg_dsn) == [(0, 0, 0)]
    # A late retry of that msgid is refused, not answered "settled"; a new msgid settles.
    with pytest.raises(MedsettleError) as err:
        c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), msgid="TS-LOST-2")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    again = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls)).setlinfo
    assert _state_at_center(pg_dsn, again.setl_id) == common_pb2.SETTLED


@pytest.mark.pg
def test_reconcile_proposes_and_repairs_a_settlement_held_at_the_center_only(
    front: LocalServer, proxy: HoldingProxy, center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    """The center committed, the answer was lost and the HIS never retried: reconciliation
    lists the settlement as the center's only and proposes to cancel it there; `--repair`
    (by an operator who may cancel) does, and the books then balance."""
    c = client(front)
    mdtrt_id, ls = admit(c, RETIRED, n_lines=8, seed=78)
    setl_id = _lose_the_answer(front, proxy, pg_dsn, mdtrt_id, total(ls), "TS-LOST-3")
    secret = tmp_path / "tester.password"
    secret.write_text(PASSWORD + "\n")

    def reconcile(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                *("-m", "clients.cli", "reconcile", "--target", front.target),
                *("--institution", INST_A, "--opter", ALL_ROLES, "--center", center.target),
                *("--password-file", str(secret), *extra),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    seen = reconcile()
    assert seen.returncode == 1, seen.stdout + seen.stderr
    assert f"{setl_id}: settled at the center only: cancel at the center" in seen.stdout
    assert _state_at_center(pg_dsn, setl_id) == common_pb2.SETTLED  # only proposed
    fixed = reconcile("--repair")
    assert f"repaired {setl_id}: cancelled at the center" in fixed.stdout, fixed.stdout
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert _state_at_center(pg_dsn, setl_id) == common_pb2.CANCELLED
    assert _center_acc(pg_dsn) == [(0, 0, 0)]
    # Not something to repair: a settlement held on both sides, or another node's id.
    done = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls)).setlinfo
    for bad, code in (
        (done.setl_id, grpc.StatusCode.FAILED_PRECONDITION),
        (f"S{INST_A}02H0123456789ab", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(MedsettleError) as err:
            c.repair(bad)
        assert err.value.code == code, err.value.message
    assert _state_at_center(pg_dsn, done.setl_id) == common_pb2.SETTLED
