"""`kill -9` of the server many times during a settle load: after restart every acknowledged
settlement is there, none is partial, and the accumulators equal a recomputation from the
ledger.

One SQLite file lives through several rounds. Each round starts a server over it (one
worker in even rounds, two worker processes in odd ones), prepares visits (outpatient
med_type 11 and inpatient med_type 21 stays, several persons and hospitals; an inpatient
stay only where the person has no open one at that hospital), and lets a few driver
threads settle them -- each Settle with its own msgid, on its own connection, and when the
prepared visits run out a driver registers, uploads and settles fresh ones. After a random
0.2-1.0 s the whole process group gets SIGKILL. A Settle that answered OK is *acknowledged*
(its msgid, setl_id and the exact response bytes are kept); one that was in flight at the
kill is *unknown*.

After every restart (and once more at the end):

- every acknowledged settlement is stored, state 1, with the info it was acknowledged with,
  and a retry of its msgid answers byte for byte what was acknowledged;
- every unknown Settle is either fully there or fully absent, and a retry of its msgid
  settles it exactly once (a second retry answers the same bytes);
- every settlement has its fund legs, one line result per line (= line_count), its
  idempotency row, its outbox row, and its visit in state 'settled'; nothing points at a
  settlement that does not exist;
- per person, year and pool: current accumulators = opening row (or zeros) + the deltas of
  the settled settlements; per person: balc = opening_balc - their account payments;
- `PRAGMA integrity_check` is ok.
"""

from __future__ import annotations

import json
import queue
import random
import sqlite3
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.sdk import MedsettleClient
from medsettle.v1 import common_pb2, settlement_pb2
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from server.frontend.store import line_results
from server.security import datakeys
from server.security.pii import Vault
from tests.harness import (
    ACC_FIELDS,
    ALL_ROLES,
    DAY,
    INST_A,
    INST_B,
    INST_FAR,
    SECOND_STAY,
    client,
    lines,
    total,
)

ROUNDS = 6
DRIVERS = 5
LINES_PER_VISIT = 10
OUTPATIENT_POOL = 40  # prepared outpatient visits per round (drivers make more themselves)
INSTITUTIONS = (INST_A, INST_B, INST_FAR)
SETTLE = "/medsettle.v1.Settlement/Settle"
OPTER = ALL_ROLES  # the operator `client` signs in
SAFETY_S = 30.0
# The named demo persons (employees, residents, a second stay with opening accumulators,
# a civil servant, ...) and some of the crowd: employees and residents of 440100.
PERSONS = demo_data.persons()[:8] + demo_data.persons()[8:28]
assert SECOND_STAY in PERSONS


def new_msgid() -> str:
    return "K" + uuid.uuid4().hex


@dataclass(frozen=True)
class Visit:
    inst: str
    psn_no: str
    mdtrt_id: str
    amount: int
    inpatient: bool
    acct_used: bool


@dataclass
class Attempt:
    visit: Visit
    request: settlement_pb2.SettleRequest  # as sent (the sign_no may change on a retry)


@dataclass
class Ack:
    attempt: Attempt
    setl_id: str
    response: bytes  # exactly what the server answered


@dataclass
class Book:
    """What the test knows across rounds."""

    pool: list[Visit] = field(default_factory=list)  # prepared, not yet settled
    open_stays: set[tuple[str, str]] = field(default_factory=set)  # (psn_no, inst)
    acked: dict[str, Ack] = field(default_factory=dict)  # by msgid
    unknown: list[Attempt] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unknown_total: int = 0
    unknown_present: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def raw_settle(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable[Any, bytes]:
    """Settle with the response left as bytes: what is compared byte for byte."""
    return channel.unary_unary(
        SETTLE,
        request_serializer=settlement_pb2.SettleRequest.SerializeToString,
        response_deserializer=None,
    )


def own_channel(server: LocalServer) -> grpc.Channel:
    return grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])


def settle_request(v: Visit, sign_no: str, msgid: str) -> settlement_pb2.SettleRequest:
    return settlement_pb2.SettleRequest(
        header=common_pb2.RequestHeader(
            msgid=msgid, fixmedins_code=v.inst, opter=OPTER, sign_no=sign_no
        ),
        mdtrt_id=v.mdtrt_id,
        psn_no=v.psn_no,
        medfee_sumamt=v.amount,
        acct_used_flag=v.acct_used,
    )


def with_sign_no(req: settlement_pb2.SettleRequest, sign_no: str) -> settlement_pb2.SettleRequest:
    again = settlement_pb2.SettleRequest()
    again.CopyFrom(req)
    again.header.sign_no = sign_no
    return again


def make_visit(
    c: MedsettleClient, psn: Any, *, inpatient: bool, seed: int, acct_used: bool
) -> Visit:
    v = c.register(
        psn.psn_no,
        insutype=psn.insutype,
        med_type=21 if inpatient else 11,
        begndate=DAY,
        ipt_otp_no=f"{'ZY' if inpatient else 'MZ'}{seed:07d}",
        dise_codg=["I21.9" if inpatient else "J06.9"],
        msgid=new_msgid(),
    )
    ls = lines(LINES_PER_VISIT, seed=seed, inst=c.fixmedins_code)
    c.upload_fees(v.mdtrt_id, ls, msgid=new_msgid())
    return Visit(c.fixmedins_code, psn.psn_no, v.mdtrt_id, total(ls), inpatient, acct_used)


# ---------------------------------------------------------------------------- the ledger
def vault_of(db: str | Path) -> Vault:
    """The front-end's own data key, beside its database: stored records are sealed."""
    return Vault(datakeys.load("", str(db) + ".key"))


def answer(vault: Vault, code: str, msgid: str, stored: bytes) -> bytes:
    """A stored answer, opened (a reversal's marker row has none)."""
    return vault.open_answer(code, msgid, stored) if stored else stored


def ledger_problems(db: str | Path) -> list[str]:
    """Everything that makes the stored ledger inconsistent (empty when it is whole)."""
    problems: list[str] = []
    conn = sqlite3.connect(db)
    try:
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        setls = conn.execute(
            "SELECT setl_id, fixmedins_code, mdtrt_id, visit_id, psn_no, msgid, state,"
            " medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, acc_year, acc_pool,"
            " acc_delta, info FROM settlements"
        ).fetchall()
        legs: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
        for sid, kind, base, amount in conn.execute("SELECT * FROM setl_legs"):
            legs[sid].add((kind, base, amount))
        line_counts = {
            sid: len(line_results.decode(blob))
            for sid, blob in conn.execute("SELECT setl_id, line_results FROM settlements")
        }
        vault = vault_of(db)
        idem = {
            (r[0], r[1]): (r[2], answer(vault, r[0], r[1], bytes(r[3])), r[4])
            for r in conn.execute(
                "SELECT fixmedins_code, msgid, method, response, ref FROM idempotency"
            )
        }
        outbox: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for kind, ref, payload in conn.execute("SELECT kind, ref, payload FROM outbox"):
            outbox[ref].append((kind, bytes(payload)))
        visits = {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT v.id, v.mdtrt_id, v.state,"
                " (SELECT COUNT(*) FROM fee_lines f WHERE f.visit_id = v.id) FROM visits v"
            )
        }
        ids = {s[0] for s in setls}
        settled_per_visit: Counter[int] = Counter()
        for (
            setl_id,
            inst,
            mdtrt_id,
            visit_id,
            psn_no,
            msgid,
            state,
            medfee,
            fund,
            acct,
            cash,
            _year,
            _pool,
            _delta,
            blob,
        ) in setls:
            where = f"settlement {setl_id}"
            info = common_pb2.SetlInfo.FromString(vault.open_setlinfo(setl_id, blob))
            if (info.setl_id, info.mdtrt_id, info.psn_no, info.msgid) != (
                setl_id,
                mdtrt_id,
                psn_no,
                msgid,
            ):
                problems.append(f"{where}: stored info names another settlement")
            if (info.medfee_sumamt, info.fund_pay_sumamt, info.acct_pay, info.psn_cash_pay) != (
                medfee,
                fund,
                acct,
                cash,
            ):
                problems.append(f"{where}: amount columns differ from the stored info")
            want_legs = {(g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt) for g in info.setldetail}
            if not want_legs or legs.get(setl_id, set()) != want_legs:
                problems.append(f"{where}: legs {legs.get(setl_id)} != info {want_legs}")
            visit = visits.get(visit_id)
            if visit is None or visit[0] != mdtrt_id:
                problems.append(f"{where}: its visit {mdtrt_id} is missing")
                continue
            if not info.line_count or line_counts.get(setl_id, 0) != info.line_count:
                problems.append(
                    f"{where}: {line_counts.get(setl_id, 0)} line results,"
                    f" line_count {info.line_count}"
                )
            if visit[2] != info.line_count:
                problems.append(f"{where}: visit has {visit[2]} lines, info {info.line_count}")
            row = idem.get((inst, msgid))
            if row is None or row[0] != "Settle" or row[2] != setl_id:
                problems.append(f"{where}: idempotency row {row and row[::2]}")
            elif settlement_pb2.SettleResponse.FromString(row[1]).setlinfo != info:
                problems.append(f"{where}: idempotency response differs from the stored info")
            settles = [p for k, p in outbox.get(setl_id, []) if k == "settle"]
            if len(settles) != 1:  # the forwarder sends `settlements.info` itself
                problems.append(f"{where}: {len(settles)} outbox 'settle' rows")
            if state == common_pb2.SETTLED:
                settled_per_visit[visit_id] += 1
                if visit[1] != "settled":
                    problems.append(f"{where}: settled but its visit is {visit[1]}")
            elif state != common_pb2.CANCELLED:
                problems.append(f"{where}: state {state}")
        for vid, (mdtrt_id, vstate, _) in visits.items():
            n = settled_per_visit.get(vid, 0)
            if (vstate == "settled") != (n == 1) or n > 1:
                problems.append(f"visit {mdtrt_id}: state {vstate} with {n} live settlements")
        for table, refs in (
            ("setl_legs", set(legs)),
            ("outbox", set(outbox)),
            (
                "idempotency (Settle)",
                {r[2] for r in idem.values() if r[0] == "Settle"},
            ),
        ):
            if refs - ids:
                problems.append(f"{table}: rows of missing settlements {sorted(refs - ids)[:5]}")
        problems += accumulator_problems(conn)
    finally:
        conn.close()
    return problems


def accumulator_problems(conn: sqlite3.Connection) -> list[str]:
    """current = opening (or zeros) + sum of the live settlements' deltas; balc likewise."""
    problems: list[str] = []
    cols = ", ".join(ACC_FIELDS)
    opening: dict[tuple[str, int, str], tuple[int, ...]] = {}
    current: dict[tuple[str, int, str], tuple[int, ...]] = {}
    for psn, year, pool, is_opening, *vals in conn.execute(
        f"SELECT psn_no, year, pool, opening, {cols} FROM accumulators"
    ):
        (opening if is_opening else current)[(psn, year, pool)] = tuple(vals)
    sums: dict[tuple[str, int, str], list[int]] = defaultdict(lambda: [0] * len(ACC_FIELDS))
    for psn, year, pool, delta in conn.execute(
        "SELECT psn_no, acc_year, acc_pool, acc_delta FROM settlements WHERE state = 1"
    ):
        d = json.loads(delta)
        acc = sums[(psn, year, pool)]
        for i, f in enumerate(ACC_FIELDS):
            acc[i] += d[f]
    for key in set(opening) | set(current) | set(sums):
        base = opening.get(key, (0,) * len(ACC_FIELDS))
        expected = tuple(b + s for b, s in zip(base, sums.get(key, [0] * 8), strict=True))
        got = current.get(key, base)
        if got != expected:
            problems.append(f"accumulators {key}: {got} != opening {base} + deltas")
    for psn, balc, opening_balc, paid in conn.execute(
        "SELECT p.psn_no, p.balc, p.opening_balc, (SELECT COALESCE(SUM(s.acct_pay), 0)"
        " FROM settlements s WHERE s.psn_no = p.psn_no AND s.state = 1) FROM persons p"
    ):
        if balc != opening_balc - paid or balc < 0:
            problems.append(f"person {psn}: balc {balc} != {opening_balc} - {paid}")
    return problems


def ack_problems(db: str | Path, acked: dict[str, Ack]) -> list[str]:
    """Every acknowledged settlement is stored as acknowledged."""
    problems: list[str] = []
    conn = sqlite3.connect(db)
    try:
        vault = vault_of(db)
        rows = {
            r[0]: (r[1], r[2], vault.open_setlinfo(r[0], bytes(r[3])))
            for r in conn.execute("SELECT setl_id, msgid, state, info FROM settlements")
        }
        idem = {
            (r[0], r[1]): answer(vault, r[0], r[1], bytes(r[2]))
            for r in conn.execute("SELECT fixmedins_code, msgid, response FROM idempotency")
        }
    finally:
        conn.close()
    for msgid, ack in acked.items():
        row = rows.get(ack.setl_id)
        if row is None:
            problems.append(f"acknowledged {ack.setl_id} ({msgid}) is missing")
            continue
        if row[0] != msgid or row[1] != common_pb2.SETTLED:
            problems.append(f"acknowledged {ack.setl_id}: msgid {row[0]}, state {row[1]}")
        answered = settlement_pb2.SettleResponse.FromString(ack.response).setlinfo
        if common_pb2.SetlInfo.FromString(row[2]) != answered:
            problems.append(f"acknowledged {ack.setl_id}: stored info differs from the answer")
        if idem.get((ack.attempt.visit.inst, msgid)) != ack.response:
            problems.append(f"acknowledged {ack.setl_id}: idempotency bytes differ")
    return problems


# ---------------------------------------------------------------------------- one round
class Round:
    def __init__(self, server: LocalServer, book: Book, rng: random.Random, n: int) -> None:
        self.server = server
        self.book = book
        self.rng = rng
        self.n = n
        self.sign_no: dict[str, str] = {}
        for inst in INSTITUTIONS:
            c = client(server, inst)
            self.sign_no[inst] = c.sign_no
            c.close()
        self.killed = threading.Event()
        self.todo: queue.SimpleQueue[Visit] = queue.SimpleQueue()
        self.seq = 0
        self.seq_lock = threading.Lock()

    def next_seed(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.n * 100_000 + self.seq

    def resolve_unknown(self, settle: grpc.UnaryUnaryMultiCallable[Any, bytes]) -> None:
        """The Settles in flight at the last kill: all there or absent; a retry settles
        each exactly once."""
        book = self.book
        conn = sqlite3.connect(self.server.db)
        try:
            for att in book.unknown:
                v, msgid = att.visit, att.request.header.msgid
                idem = conn.execute(
                    "SELECT method, response, ref FROM idempotency"
                    " WHERE fixmedins_code = ? AND msgid = ?",
                    (v.inst, msgid),
                ).fetchone()
                setls = conn.execute(
                    "SELECT setl_id, state FROM settlements WHERE msgid = ?", (msgid,)
                ).fetchall()
                (vstate,) = conn.execute(
                    "SELECT state FROM visits WHERE mdtrt_id = ?", (v.mdtrt_id,)
                ).fetchone()
                present = idem is not None
                if present:
                    book.unknown_present += 1
                    assert idem[0] == "Settle", idem
                    assert setls == [(idem[2], common_pb2.SETTLED)], (msgid, setls)
                    assert vstate == "settled", (v.mdtrt_id, vstate)
                else:
                    assert setls == [], f"{msgid}: settlement without idempotency row {setls}"
                    assert vstate == "registered", (v.mdtrt_id, vstate)
                req = with_sign_no(att.request, self.sign_no[v.inst])
                first = settle(req, timeout=SAFETY_S)
                if present:
                    stored = answer(vault_of(self.server.db), v.inst, msgid, bytes(idem[1]))
                    assert first == stored, f"{msgid}: retry answered other bytes"
                again = settle(req, timeout=SAFETY_S)
                assert again == first, f"{msgid}: second retry answered other bytes"
                info = settlement_pb2.SettleResponse.FromString(first).setlinfo
                rows = conn.execute(
                    "SELECT s.setl_id, s.msgid, s.state FROM settlements s WHERE s.mdtrt_id = ?",
                    (v.mdtrt_id,),
                ).fetchall()
                assert rows == [(info.setl_id, msgid, common_pb2.SETTLED)], (msgid, rows)
                book.acked[msgid] = Ack(att, info.setl_id, first)
                if v.inpatient:
                    book.open_stays.discard((v.psn_no, v.inst))
        finally:
            conn.close()
        book.unknown = []

    def replay_acked(self, channel: grpc.Channel, msgids: list[str]) -> None:
        """A retry of an acknowledged Settle answers the acknowledged bytes."""
        settle = raw_settle(channel)
        for msgid in msgids:
            ack = self.book.acked[msgid]
            req = with_sign_no(ack.attempt.request, self.sign_no[ack.attempt.visit.inst])
            assert settle(req, timeout=SAFETY_S) == ack.response, f"{msgid}: replay differs"

    def prepare(self) -> None:
        """Inpatient stays wherever a person has none open, and some outpatient visits."""
        book = self.book
        clients = {inst: client(self.server, inst) for inst in INSTITUTIONS}
        try:
            for psn in PERSONS:
                for inst in INSTITUTIONS:
                    if (psn.psn_no, inst) in book.open_stays or self.rng.random() < 0.5:
                        continue
                    v = make_visit(
                        clients[inst],
                        psn,
                        inpatient=True,
                        seed=self.next_seed(),
                        acct_used=self.rng.random() < 0.5,
                    )
                    book.open_stays.add((psn.psn_no, inst))
                    book.pool.append(v)
            for _ in range(OUTPATIENT_POOL):
                inst = self.rng.choice(INSTITUTIONS)
                book.pool.append(
                    make_visit(
                        clients[inst],
                        self.rng.choice(PERSONS),
                        inpatient=False,
                        seed=self.next_seed(),
                        acct_used=self.rng.random() < 0.5,
                    )
                )
        finally:
            for c in clients.values():
                c.close()
        self.rng.shuffle(book.pool)
        for v in book.pool:
            self.todo.put(v)
        book.pool = []

    def drive(self, k: int) -> None:
        """Settle prepared visits; when none are left, register, upload and settle new
        outpatient visits. Stops at the kill."""
        book = self.book
        rng = random.Random(self.n * 1000 + k)
        channel = own_channel(self.server)
        settle = raw_settle(channel)
        clients = {
            inst: MedsettleClient(
                self.server.target, fixmedins_code=inst, opter=OPTER, retries=0, channel=channel
            )
            for inst in INSTITUTIONS
        }
        for inst, c in clients.items():
            c.sign_no = self.sign_no[inst]
        try:
            while not self.killed.is_set():
                try:
                    v = self.todo.get_nowait()
                except queue.Empty:
                    try:
                        inst = rng.choice(INSTITUTIONS)
                        v = make_visit(
                            clients[inst],
                            rng.choice(PERSONS),
                            inpatient=False,
                            seed=self.next_seed(),
                            acct_used=rng.random() < 0.5,
                        )
                    except Exception as exc:  # the kill; else a failure
                        if not self.killed.is_set():
                            with book.lock:
                                book.failures.append(f"preparing a visit: {exc}")
                        return
                req = settle_request(v, self.sign_no[v.inst], new_msgid())
                att = Attempt(v, req)
                try:
                    resp = settle(req, timeout=SAFETY_S)
                except grpc.RpcError as err:
                    with book.lock:
                        if self.killed.is_set():
                            book.unknown.append(att)
                            book.unknown_total += 1
                        else:
                            book.failures.append(f"Settle {v}: {err}")
                    return
                info = settlement_pb2.SettleResponse.FromString(resp).setlinfo
                with book.lock:
                    book.acked[req.header.msgid] = Ack(att, info.setl_id, resp)
                    if v.inpatient:
                        book.open_stays.discard((v.psn_no, v.inst))
        finally:
            channel.close()

    def load_and_kill(self) -> None:
        threads = [threading.Thread(target=self.drive, args=(k,)) for k in range(DRIVERS)]
        for t in threads:
            t.start()
        self.killed.wait(self.rng.uniform(0.2, 1.0))  # the load runs meanwhile
        self.killed.set()
        self.server.kill()
        for t in threads:
            t.join(SAFETY_S)
        assert not any(t.is_alive() for t in threads), "a driver never returned"
        while True:
            try:
                self.book.pool.append(self.todo.get_nowait())
            except queue.Empty:
                break


def restart_and_check(db: Path, n: int, book: Book, log: Path) -> tuple[LocalServer, Round]:
    """Start a server over the file, resolve the unknown Settles, check the whole ledger."""
    server = LocalServer(db, workers=1 + n % 2, log=log).start()
    rnd = Round(server, book, random.Random(n), n)
    with own_channel(server) as ch:
        rnd.resolve_unknown(raw_settle(ch))
    assert not (problems := ack_problems(db, book.acked)), problems[:10]
    assert not (problems := ledger_problems(db)), problems[:10]
    return server, rnd


@pytest.fixture
def book() -> Iterator[Book]:
    b = Book()
    yield b
    assert not b.failures, b.failures[:5]


def test_kill_9_during_settle_load_loses_nothing_acknowledged(tmp_path: Path, book: Book) -> None:
    db = tmp_path / "frontend.db"
    log = tmp_path / "server.log"
    server: LocalServer | None = None
    try:
        for n in range(ROUNDS):
            server, rnd = restart_and_check(db, n, book, log)
            # Retries of what was acknowledged before the kills answer the same bytes.
            acked = sorted(book.acked)
            with own_channel(server) as ch:
                rnd.replay_acked(ch, rnd.rng.sample(acked, min(100, len(acked))))
            rnd.prepare()
            rnd.load_and_kill()
            assert not book.failures, book.failures[:5]
            server = None
        # The last restart: everything once more, and every acknowledged msgid replayed.
        server, rnd = restart_and_check(db, ROUNDS, book, log)
        msgids = list(book.acked)
        errors: list[BaseException] = []

        def replay(part: list[str]) -> None:
            assert server is not None
            with own_channel(server) as ch:
                try:
                    rnd.replay_acked(ch, part)
                except BaseException as exc:  # reported below
                    errors.append(exc)

        threads = [threading.Thread(target=replay, args=(msgids[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SAFETY_S * 4)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:3]
        assert server.stop() == 0
        server = None
        assert not (problems := ledger_problems(db)), problems[:10]
        assert not (problems := ack_problems(db, book.acked)), problems[:10]
    finally:
        if server is not None:
            server.kill()
    # The load was real: many acknowledged settlements, and calls caught in flight.
    assert len(book.acked) >= ROUNDS * 20, len(book.acked)
    assert book.unknown_total >= 1, "no Settle was ever in flight at a kill"
    conn = sqlite3.connect(db)
    try:
        kinds = dict(
            conn.execute(
                "SELECT clr_type, COUNT(*) FROM settlements WHERE state = 1 GROUP BY clr_type"
            ).fetchall()
        )
    finally:
        conn.close()
    assert kinds.get(11, 0) > 0 and kinds.get(21, 0) > 0, kinds
    print(
        f"{len(book.acked)} settled, {book.unknown_total} in flight at a kill"
        f" ({book.unknown_present} of them had committed)"
    )
