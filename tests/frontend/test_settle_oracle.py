"""The ledger's settle (engine_rs/src/ledger/settle.rs, the whole local-mode Settle in Rust)
against an oracle: the same visits settled by the Python composition of the engine that the
center still runs (`server.fundsplit`: `choose_rule`, `fund_split`, over `engine_rs.preprocess`),
with the accumulators and account balance carried by the test itself.

A real front-end on loopback with the demo data set; random sequences of settles (several
per person, outpatient and inpatient, with and without the account), cancels of a person's
latest settlement (its visit then settled again), and replays of an earlier msgid. Every
answer must equal the oracle's settlement to the fen, leg for leg; every replay must be the
first answer byte for byte and change nothing; the stored accumulators must be the oracle's.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import engine_rs
from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import common_pb2, settlement_pb2
from server.codes import treatment_of
from server.columns import pack_strings
from server.demo.localserver import LocalServer, free_port
from server.frontend.visits import VisitRow, engine_visit, load_person
from server.fundsplit import SplitContext, choose_rule, fund_split
from server.persons import ACC_FIELDS
from server.refdata import RefData
from server.security import datakeys
from server.security.pii import Vault
from tests.center.forward_twin import split_differences
from tests.frontend.test_metrics import grown, money_of, scrape
from tests.harness import (
    ALL_ROLES,
    ASSISTED,
    CHILD,
    CIVIL,
    DAY,
    EMPLOYEE,
    FILED,
    INST_A,
    RETIRED,
    SECOND_STAY,
    client,
    lines,
    snapshot,
    total,
)

PEOPLE = (RETIRED, EMPLOYEE, CIVIL, CHILD, ASSISTED, SECOND_STAY, FILED)


def line_columns(
    hosp: list[str],
    ins: list[str],
    nums: npt.NDArray[np.int64],
) -> engine_rs.FeeLines:
    """Engine columns from codes and an (n, 5) int64 array of cnt, pric, amount, date, flag
    (as the upload path built them before `FeeUpload.columns`)."""
    return {
        "medins_list_codg": pack_strings(hosp),
        "med_list_codg": pack_strings(ins),
        "cnt": np.ascontiguousarray(nums[:, 0]),
        "pric": np.ascontiguousarray(nums[:, 1]),
        "det_item_fee_sumamt": np.ascontiguousarray(nums[:, 2]),
        "fee_date": np.ascontiguousarray(nums[:, 3]),
        "hosp_appr_flag": np.ascontiguousarray(nums[:, 4]),
    }


class Oracle:
    """The Python composition of the engine over the server's reference data, carrying each
    person's accumulators and account balance from their stored opening values."""

    def __init__(self, db: str) -> None:
        self.conn = sqlite3.connect(db)
        self.vault = Vault(datakeys.load("", db + ".key"))
        self.snap = RefData().current(self.conn)
        self.acc: dict[tuple[str, int, str], dict[str, int]] = {}
        # the account balances as loaded, before any settle
        self.balc: dict[str, int] = dict(self.conn.execute("SELECT psn_no, balc FROM persons"))
        self.diagnoses: dict[str, list[str]] = {}  # as each visit was registered
        # setl_id -> what its settle added to the accumulators (a cancel takes it back)
        self.added: dict[str, dict[str, int]] = {}

    def opening(self, psn_no: str, year: int, pool: str) -> dict[str, int]:
        key = (psn_no, year, pool)
        if key not in self.acc:  # the loaded opening values (the server's own row may be later)
            row = self.conn.execute(
                f"SELECT {', '.join(ACC_FIELDS)} FROM accumulators"
                " WHERE psn_no = ? AND year = ? AND pool = ? AND opening = 1",
                key,
            ).fetchone()
            self.acc[key] = dict(zip(ACC_FIELDS, row or [0] * len(ACC_FIELDS), strict=True))
        return self.acc[key]

    def settle(
        self,
        mdtrt_id: str,
        ls: list[settlement_pb2.FeeLine],
        acct_used: bool,
    ) -> tuple[common_pb2.SetlInfo, tuple[str, int, str], dict[str, int]]:
        """The settlement this visit should get, its accumulator key and values after."""
        row = self.conn.execute(
            "SELECT id, mdtrt_id, fixmedins_code, psn_no, insutype, med_type, treatment,"
            " begndate FROM visits WHERE mdtrt_id = ?",
            (mdtrt_id,),
        ).fetchone()
        i, mdtrt, code, psn_no, insutype, med_type, treatment, begndate = row
        dx = self.diagnoses[mdtrt_id]
        visit = VisitRow(
            i, mdtrt, code, psn_no, insutype, med_type, treatment, begndate, dx, "registered"
        )
        person = load_person(self.conn, self.vault, visit.psn_no)
        assert person is not None
        person.balc = self.balc[person.psn_no]
        inst = self.snap.institutions[INST_A]
        policy = self.snap.policy
        assert policy is not None
        catalog = self.snap.catalog(self.conn, INST_A)
        nums = np.array(
            [[x.cnt, x.pric, x.det_item_fee_sumamt, x.fee_ocur_date, x.hosp_appr_flag] for x in ls],
            dtype=np.int64,
        )
        columns = line_columns([x.medins_list_codg for x in ls], [""] * len(ls), nums)
        _, summary = engine_rs.preprocess(catalog, policy, columns, engine_visit(visit, person))
        ctx = SplitContext(
            INST_A, inst.hosp_lv, inst.admdvs, visit.mdtrt_id, visit.insutype,
            visit.med_type, visit.treatment, visit.begndate,
        )  # fmt: skip
        choice = choose_rule(policy, ctx, person)
        before = self.opening(visit.psn_no, choice.year, choice.pool)
        info, after = fund_split(policy, choice, ctx, person, summary, before, acct_used, "")
        return info, (visit.psn_no, choice.year, choice.pool), after

    def check_settled(
        self,
        infos: list[common_pb2.SetlInfo],
        visits: dict[str, tuple[list[settlement_pb2.FeeLine], bool]],
    ) -> None:
        """Settlements made at once, taken in the order they were recorded: each equals the
        oracle's settle of its visit (mdtrt_id -> lines, account used) one at a time, and
        carries the accumulators and balance on."""
        for got in sorted(infos, key=lambda i: i.setl_id):
            ls, acct_used = visits[got.mdtrt_id]
            want, key, after = self.settle(got.mdtrt_id, ls, acct_used)
            assert split_differences(got, want) == [], got.setl_id
            self.acc[key] = after
            self.balc[key[0]] -= got.acct_pay

    def cancelled(self, setl_id: str, key: tuple[str, int, str], acct_pay: int) -> None:
        """A cancel takes back exactly what its settle added."""
        added = self.added.pop(setl_id)
        self.acc[key] = {f: self.acc[key][f] - added[f] for f in ACC_FIELDS}
        self.balc[key[0]] += acct_pay


def _stored_acc(db: str, key: tuple[str, int, str]) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            f"SELECT {', '.join(ACC_FIELDS)} FROM accumulators"
            " WHERE psn_no = ? AND year = ? AND pool = ? AND opening = 0",
            key,
        ).fetchone()
    finally:
        conn.close()
    return dict(zip(ACC_FIELDS, row, strict=True)) if row else {}


@pytest.mark.parametrize("seed", [1, 2])
def test_settles_cancels_and_replays_match_the_python_composition(
    frontend: LocalServer, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    oracle = Oracle(frontend.db)
    c: MedsettleClient = client(frontend, INST_A, opter=ALL_ROLES)
    done: list[tuple[settlement_pb2.SettleRequest, bytes, str, tuple[str, int, str], int]] = []
    visits: dict[str, list[settlement_pb2.FeeLine]] = {}
    latest: dict[str, list[int]] = {}  # psn_no -> indexes into `done`, oldest first
    with c:
        for step in range(24):
            action = rng.choice(["settle", "settle", "settle", "cancel", "replay"])
            if action == "replay" and done:
                req, answer, _, key, _ = done[int(rng.integers(len(done)))]
                before = snapshot(frontend.db)
                again = c.call(c.settlement.Settle, req)
                assert again.SerializeToString() == answer, f"step {step}: replay differs"
                assert snapshot(frontend.db) == before, f"step {step}: a replay wrote"
                continue
            if action == "cancel":
                settled = [p for p, idx in latest.items() if idx]
                if settled:
                    psn_no = settled[int(rng.integers(len(settled)))]
                    k = latest[psn_no].pop()
                    _, answer, setl_id, key, acct_pay = done[k]
                    info = settlement_pb2.SettleResponse.FromString(answer).setlinfo
                    c.cancel_settlement(setl_id)
                    oracle.cancelled(setl_id, key, acct_pay)
                    assert _stored_acc(frontend.db, key) == oracle.acc[key], f"step {step}"
                    # the visit is open again: settled anew, with a new msgid
                    _settle(c, oracle, frontend.db, rng, info.mdtrt_id, visits, done, latest)
                    continue
            person = PEOPLE[int(rng.integers(len(PEOPLE)))]
            med_type = int(rng.choice([11, 11, 21]))
            dx = ["I10", "E11.9"][: int(rng.integers(treatment_of(med_type) == 2, 3))]
            v = c.register(
                person.psn_no,
                insutype=person.insutype,
                med_type=med_type,
                begndate=DAY,
                ipt_otp_no=f"S{seed}N{step}",
                dise_codg=dx,
            )
            oracle.diagnoses[v.mdtrt_id] = dx
            ls = lines(int(rng.integers(1, 30)), seed=seed * 1000 + step, inst=INST_A)
            c.upload_fees(v.mdtrt_id, ls)
            visits[v.mdtrt_id] = ls
            _settle(c, oracle, frontend.db, rng, v.mdtrt_id, visits, done, latest)
    # the sequence did what it is for: a person settled more than once, and cancels
    assert len(oracle.added) < len(done)
    assert any(len(idx) > 1 for idx in latest.values())


def _settle(
    c: MedsettleClient,
    oracle: Oracle,
    db: str,
    rng: np.random.Generator,
    mdtrt_id: str,
    visits: dict[str, list[settlement_pb2.FeeLine]],
    done: list[Any],
    latest: dict[str, list[int]],
) -> None:
    ls = visits[mdtrt_id]
    acct_used = bool(rng.integers(2))
    want, key, after = oracle.settle(mdtrt_id, ls, acct_used)
    psn_no = key[0]
    resp = c.settle(mdtrt_id, psn_no, medfee_sumamt=total(ls), acct_used=acct_used)
    got = resp.setlinfo
    assert split_differences(got, want) == [], mdtrt_id
    for f in ("psn_name", "mdtrt_id", "psn_no", "line_count", "fixmedins_code", "med_type"):
        assert getattr(got, f) == getattr(want, f), f
    assert got.state == common_pb2.SETTLED and got.mode == common_pb2.LOCAL
    assert got.catalog_version == oracle.snap.catalog_version
    assert sum(x.det_item_fee_sumamt for x in got.categories) == got.medfee_sumamt
    before = oracle.acc[key]
    oracle.added[got.setl_id] = {f: after[f] - before[f] for f in ACC_FIELDS}
    oracle.acc[key] = after
    oracle.balc[psn_no] -= got.acct_pay
    assert _stored_acc(db, key) == after, mdtrt_id
    req = settlement_pb2.SettleRequest(
        header=c.header(got.msgid),
        mdtrt_id=mdtrt_id,
        psn_no=psn_no,
        medfee_sumamt=total(ls),
        acct_used_flag=acct_used,
    )
    latest.setdefault(psn_no, []).append(len(done))
    done.append((req, resp.SerializeToString(), got.setl_id, key, got.acct_pay))


def _commit_batches(port: int) -> tuple[float, float]:
    """(batches committed, operations in them) of the server's store so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("medsettle_commit_batch_operations_"):
            got[name.removeprefix("medsettle_commit_batch_operations_")] = float(value)
    return got["count"], got["sum"]


def _started(port: int) -> float:
    """Calls the server has started so far, every method together."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("grpc_server_started_total{")
    )


def _burst(
    frontend: LocalServer, port: int, send: Callable[[Any], Any], burst: list[Any]
) -> list[Any]:
    """`send` over every item of `burst` at once, while the test holds the store's write
    turn (the flock on `<db>.lock`: server/frontend/store/sqlite.py, WriterLock) until the
    server has started every call. They queue behind it and share the next batches, however
    slowly twelve threads start on a busy machine; each would otherwise find the store idle
    and commit alone."""
    fd = os.open(f"{frontend.db}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = _started(port)
        with ThreadPoolExecutor(len(burst)) as pool:
            futures = [pool.submit(send, t) for t in burst]
            try:
                deadline = time.monotonic() + 30  # a safety net, never an expectation
                while _started(port) - before < len(burst):
                    assert time.monotonic() < deadline, "the burst never reached the server"
                    time.sleep(0.01)
            finally:  # before the pool waits for the calls, which wait for the turn
                fcntl.flock(fd, fcntl.LOCK_UN)
            return [f.result() for f in futures]
    finally:
        os.close(fd)


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[LocalServer, int]]:
    port = free_port()
    server = LocalServer(
        tmp_path / "frontend.db", log=tmp_path / "server.log", extra=["--metrics-port", str(port)]
    )
    server.start()
    try:
        yield server, port
    finally:
        server.stop()


def test_concurrent_settles_in_shared_batches_match_settling_one_at_a_time(
    metered: tuple[LocalServer, int],
) -> None:
    """Settles sent at once share the store's batches (one Rust call, one commit each):
    taken in the order they were recorded, each equals the oracle's settlement of its visit
    one at a time, so two settles of one person in one batch see each other's
    accumulators. Refused settles in the same burst (a wrong total, an unknown visit) are
    rolled back alone: they write nothing and the others commit."""
    frontend, port = metered
    oracle = Oracle(frontend.db)
    c: MedsettleClient = client(frontend, INST_A, opter=ALL_ROLES)
    people = (RETIRED, SECOND_STAY, CHILD)  # several visits each
    with c:
        todo = []
        bad: list[tuple[str, str, int]] = []
        for n in range(42):
            person = people[n % len(people)]
            med_type = 21 if n < len(people) else 11  # one open admission a person
            v = c.register(
                person.psn_no,
                insutype=person.insutype,
                med_type=med_type,
                begndate=DAY,
                ipt_otp_no=f"C{n}",
                dise_codg=["I10"],
            )
            oracle.diagnoses[v.mdtrt_id] = ["I10"]
            ls = lines(1 + n % 17, seed=500 + n, inst=INST_A)
            c.upload_fees(v.mdtrt_id, ls)
            if n % 6 == 5:  # its settle is refused: the total is one fen off
                bad.append((v.mdtrt_id, person.psn_no, total(ls) + 1))
            else:
                todo.append((v.mdtrt_id, person.psn_no, ls, n % 3 == 0))
        bad.append(("MH440101000010109999999999", CHILD.psn_no, 100))  # no such visit

        def send(t: Any) -> Any:
            if len(t) == 3:
                try:
                    c.settle(t[0], t[1], medfee_sumamt=t[2])
                except MedsettleError as exc:
                    return exc
                raise AssertionError(f"{t[0]}: a wrong settle was answered")
            return c.settle(t[0], t[1], medfee_sumamt=total(t[2]), acct_used=t[3])

        commits_before, ops_before = _commit_batches(port)
        counted_before = scrape(port)
        burst = [*todo, *bad]
        np.random.default_rng(7).shuffle(burst)
        outcomes = _burst(frontend, port, send, burst)
        commits, ops = _commit_batches(port)
        counted = scrape(port)
    answers = [o for o in outcomes if isinstance(o, settlement_pb2.SettleResponse)]
    refused = sorted(o.code.name for o in outcomes if isinstance(o, MedsettleError))
    assert len(answers) == len(todo)
    assert refused == sorted(["INVALID_ARGUMENT"] * (len(bad) - 1) + ["NOT_FOUND"])
    # the settles shared batches: fewer commits than settles (the refusals' audit records
    # are written in the batches too)
    assert ops - ops_before >= len(burst)
    assert commits - commits_before < len(todo)
    # The business metrics count each batch's answers together (store/sqlite.py `_count`):
    # every settle once, its money per fund to the fen, the refusals by their codes.
    local = {"mode": "local", "role": "frontend"}

    def grew(name: str, **labels: str) -> float:
        return grown(counted_before, counted, name, **local, **labels)

    assert grew("medsettle_settlements_total", outcome="settled") == len(todo)
    assert grew("medsettle_settlements_total", outcome="INVALID_ARGUMENT") == len(bad) - 1
    assert grew("medsettle_settlements_total", outcome="NOT_FOUND") == 1
    paid = money_of(a.setlinfo for a in answers)
    for fund, fen in paid.items():
        assert grown(counted_before, counted, "medsettle_fund_paid_fen_total", fund=fund) == fen
    assert grown(counted_before, counted, "medsettle_fund_paid_fen_total") == sum(paid.values())
    conn = sqlite3.connect(frontend.db)
    try:  # a refused settle wrote nothing: its visit is open, with no settlement
        for mdtrt_id, _, _ in bad[:-1]:
            state = conn.execute(
                "SELECT state FROM visits WHERE mdtrt_id = ?", (mdtrt_id,)
            ).fetchone()
            assert state == ("registered",)
            assert conn.execute(
                "SELECT COUNT(*) FROM settlements WHERE mdtrt_id = ?", (mdtrt_id,)
            ).fetchone() == (0,)
    finally:
        conn.close()
    oracle.check_settled([a.setlinfo for a in answers], {t[0]: (t[2], t[3]) for t in todo})
    for key, acc in oracle.acc.items():
        assert _stored_acc(frontend.db, key) == acc, key


def test_cancels_share_batches_with_settles_and_give_back_what_each_settle_added(
    metered: tuple[LocalServer, int],
) -> None:
    """Cancels run in the ledger beside the settles (engine_rs/src/ledger/cancel.rs), in
    the same batches. A burst of new settles for some people, cancels of other people's
    latest settlements (one sent twice with one msgid), and cancels the ledger must refuse
    (not the person's latest, already cancelled, another visit's mdtrt_id): each settle
    equals the oracle's, each cancel takes back exactly what its settle added (the
    accumulators and the account balance), the retry gets the first answer's bytes, and a
    refused cancel writes nothing."""
    frontend, port = metered
    oracle = Oracle(frontend.db)
    c: MedsettleClient = client(frontend, INST_A, opter=ALL_ROLES)
    n = 0

    def visit(person: Any) -> tuple[str, list[settlement_pb2.FeeLine]]:
        nonlocal n
        n += 1
        v = c.register(
            person.psn_no,
            insutype=person.insutype,
            med_type=11,
            begndate=DAY,
            ipt_otp_no=f"X{n}",
            dise_codg=["I10"],
        )
        oracle.diagnoses[v.mdtrt_id] = ["I10"]
        ls = lines(2 + n % 9, seed=900 + n, inst=INST_A)
        c.upload_fees(v.mdtrt_id, ls)
        return v.mdtrt_id, ls

    def settle_now(person: Any, acct_used: bool) -> tuple[common_pb2.SetlInfo, Any]:
        mdtrt_id, ls = visit(person)
        want, key, after = oracle.settle(mdtrt_id, ls, acct_used)
        got = c.settle(mdtrt_id, person.psn_no, medfee_sumamt=total(ls), acct_used=acct_used)
        assert split_differences(got.setlinfo, want) == []
        oracle.added[got.setlinfo.setl_id] = {f: after[f] - oracle.acc[key][f] for f in ACC_FIELDS}
        oracle.acc[key] = after
        oracle.balc[person.psn_no] -= got.setlinfo.acct_pay
        return got.setlinfo, key

    with c:
        # before the burst: two settlements each for the people whose latest is cancelled in
        # it, and for the one whose earlier one is refused; one cancelled already
        latest = {p.psn_no: [settle_now(p, True), settle_now(p, True)] for p in (CHILD, CIVIL)}
        earlier, _ = settle_now(EMPLOYEE, False)
        settle_now(EMPLOYEE, False)
        gone, gone_key = settle_now(FILED, True)
        c.cancel_settlement(gone.setl_id)
        oracle.cancelled(gone.setl_id, gone_key, gone.acct_pay)
        other_visit, _ = visit(FILED)
        new = [(p, *visit(p), k % 2 == 0) for k, p in enumerate((RETIRED, SECOND_STAY) * 3)]
        retry = f"CANCEL-TWICE-{latest[CHILD.psn_no][1][0].setl_id}"
        cancels = [
            (latest[CHILD.psn_no][1][0].setl_id, "", retry),
            (latest[CHILD.psn_no][1][0].setl_id, "", retry),
            (latest[CIVIL.psn_no][1][0].setl_id, "", None),
        ]
        refused = [
            (earlier.setl_id, "", None),  # EMPLOYEE's later settlement relied on it
            (gone.setl_id, "", None),  # cancelled already
            (latest[CIVIL.psn_no][0][0].setl_id, other_visit, None),  # another visit's
        ]
        before_refused = {t: _stored_acc(frontend.db, t) for t in oracle.acc}

        def send(t: Any) -> Any:
            try:
                if len(t) == 3:
                    return c.cancel_settlement(t[0], mdtrt_id=t[1], msgid=t[2])
                person, mdtrt_id, ls, acct = t
                return c.settle(mdtrt_id, person.psn_no, medfee_sumamt=total(ls), acct_used=acct)
            except MedsettleError as exc:
                return exc

        commits_before, ops_before = _commit_batches(port)
        burst: list[Any] = [*new, *cancels, *refused]
        np.random.default_rng(11).shuffle(burst)
        outcomes = dict(zip(map(id, burst), _burst(frontend, port, send, burst), strict=True))
        commits, ops = _commit_batches(port)
    assert ops - ops_before >= len(burst)
    assert commits - commits_before < len(new) + len(cancels)  # they shared batches
    codes = [getattr(outcomes[id(t)], "code", None) for t in refused]
    assert [x.name if x else None for x in codes] == [
        "FAILED_PRECONDITION", "FAILED_PRECONDITION", "INVALID_ARGUMENT"
    ]  # fmt: skip
    first, again, civil = (outcomes[id(t)] for t in cancels)
    assert again.SerializeToString() == first.SerializeToString()
    for answer in (first, civil):
        info = answer.setlinfo
        assert info.state == common_pb2.CANCELLED and info.cancel_id
        key = next(k for s, k in latest[info.psn_no] if s.setl_id == info.setl_id)
        oracle.cancelled(info.setl_id, key, info.acct_pay)
    settled = [outcomes[id(t)].setlinfo for t in new]
    oracle.check_settled(settled, {t[1]: (t[2], t[3]) for t in new})
    for key, acc in oracle.acc.items():
        assert _stored_acc(frontend.db, key) == acc, key
    conn = sqlite3.connect(frontend.db)
    try:
        balances = dict(conn.execute("SELECT psn_no, balc FROM persons"))
        states = dict(conn.execute("SELECT setl_id, state FROM settlements"))
    finally:
        conn.close()
    assert {p: balances[p] for p in oracle.balc} == oracle.balc
    # the refused cancels wrote nothing: their settlements stand, EMPLOYEE's books as before
    assert states[earlier.setl_id] == states[latest[CIVIL.psn_no][0][0].setl_id] == 1
    for key, acc in before_refused.items():
        if key[0] == EMPLOYEE.psn_no:
            assert _stored_acc(frontend.db, key) == acc
