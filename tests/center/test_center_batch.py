"""Center mode's `SettleSummary` calls arriving together are settled in batches
(server/center/summaries.py); a center with `center_settle_batch = 1` settles each alone
(server/center/settle.py `settle_summary`, the one-call path). The same calls, sent at once
to the first and one after another, in the order the first settled them, to the second, get
the same answers to the fen and byte (the settlement time aside) and leave the same ledger:
several settlements of one person (each sees the ones before it: the deductible and the
account balance), retries in the same wave (one settles, one replays) and in a later one,
a msgid reused for another request, a setl_id reused, a visit settled twice, an unknown
person, an unknown policy version and a wrong insutype."""

from __future__ import annotations

import itertools
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from medsettle.v1 import center_pb2, center_pb2_grpc
from server.demo.localserver import LocalServer, free_port
from tests.center.test_center import in_scope, request
from tests.harness import CIVIL, EMPLOYEE, RETIRED
from tests.pg import center_server, fresh_database
from tests.security.test_audit import verify

pytestmark = pytest.mark.pg

Wave = list[center_pb2.CenterSettleRequest]
Outcome = tuple[str, Any]  # ("ok", response without its time) or (status code name, details)
LEDGER = {
    "settlements": "setl_id, node_id, fixmedins_code, mdtrt_id, psn_no, insutype, clr_type,"
    " msgid, invono, state, mode, offline, medfee_sumamt, fund_pay_sumamt, acct_pay,"
    " psn_cash_pay, acc_year, acc_pool, acc_delta",
    "setl_legs": "*",
    "accumulators": "*",
    "persons": "psn_no, balc",
    "idempotency": "fixmedins_code, msgid, method, req_hash, ref",
    # the records of settles and replays (refusals are written apart, rate-limited)
    "audit WHERE outcome IN ('OK', 'REPLAY')": "fixmedins_code, rpc, objects, outcome",
}


def waves() -> tuple[Wave, Wave]:
    sizes = itertools.cycle([40_000, 180_000, 9_999, 600_000, 1])
    first = [
        request(p, in_scope(next(sizes)), med_type=mt, acct=acct)
        for p in (RETIRED, EMPLOYEE, CIVIL)
        for mt, acct in ((11, True), (11, False), (21, True), (11, True), (21, False))
    ]
    nobody = request(RETIRED, in_scope(1_000))
    nobody.psn_no = "NO-SUCH-PERSON"
    first += [nobody, request(EMPLOYEE, in_scope(1_000), policy_version=1)]
    wrong = request(CIVIL, in_scope(1_000))
    wrong.insutype = 390
    first.append(wrong)
    second = [first[i] for i in (0, 4, 7)]  # retries: the stored answers
    other = center_pb2.CenterSettleRequest()
    other.CopyFrom(first[1])
    other.summary.medfee_sumamt += 1
    other.summary.inscp_scp_amt += 1
    reused = request(RETIRED, in_scope(1_000))
    reused.setl_id = first[2].setl_id
    twice = request(EMPLOYEE, in_scope(1_000))
    twice.mdtrt_id = first[6].mdtrt_id
    second += [other, reused, twice]
    fresh = [request(p, in_scope(next(sizes)), acct=True) for p in (RETIRED, EMPLOYEE, CIVIL)]
    second += fresh + fresh  # each sent twice at once: one settles, the other replays it
    # Two new calls for one visit, two for one setl_id, at once: one settles, one is refused.
    rival = request(RETIRED, in_scope(2_000))
    rival.mdtrt_id = fresh[0].mdtrt_id
    clash = request(EMPLOYEE, in_scope(2_000))
    clash.setl_id = fresh[1].setl_id
    second += [rival, clash]
    return first, second


def outcome_of(stub: center_pb2_grpc.CenterStub, req: center_pb2.CenterSettleRequest) -> Outcome:
    try:
        resp = stub.SettleSummary(req, timeout=60)
    except grpc.RpcError as err:
        return (err.code().name, err.details())
    resp.setlinfo.ClearField("setl_time")
    return ("ok", resp.SerializeToString())


def at_once(target: str, reqs: list[center_pb2.CenterSettleRequest]) -> list[Outcome]:
    """Every call in flight together (a barrier lets them go at once)."""
    gate = threading.Barrier(len(reqs))
    with grpc.insecure_channel(target) as ch:
        stub = center_pb2_grpc.CenterStub(ch)

        def go(req: center_pb2.CenterSettleRequest) -> Outcome:
            gate.wait()
            return outcome_of(stub, req)

        with ThreadPoolExecutor(len(reqs)) as pool:
            return list(pool.map(go, reqs))


def in_one_call(target: str, reqs: list[center_pb2.CenterSettleRequest]) -> list[Outcome]:
    """The calls as one SettleSummaries call (a front-end's batch), each item's outcome."""
    h = reqs[0].header
    batch = center_pb2.CenterSettleBatch(
        header=center_pb2.NodeHeader(node_id=h.node_id, fixmedins_code=h.fixmedins_code),
        calls=reqs,
    )
    with grpc.insecure_channel(target) as ch:
        resp = center_pb2_grpc.CenterStub(ch).SettleSummaries(batch, timeout=60)
    out: list[Outcome] = []
    for o in resp.outcomes:
        if o.code:
            out.append((_NAMES[o.code], o.message))
        else:
            o.answer.setlinfo.ClearField("setl_time")
            out.append(("ok", o.answer.SerializeToString()))
    return out


_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def one_by_one(target: str, reqs: list[center_pb2.CenterSettleRequest]) -> list[Outcome]:
    with grpc.insecure_channel(target) as ch:
        stub = center_pb2_grpc.CenterStub(ch)
        return [outcome_of(stub, r) for r in reqs]


def settled_order(dsn: str) -> list[str]:
    """The msgids of the settles in the order the center recorded them (its audit chain
    names the setl_id; the settlement, the msgid that settled it)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT objects FROM audit WHERE rpc = '/medsettle.v1.Center/SettleSummary'"
            " AND outcome IN ('OK', 'REPLAY') ORDER BY seq"
        ).fetchall()
        msgid: dict[str, str] = dict(
            conn.execute("SELECT setl_id, msgid FROM settlements").fetchall()
        )
    out: list[str] = []
    for (objects,) in rows:
        setl = dict(o.split("=", 1) for o in objects.split(";"))["setl_id"]
        if msgid[setl] not in out:
            out.append(msgid[setl])
    return out


def in_order(reqs: Wave, order: list[str]) -> Wave:
    """The requests in the order their msgids settled; the others (refused) after them."""
    rank = {m: i for i, m in enumerate(order)}
    return sorted(reqs, key=lambda r: rank.get(r.header.msgid, len(rank)))


def ledger(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        return {
            t: sorted(repr(r) for r in conn.execute(f"SELECT {cols} FROM {t}").fetchall())
            for t, cols in LEDGER.items()
        }


def batch_sizes(port: int) -> tuple[float, float, float]:
    """(batches, calls in them, batches that failed whole) of the center's SettleSummary
    batches so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("medsettle_center_settle_batch_calls_"):
            got[name.removeprefix("medsettle_center_settle_batch_calls_")] = float(value)
        if name == "medsettle_center_settle_batch_fallbacks_total":
            got["fallbacks"] = float(value)
    return got["count"], got["sum"], got["fallbacks"]


def business(port: int) -> dict[str, float]:
    """The center's settles counted and their amounts (medsettle_settlements_total and
    medsettle_fund_paid_fen_total, every label)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    wanted = ("medsettle_settlements_total{", "medsettle_fund_paid_fen_total{")
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith(wanted)
    }


def run(
    tmp: Path,
    dsn: str,
    batch: int,
    waves: tuple[Wave, Wave],
    send: Callable[[str, Wave], list[Outcome]],
) -> tuple[list[Outcome], list[Outcome], tuple[float, float, float], dict[str, float]]:
    mport = free_port()
    server = LocalServer(
        dsn,
        extra=["--role", "center", "--metrics-port", str(mport)],
        env={"MEDSETTLE_CENTER_SETTLE_BATCH": str(batch)},
        log=tmp / f"center-batch-{batch}.log",
    ).start()
    try:
        first, second = waves
        got1 = send(server.target, first)
        got2 = send(server.target, second)
        sizes = batch_sizes(mport)
        counted = business(mport)
    finally:
        server.stop()
    # the batches took their chains' heads with their reads: the chains are whole
    chains = verify(dsn, "--key-file", str(server.center_key_file()))
    assert chains.returncode == 0, chains.stdout + chains.stderr
    return got1, got2, sizes, counted


def test_calls_settled_together_answer_as_one_after_another(tmp_path: Path) -> None:
    first, second = waves()
    with fresh_database() as batched_dsn, fresh_database() as alone_dsn:
        together = run(tmp_path, batched_dsn, 256, (first, second), at_once)
        batches, calls, fallbacks = together[2]
        assert fallbacks == 0  # one worker: no batch met another's commit
        assert calls == len(first) + len(second)  # every call went through a batch
        assert batches < calls  # and calls were settled together, not each alone
        order = settled_order(batched_dsn)

        def sequential(target: str, reqs: Wave) -> list[Outcome]:
            ordered = in_order(reqs, order)
            got = dict(zip(map(id, ordered), one_by_one(target, ordered), strict=True))
            return [got[id(r)] for r in reqs]

        alone = run(tmp_path, alone_dsn, 1, (first, second), sequential)
        assert alone[2] == (0.0, 0.0, 0.0)  # the one-call path: no batch at all
        for wave in (0, 1):
            for i, (a, b) in enumerate(zip(together[wave], alone[wave], strict=True)):
                assert a == b, (wave, i)
        codes = [o[0] for o in together[0] + together[1]]
        # 15 settles and 3 retries of the first wave; of the second, the 3 new calls twice
        # each, except where a rival (same visit or setl_id, sent at once) got there first
        assert 15 + 3 + 4 <= codes.count("ok") <= 15 + 3 + 6
        assert {"NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "ALREADY_EXISTS"} <= set(
            codes
        )
        assert ledger(batched_dsn) == ledger(alone_dsn)


def test_a_settle_batch_call_answers_as_its_calls_one_after_another(tmp_path: Path) -> None:
    """Each wave as one SettleSummaries call (what a center-mode front-end sends): every
    item's outcome is what SettleSummary answers it alone, in order, on a center settling
    each call alone, and the two ledgers are the same."""
    first, second = waves()
    with fresh_database() as batched_dsn, fresh_database() as alone_dsn:
        together = run(tmp_path, batched_dsn, 256, (first, second), in_one_call)
        batches, calls, fallbacks = together[2]
        assert (calls, fallbacks) == (len(first) + len(second), 0)
        assert batches <= 4  # each call's items settled together (a held retry: the next)
        alone = run(tmp_path, alone_dsn, 1, (first, second), one_by_one)
        assert together[:2] == alone[:2]
        # the batch's settles counted once a label: the same counts and amounts as alone
        assert together[3] == alone[3]
        codes = [o[0] for o in together[0] + together[1]]
        # the retries sent with their first try in one call are held for the next batch
        # and replay it; a rival of a visit or setl_id settled earlier in the call is refused
        assert codes.count("ok") == 15 + 3 + 6
        counted = together[3]
        settled = sum(v for k, v in counted.items() if 'outcome="settled"' in k)
        replayed = sum(v for k, v in counted.items() if 'outcome="replayed"' in k)
        assert settled + replayed == codes.count("ok") and settled > 0 and replayed > 0
        assert any(k.startswith("medsettle_fund_paid_fen_total{") for k in counted)
        assert ledger(batched_dsn) == ledger(alone_dsn)


def test_a_batch_failing_whole_settles_each_call_alone(pg_dsn: str, tmp_path: Path) -> None:
    """Two center processes taking retries of the same new calls at once: a batch that meets
    another's commit (the same msgid or visit) fails whole; each of its calls runs alone and
    gets its own answer; nothing is settled twice."""
    reqs = [request(p, in_scope(10_000)) for p in (RETIRED, EMPLOYEE, CIVIL) for _ in range(8)]
    server = center_server(pg_dsn, tmp_path, workers=2).start()
    try:
        got = at_once(server.target, reqs * 3)
    finally:
        server.stop()
    assert all(o[0] == "ok" for o in got), {o[0] for o in got}
    by_msgid: dict[str, set[Any]] = {}
    for r, o in zip(reqs * 3, got, strict=True):
        by_msgid.setdefault(r.header.msgid, set()).add(o[1])
    assert all(len(answers) == 1 for answers in by_msgid.values())  # replays: the same bytes
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute("SELECT COUNT(*) FROM settlements").fetchone()
        acc = conn.execute(
            "SELECT psn_no, inpatient_count FROM accumulators WHERE opening = 0 ORDER BY psn_no"
        ).fetchall()
    assert n == (len(reqs),)
    assert all(count == 8 for _, count in acc)  # each person's eight stays, once each
