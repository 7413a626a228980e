"""Trust between front-ends and the center (issue 13, points 1 and 2), on real servers over
PostgreSQL: a second front-end machine under a node id another one holds is stopped with a
clear error, and nothing of it is lost or recorded at the center; front-ends of two
institutions with the default node id both reach the center; under mutual TLS a forged
forward (a negative account debit, a person the center does not know, money that does not
split again the same, another institution's ids) is REJECTED and changes nothing at the
center, while an honest one is applied, replayed as a DUPLICATE, and the same id with other
content is a CONFLICT."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from medsettle.v1 import center_pb2, center_pb2_grpc
from server.demo.localserver import LocalServer
from server.frontend.store.sqlite import Store
from server.nodes import instance_file
from server.security import certs
from tests.center.test_center import in_scope as summary_in_scope
from tests.center.test_center import request as summary_request
from tests.frontend.test_forwarding import center_set, front_set, pending_all, unsent, wait_for
from tests.harness import CIVIL, EMPLOYEE, INST_A, INST_B, RETIRED, admit, client, total
from tests.pg import center_server
from tests.security.test_tls import files, tls_flags

pytestmark = pytest.mark.pg

# The center's tables a forwarded item may change (its audit trail aside).
LEDGER = ("settlements", "setl_legs", "accumulators", "accumulator_differences", "persons")


def center_rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in LEDGER}


def forwarding_front(center: LocalServer, db: Path) -> LocalServer:
    return LocalServer(
        db,
        extra=["--center-target", center.target],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "2"},
        log=db.with_suffix(".log"),
    )


def settle_one(front: LocalServer, inst: str, psn: Any, seed: int) -> str:
    c = client(front, inst)
    mdtrt_id, ls = admit(c, psn, n_lines=6, seed=seed, med_type=11)
    return c.settle(mdtrt_id, psn.psn_no, medfee_sumamt=total(ls), acct_used=True).setlinfo.setl_id


def stopped(front: LocalServer) -> int:
    """Wait until the front-end stops by itself; its exit code."""
    wait_for(lambda: front.proc is not None and front.proc.poll() is not None, "it to stop")
    return front.stop()


@pytest.mark.parametrize("machine", ["own instance", "copied database directory"])
def test_a_second_front_end_under_one_node_id_is_stopped(
    center: LocalServer, pg_dsn: str, tmp_path: Path, machine: str
) -> None:
    """Two machines of one institution, both with the default node id 01, issue the same
    first id. The second is refused before the center records anything of it: by its own
    instance id (bound to the first machine), or, when its `<db>.node` was copied from the
    first, by the center holding that id with other content (CONFLICT)."""
    first = forwarding_front(center, tmp_path / "first.db").start()
    second = forwarding_front(center, tmp_path / "second.db")
    try:
        mine = settle_one(first, INST_A, EMPLOYEE, seed=1)
        wait_for(lambda: unsent(first.db) == 0, "the first front-end's settlement to forward")
        if machine == "copied database directory":
            shutil.copy(instance_file(first.db), instance_file(second.db))
        second.start()
        before = center_rows(pg_dsn)
        squatted = settle_one(second, INST_A, RETIRED, seed=2)
        assert squatted == mine  # the same id, another visit and person

        assert stopped(second) != 0
        log = (tmp_path / "second.log").read_text()
        assert f"node 01 of {INST_A}" in log and "--node-id" in log, log[-2000:]
        assert center_rows(pg_dsn) == before  # nothing of it recorded or misapplied
        assert unsent(second.db) == 1  # nothing lost: still in its outbox
        assert (mine, 1, front_set(first.db).pop()[2]) in center_set(pg_dsn)
        assert first.proc is not None and first.proc.poll() is None  # the first serves on
        if machine == "copied database directory":
            assert "CONFLICT" in (tmp_path / "center-1-any.log").read_text()
    finally:
        second.stop()
        first.stop()


def test_front_ends_of_two_institutions_with_default_node_ids_both_reach_the_center(
    center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    fronts = [forwarding_front(center, tmp_path / f"front{i}.db").start() for i in (1, 2)]
    try:
        ids = [
            settle_one(fronts[0], INST_A, EMPLOYEE, seed=3),
            settle_one(fronts[1], INST_B, CIVIL, seed=4),
        ]
        wait_for(lambda: unsent(fronts[0].db) + unsent(fronts[1].db) == 0, "both to forward")
        assert {s for s, _, _ in center_set(pg_dsn)} == set(ids)
        assert center_set(pg_dsn) == front_set(fronts[0].db) | front_set(fronts[1].db)
    finally:
        for f in fronts:
            f.stop()


def test_a_rejected_settlement_stays_unsent_and_the_rest_goes_on(
    center: LocalServer, pg_dsn: str, tmp_path: Path
) -> None:
    """A settlement the center refuses (here: of a person it no longer has) is never marked
    sent: it stays in the outbox, logged at ERROR with the center's reason, and the
    settlements behind it still reach the center."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM persons WHERE psn_no = %s", (CIVIL.psn_no,))
    front = forwarding_front(center, tmp_path / "front.db").start()
    try:
        refused = settle_one(front, INST_A, CIVIL, seed=8)
        later = settle_one(front, INST_A, EMPLOYEE, seed=9)
        wait_for(lambda: later in {s for s, _, _ in center_set(pg_dsn)}, "the later one")
        assert refused not in {s for s, _, _ in center_set(pg_dsn)}
        assert unsent(front.db) == 1
        log = (tmp_path / "front.log").read_text()
        assert f"the center rejected outbox row 1 (settle {refused})" in log
        assert f"no insured person {CIVIL.psn_no}" in log
        assert front.proc is not None and front.proc.poll() is None  # serving on
    finally:
        front.stop()


# ------------------------------------------------------------------------ forged forwards
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init(d, [INST_A, INST_B], ["gz"])
    return d


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, center_pb2.ForwardItem]:
    """What a local-mode front-end (node 01, no center) would forward: a settlement of A
    with an account debit, one of A without, and one of B; by name."""
    tmp = tmp_path_factory.mktemp("honest")
    with LocalServer(tmp / "front.db", log=tmp / "front.log") as front:
        settle_one(front, INST_A, RETIRED, seed=5)
        c = client(front, INST_A)
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=6, seed=6, med_type=11)
        c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))
        settle_one(front, INST_B, CIVIL, seed=7)
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=6, seed=8, med_type=11)
        c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))
    store = Store(str(tmp / "front.db"), readers=1)
    try:
        items = store.read_sync(lambda conn: pending_all(conn, str(tmp / "front.db")))
    finally:
        store.close()
    assert [i.kind for i in items] == ["settle"] * 4
    names = ("account", "cash", "other institution", "cash again")
    return dict(zip(names, items, strict=True))


@pytest.fixture
def tls_center(pki: Path, pg_dsn: str, tmp_path: Path) -> Iterator[LocalServer]:
    """A center that answers front-end machines' certificates only (mutual TLS)."""
    server = center_server(pg_dsn, tmp_path)
    server.extra += tls_flags(pki, "center-gz")
    server.credentials = files(pki, f"frontend-{INST_A}").channel_credentials()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def forward(
    center: LocalServer, pki: Path, inst: str, *items: center_pb2.ForwardItem
) -> list[tuple[int, str]]:
    """Forward `items` as `inst`'s front-end machine (its certificate), node 01."""
    creds = files(pki, f"frontend-{inst}").channel_credentials()
    with grpc.secure_channel(center.target, creds) as ch:
        resp = center_pb2_grpc.CenterStub(ch).Forward(
            center_pb2.ForwardRequest(
                header=center_pb2.NodeHeader(node_id="01", fixmedins_code=inst), items=items
            ),
            timeout=30,
        )
    return [(r.outcome, r.detail) for r in resp.results]


def forged(
    item: center_pb2.ForwardItem, serial: int | None = None, **setlinfo: Any
) -> center_pb2.ForwardItem:
    """A copy of `item` with SetlInfo fields changed, under a fresh id when `serial`."""
    out = center_pb2.ForwardItem()
    out.CopyFrom(item)
    for k, v in setlinfo.items():
        setattr(out.setlinfo, k, v)
    if serial is not None:
        code = out.setlinfo.fixmedins_code
        out.setl_id = out.setlinfo.setl_id = f"S{code}01{serial:012d}"
        out.setlinfo.mdtrt_id = f"M{code}01{serial:012d}"
    return out


def test_forged_forwards_are_rejected_and_change_nothing(
    tls_center: LocalServer, pg_dsn: str, pki: Path, honest: dict[str, center_pb2.ForwardItem]
) -> None:
    account, cash, theirs = honest["account"], honest["cash"], honest["other institution"]
    richer = forged(cash)  # 50.00 more from the fund, as much less in cash
    more = min(5_000, cash.setlinfo.psn_cash_pay)
    for name, change in (("hifp_pay", more), ("fund_pay_sumamt", more)):
        setattr(richer.setlinfo, name, getattr(cash.setlinfo, name) + change)
    for name in ("psn_part_amt", "psn_cash_pay"):
        setattr(richer.setlinfo, name, getattr(cash.setlinfo, name) - more)
    lighter = forged(cash)
    lighter.accumulators_after.dedc_paid -= 1
    squat = forged(theirs, fixmedins_code=INST_A)  # B's id, passed off as A's
    huge = 20_000_000_000  # above max_visit_fee_fen
    cases = {
        "negative account debit, unknown person": forged(
            account, 900, acct_pay=-1_000_000, psn_no="44999999999999", balc=4_650_000
        ),
        "unknown person": forged(account, 901, psn_no="44999999999999"),
        "more from the fund than the policy pays": richer,
        "another accumulator change": lighter,
        "another institution's settlement": theirs,
        "another institution's id as our own": squat,
        "absurd amounts": forged(cash, 902, medfee_sumamt=huge, fulamt_ownpay_amt=huge),
        # Settled against the first visit's deductible, which the center never got: the
        # fund would pay as if the person had met it.
        "more use of the year than the center knows": honest["cash again"],
        "a cancel of another institution's settlement": center_pb2.ForwardItem(
            seq=99, kind="cancel", setl_id=theirs.setl_id, cancel_id=f"C{INST_A}01000000000009"
        ),
    }
    before = center_rows(pg_dsn)
    results = forward(tls_center, pki, INST_A, *cases.values())
    got = dict(zip(cases, results, strict=True))
    assert {name: r[0] for name, r in got.items()} == dict.fromkeys(cases, center_pb2.REJECTED)
    assert "acct_pay -1000000" in got["negative account debit, unknown person"][1]
    assert "no insured person" in got["unknown person"][1]
    assert "hifp_pay" in got["more from the fund than the policy pays"][1]
    assert "accumulator change dedc_paid" in got["another accumulator change"][1]
    assert "more use of the year" in got["more use of the year than the center knows"][1]
    assert center_rows(pg_dsn) == before  # persons, accumulators, ledger: all unchanged
    # A header naming another institution than the certificate's does not get in at all.
    with pytest.raises(grpc.RpcError) as err:
        forward_as = files(pki, f"frontend-{INST_A}").channel_credentials()
        with grpc.secure_channel(tls_center.target, forward_as) as ch:
            center_pb2_grpc.CenterStub(ch).Forward(
                center_pb2.ForwardRequest(
                    header=center_pb2.NodeHeader(node_id="01", fixmedins_code=INST_B),
                    items=[theirs],
                ),
                timeout=30,
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The honest forwards: applied, B's too (A's forgery did not take its id), replayed as
    # duplicates; the same id with other content is a conflict and changes nothing.
    assert [r[0] for r in forward(tls_center, pki, INST_A, account, cash)] == [
        center_pb2.APPLIED
    ] * 2
    # Once the first is there, the second is what the center knows: applied.
    assert forward(tls_center, pki, INST_A, honest["cash again"])[0][0] == center_pb2.APPLIED
    assert forward(tls_center, pki, INST_B, theirs)[0][0] == center_pb2.APPLIED
    assert [r[0] for r in forward(tls_center, pki, INST_A, account, cash)] == [
        center_pb2.DUPLICATE
    ] * 2
    after = center_rows(pg_dsn)
    other = forged(account, invono="X")
    other.setlinfo.psn_cash_pay += 1
    conflict = forward(tls_center, pki, INST_A, other, cash)
    assert conflict[0][0] == center_pb2.CONFLICT and "psn_cash_pay" in conflict[0][1]
    assert conflict[1][0] == center_pb2.REJECTED  # nothing after a conflict in its batch
    assert center_rows(pg_dsn) == after
    with psycopg.connect(pg_dsn) as conn:
        balc = conn.execute(
            "SELECT balc, opening_balc FROM persons WHERE psn_no = %s", (RETIRED.psn_no,)
        ).fetchone()
    assert balc == (RETIRED.balc - account.setlinfo.acct_pay, RETIRED.balc)


# ------------------------------------------------------------------------ settle batches
def settle_batch(
    center: LocalServer, pki: Path, cert_of: str, header_of: str, *calls: Any
) -> list[tuple[int, str]]:
    """One SettleSummaries call as `cert_of`'s front-end machine, its header naming
    `header_of`, node 01; each item's (code, message)."""
    creds = files(pki, f"frontend-{cert_of}").channel_credentials()
    with grpc.secure_channel(center.target, creds) as ch:
        resp = center_pb2_grpc.CenterStub(ch).SettleSummaries(
            center_pb2.CenterSettleBatch(
                header=center_pb2.NodeHeader(node_id="01", fixmedins_code=header_of),
                calls=calls,
            ),
            timeout=30,
        )
    return [(o.code, o.message) for o in resp.outcomes]


def test_a_settle_batch_speaks_for_its_certificate_alone(
    tls_center: LocalServer, pg_dsn: str, pki: Path
) -> None:
    """A SettleSummaries call is refused whole, settling nothing, when its header is not the
    certificate's institution, when an item's header is not the call's, or when it carries
    too many items; a pre-settle in it is refused alone."""
    mine = summary_request(RETIRED, summary_in_scope(40_000), inst=INST_A)
    theirs = summary_request(CIVIL, summary_in_scope(40_000), inst=INST_B)
    other_node = summary_request(EMPLOYEE, summary_in_scope(40_000), inst=INST_A, node="02")
    before = center_rows(pg_dsn)
    refused = {
        "an item of another institution": (INST_A, [mine, theirs], "calls[1].header.fixm"),
        "an item of another node": (INST_A, [mine, other_node], "calls[1].header.node_id"),
        "a header of another institution": (INST_B, [theirs], "is not the institution"),
        "too many items": (INST_A, [mine] * 257, "more than 256"),
        "no items": (INST_A, [], "calls: a batch needs"),
    }
    for name, (header_of, calls, says) in refused.items():
        with pytest.raises(grpc.RpcError) as err:
            settle_batch(tls_center, pki, INST_A, header_of, *calls)
        want = (
            grpc.StatusCode.PERMISSION_DENIED
            if header_of != INST_A
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (err.value.code(), says in (err.value.details() or "")) == (want, True), name
    assert center_rows(pg_dsn) == before
    pre = summary_request(EMPLOYEE, summary_in_scope(40_000), inst=INST_A)
    pre.pre_settle = True
    got = settle_batch(tls_center, pki, INST_A, INST_A, mine, pre)
    assert got[0] == (0, "")
    assert got[1][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "pre_settle" in got[1][1]
    with psycopg.connect(pg_dsn) as conn:
        held = conn.execute("SELECT setl_id FROM settlements").fetchall()
    assert held == [(mine.setl_id,)]
