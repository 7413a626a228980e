"""The center's side of store-and-forward: what a front-end in local mode settled and
cancelled, recorded at the center in the front-end's order, each at most once, none of it on
trust.

A forwarded settlement is recorded only when
- its ids are the header's institution and node (`nodes.issued_by`: setl_id and mdtrt_id;
  under mutual TLS the header's institution is the certificate's, server/rpc.py);
- its amounts are sane: none negative or above `max_visit_fee_fen`, the four parts of the
  summary adding up to the total, a settlement time neither before 2000 nor in the future;
- the center knows the person, and the same `fund_split` run at the center (from the
  forwarded summary, the person as the center holds them, the institution, the policy
  version the settlement names, and the accumulators and account balance the front-end
  settled against) gives every fund leg, total, account debit and accumulator change the
  front-end reported.
Otherwise it is REJECTED, `detail` naming what differed, and nothing is written. The center
applies the accumulator change to its own accumulators and stores its own split; when its
accumulators before were not the front-end's (the person settled elsewhere meanwhile), both
views are kept in accumulator_differences (APPLIED_WITH_DIFFERENCE).

An id the center already holds is a DUPLICATE (a replay) when the content is the same, and a
CONFLICT, logged at ERROR, when it is not: another front-end issues ids under this node. No
later item of that batch is applied. A cancel applies only to a settlement of this node,
under a cancel id of this node.

The items are decided in order over the batch's view of the ledger (store/batch.py: read
and locked set-wise first, written set-wise after), so each sees the ones before it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from psycopg.types.json import Jsonb

import engine_rs
from medsettle.v1 import catalog_pb2, center_pb2, common_pb2
from server import nodes
from server.center import bindings
from server.center.settle import CenterEnv, check_node_header, no_person, person_of
from server.center.store.batch import HELD, SETTLED, Key, LedgerBatch
from server.center.store.pg import Conn
from server.codes import MED_TYPES, treatment_of, valid_date
from server.common import local_date
from server.errors import ClientError, NotFound
from server.fundsplit import (
    SETL_AMOUNTS,
    SplitContext,
    choose_rule,
    fund_split,
    split_differences,
)
from server.persons import ACC_FIELDS

log = logging.getLogger("medsettle.center")

MAX_BALANCE_FEN = 2**62  # an account balance beyond is absurd (and the engine's i64 near)
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00Z
DAY_MS = 86_400_000
MAX_TEXT = 64  # psn_no, msgid, invono


class Refused(Exception):
    """One forwarded item not applied (nothing written for it): the outcome and why."""

    def __init__(self, outcome: int, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


def _acc(a: catalog_pb2.Accumulator) -> dict[str, int]:
    return {f: getattr(a, f) for f in ACC_FIELDS}


def _delta(item: center_pb2.ForwardItem) -> dict[str, int]:
    after, before = item.accumulators_after, item.accumulators_before
    return {f: getattr(after, f) - getattr(before, f) for f in ACC_FIELDS}


async def forward(
    conn: Conn, env: CenterEnv, req: center_pb2.ForwardRequest, now: int
) -> center_pb2.ForwardResponse:
    """Record a front-end's settlements and cancels (local mode), in its order, each at most
    once; the answer says per item what the center did."""
    check_node_header(req.header, needs_msgid=False)
    h = req.header
    await env.institution(conn, h.fixmedins_code)
    await bindings.claim(conn, h, now)
    batch = LedgerBatch(h.fixmedins_code)
    await _load(conn, batch, req)
    out = center_pb2.ForwardResponse()
    conflicted: int | None = None
    for item in req.items:
        try:
            if conflicted is not None:
                raise Refused(center_pb2.REJECTED, f"not applied: item {conflicted} conflicted")
            if item.kind == "settle":
                result = await _forward_settle(conn, env, batch, h, item, now)
            elif item.kind == "cancel":
                result = _forward_cancel(env, batch, h, item, now)
            else:
                raise Refused(center_pb2.REJECTED, f"unknown kind {item.kind!r}")
        except Refused as r:
            result = (r.outcome, r.detail)
        except ClientError as exc:  # e.g. an unknown person or policy version
            result = (center_pb2.REJECTED, exc.message)
        if result[0] == center_pb2.CONFLICT:
            conflicted = item.seq
            log.error(
                "CONFLICT: node %s of %s (instance %s) forwarded %s: %s; another front-end"
                " issues ids under this node",
                h.node_id,
                h.fixmedins_code,
                h.instance_id or "not given",
                item.setl_id or item.setlinfo.setl_id,
                result[1],
            )
        out.results.add(seq=item.seq, outcome=result[0], detail=result[1])
    await batch.write(conn)
    return out


async def _load(conn: Conn, batch: LedgerBatch, req: center_pb2.ForwardRequest) -> None:
    """Read what the batch's items may touch (LedgerBatch.load). Only plain texts are
    looked up: an item with another (a NUL, a megabyte) is refused by its own checks, and
    must not fail the whole batch's statement first."""
    settles = [i for i in req.items if i.kind == "settle"]
    settle_ids = {i.setlinfo.setl_id for i in settles if _plain(i.setlinfo.setl_id)}
    ids = settle_ids | {i.setl_id for i in req.items if i.kind == "cancel" and _plain(i.setl_id)}
    people = {i.setlinfo.psn_no for i in settles if _plain(i.setlinfo.psn_no)}
    keys = {
        (i.setlinfo.psn_no, i.accumulators_before.year, i.accumulators_before.pool)
        for i in settles
        if i.setlinfo.psn_no in people and _plain(i.accumulators_before.pool)
    }
    visits = {i.setlinfo.mdtrt_id for i in settles if _plain(i.setlinfo.mdtrt_id)}
    await batch.load(conn, sorted(ids), settle_ids, sorted(visits), people, keys)


def _plain(text: str) -> bool:
    return len(text) <= MAX_TEXT and text.isprintable()


# ------------------------------------------------------------------------------- settle
def _require_own_ids(h: center_pb2.NodeHeader, item: center_pb2.ForwardItem) -> None:
    info = item.setlinfo
    code, node = h.fixmedins_code, h.node_id
    if (
        info.fixmedins_code != code
        or not nodes.issued_by(info.setl_id, "S", code, node)
        or not nodes.issued_by(info.mdtrt_id, "M", code, node)
        or (item.setl_id and item.setl_id != info.setl_id)
    ):
        raise Refused(
            center_pb2.REJECTED,
            f"{info.setl_id} (visit {info.mdtrt_id}) is not a settlement of node {node} of {code}",
        )


def _require_sane(env: CenterEnv, item: center_pb2.ForwardItem, now: int) -> None:
    info, before, after = item.setlinfo, item.accumulators_before, item.accumulators_after
    bad = [f"{f} {getattr(info, f)}" for f in SETL_AMOUNTS if getattr(info, f) < 0]
    bad += [
        f"{f} {getattr(info, f)} above {env.max_visit_fee_fen}"
        for f in SETL_AMOUNTS
        if getattr(info, f) > env.max_visit_fee_fen
    ]
    if not 0 <= info.balc <= MAX_BALANCE_FEN:
        bad.append(f"balc {info.balc}")
    parts = (info.fulamt_ownpay_amt, info.overlmt_amt, info.preselfpay_amt, info.inscp_scp_amt)
    if sum(parts) != info.medfee_sumamt:
        bad.append(f"medfee_sumamt {info.medfee_sumamt} is not the sum of its parts {sum(parts)}")
    if info.line_count <= 0:
        bad.append(f"line_count {info.line_count}")
    if info.med_type not in MED_TYPES:
        bad.append(f"med_type {info.med_type}")
    if not valid_date(item.begndate):
        bad.append(f"begndate {item.begndate}")
    if (before.year, before.pool) != (after.year, after.pool):
        bad.append("accumulators before and after are of another year or pool")
    if any(v < 0 for a in (before, after) for v in _acc(a).values()):
        bad.append("accumulators: negative values")
    if not EARLIEST_MS <= info.setl_time.ToMilliseconds() <= now + DAY_MS:
        bad.append(f"setl_time {info.setl_time.ToMilliseconds()} ms")
    for name in ("psn_no", "msgid", "invono"):
        text = getattr(info, name)
        if len(text) > MAX_TEXT or not text.isprintable():
            bad.append(f"{name} is not a short printable text")
    if bad:
        raise Refused(center_pb2.REJECTED, "absurd settlement: " + "; ".join(bad))


def _held_differences(
    batch: LedgerBatch, h: center_pb2.NodeHeader, item: center_pb2.ForwardItem
) -> list[str] | None:
    """None when the center has no settlement of this id; else the fields in which the one
    it holds differs from the forwarded one (only names: the content is someone else's)."""
    info = item.setlinfo
    held = batch.settlements.get(info.setl_id)
    if held is None:
        return None
    theirs: dict[str, Any] = {f: getattr(info, f, None) for f in HELD}
    theirs |= {
        "node_id": h.node_id,
        "setl_time": info.setl_time.ToMilliseconds(),
        "mode": common_pb2.LOCAL,
        "acc_year": item.accumulators_before.year,
        "acc_pool": item.accumulators_before.pool,
        "acc_delta": _delta(item),
    }
    diff = [f for f in HELD if theirs[f] != held.values[f]]
    mine = [(g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt) for g in info.setldetail]
    if sorted(mine) != held.legs:
        diff.append("setldetail")
    return diff


async def _split_again(
    conn: Conn,
    env: CenterEnv,
    batch: LedgerBatch,
    h: center_pb2.NodeHeader,
    item: center_pb2.ForwardItem,
) -> tuple[common_pb2.SetlInfo, dict[str, int]]:
    """The settlement as the center splits it, and its accumulator change; REJECTED when it
    is not what the front-end forwarded."""
    info = item.setlinfo
    inst = await env.institution(conn, h.fixmedins_code)
    row = batch.persons.get(info.psn_no)
    if row is None:
        raise NotFound(no_person(info.psn_no))
    person = person_of(env.pii, row)
    if info.insutype != person.insutype:
        raise Refused(
            center_pb2.REJECTED,
            f"insutype {info.insutype}: the center has the person under {person.insutype}",
        )
    policy = await env.policy(conn, info.policy_version)
    ctx = SplitContext(
        fixmedins_code=inst.fixmedins_code,
        hosp_lv=inst.hosp_lv,
        treatment_admdvs=inst.admdvs,
        mdtrt_id=info.mdtrt_id,
        insutype=info.insutype,
        med_type=info.med_type,
        treatment=treatment_of(info.med_type),
        begndate=item.begndate,
    )
    choice = choose_rule(policy, ctx, person)
    before = item.accumulators_before
    if (before.year, before.pool) != (choice.year, choice.pool):
        raise Refused(
            center_pb2.REJECTED,
            f"accumulators of {before.year} {before.pool!r}: the policy's rule uses"
            f" {choice.year} {choice.pool!r}",
        )
    summary = engine_rs.Summary(
        medfee_sumamt=info.medfee_sumamt,
        fulamt_ownpay_amt=info.fulamt_ownpay_amt,
        overlmt_amt=info.overlmt_amt,
        preselfpay_amt=info.preselfpay_amt,
        inscp_scp_amt=info.inscp_scp_amt,
        line_count=info.line_count,
    )
    # The account balance the front-end settled against: what it left plus what it took
    # (the center's own may have moved since, as its accumulators may have).
    settled_against = dataclasses.replace(person, balc=info.balc + info.acct_pay)
    ours, after = fund_split(
        policy, choice, ctx, settled_against, summary, _acc(before), info.acct_pay > 0, info.invono
    )
    delta = {f: after[f] - getattr(before, f) for f in ACC_FIELDS}
    theirs = _delta(item)
    diff = split_differences(info, ours)
    diff += [
        f"accumulator change {f} {theirs[f]} (ours {delta[f]})"
        for f in ACC_FIELDS
        if theirs[f] != delta[f]
    ]
    if diff:
        raise Refused(
            center_pb2.REJECTED, "does not split again the same at the center: " + "; ".join(diff)
        )
    for name in ("setl_id", "msgid", "setl_time", "offline", "catalog_version"):
        field = getattr(info, name)
        if name == "setl_time":
            ours.setl_time.CopyFrom(field)
        else:
            setattr(ours, name, field)
    ours.categories.extend(info.categories)
    ours.state = common_pb2.SETTLED
    ours.mode = common_pb2.LOCAL
    return ours, delta


async def _forward_settle(
    conn: Conn,
    env: CenterEnv,
    batch: LedgerBatch,
    h: center_pb2.NodeHeader,
    item: center_pb2.ForwardItem,
    now: int,
) -> tuple[int, str]:
    info = item.setlinfo
    _require_own_ids(h, item)
    differs = _held_differences(batch, h, item)
    if differs is not None:
        if differs:
            raise Refused(
                center_pb2.CONFLICT,
                f"{info.setl_id} is held with other {', '.join(differs)}",
            )
        return center_pb2.DUPLICATE, info.setl_id
    _require_sane(env, item, now)
    active = batch.active.get(info.mdtrt_id)
    if active is not None:  # e.g. an offline settle after a center call that did commit
        return center_pb2.REJECTED, f"visit {info.mdtrt_id} is already settled as {active}"
    ours, delta = await _split_again(conn, env, batch, h, item)
    before = item.accumulators_before
    key = (ours.psn_no, before.year, before.pool)
    theirs = _acc(before)
    _require_no_credit(batch, key, ours, theirs)
    _record(env, batch, h, key, ours, delta, now)
    return _applied(batch, key, ours, theirs, delta, now)


def _require_no_credit(
    batch: LedgerBatch, key: Key, ours: common_pb2.SetlInfo, theirs: dict[str, int]
) -> None:
    """The re-split takes the front-end's accumulators and balance as they were when it
    settled; a front-end may not claim the person had used more than the center knows of
    (a deductible already met, a cap nearer: the fund would pay more) nor had more in the
    account than the center holds. Such an item is refused before anything is written
    (a stale cache after a cancel elsewhere also lands here: reconciliation shows it)."""
    current = batch.current(key)
    claimed = [f"{f} {theirs[f]} > {current[f]}" for f in ACC_FIELDS if theirs[f] > current[f]]
    if claimed:
        raise Refused(
            center_pb2.REJECTED,
            "settled against more use of the year than the center holds: " + "; ".join(claimed),
        )
    if ours.acct_pay:
        balc = batch.balances.get(ours.psn_no)
        if balc is None or ours.acct_pay > balc:
            raise Refused(
                center_pb2.REJECTED,
                f"account pays {ours.acct_pay}, more than the center's balance {balc or 0}",
            )


def _record(
    env: CenterEnv,
    batch: LedgerBatch,
    h: center_pb2.NodeHeader,
    key: Key,
    ours: common_pb2.SetlInfo,
    delta: dict[str, int],
    now: int,
) -> None:
    """The center's ledger row of a checked forwarded settlement, and its legs."""
    setl_ms = ours.setl_time.ToMilliseconds()
    row = {
        "setl_id": ours.setl_id,
        "node_id": h.node_id,
        "fixmedins_code": ours.fixmedins_code,
        "mdtrt_id": ours.mdtrt_id,
        "psn_no": ours.psn_no,
        "insutype": ours.insutype,
        "clr_type": ours.clr_type,
        "msgid": ours.msgid,
        "invono": ours.invono,
        "setl_time": setl_ms,
        "setl_date": local_date(setl_ms, env.tz_offset_min),
        "state": SETTLED,
        "mode": common_pb2.LOCAL,
        "offline": int(ours.offline),
        "medfee_sumamt": ours.medfee_sumamt,
        "fund_pay_sumamt": ours.fund_pay_sumamt,
        "acct_pay": ours.acct_pay,
        "psn_cash_pay": ours.psn_cash_pay,
        "acc_year": key[1],
        "acc_pool": key[2],
        "acc_delta": delta,
        "info": env.pii.seal_setlinfo(ours.setl_id, ours.SerializeToString()),
        "received_at": now,
    }
    legs = [(g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt) for g in ours.setldetail]
    batch.record(row, legs)


def _applied(
    batch: LedgerBatch,
    key: Key,
    ours: common_pb2.SetlInfo,
    theirs: dict[str, int],
    delta: dict[str, int],
    now: int,
) -> tuple[int, str]:
    """Apply the change to the center's accumulators and account; a difference between the
    center's accumulators before and the front-end's is kept, not overwritten."""
    current = batch.current(key)
    batch.set_accumulators(key, {f: current[f] + delta[f] for f in ACC_FIELDS})
    if ours.acct_pay:
        batch.move_balance(ours.psn_no, -ours.acct_pay)
    if current != theirs:
        psn_no, year, pool = key
        batch.differences.append(
            (ours.setl_id, psn_no, year, pool, Jsonb(current), Jsonb(theirs), now)
        )
        return center_pb2.APPLIED_WITH_DIFFERENCE, "the center's accumulators differed"
    return center_pb2.APPLIED, ours.setl_id


# ------------------------------------------------------------------------------- cancel
def _forward_cancel(
    env: CenterEnv,
    batch: LedgerBatch,
    h: center_pb2.NodeHeader,
    item: center_pb2.ForwardItem,
    now: int,
) -> tuple[int, str]:
    code, node = h.fixmedins_code, h.node_id
    if not nodes.issued_by(item.setl_id, "S", code, node):
        return center_pb2.REJECTED, f"cancel of {item.setl_id}, not a settlement of node {node}"
    if not nodes.issued_by(item.cancel_id, "C", code, node):
        return center_pb2.REJECTED, f"cancel id {item.cancel_id!r} is not one of node {node}"
    if not EARLIEST_MS <= item.cancel_time_ms <= now + DAY_MS:
        return center_pb2.REJECTED, f"absurd cancel_time_ms {item.cancel_time_ms}"
    held = batch.settlements.get(item.setl_id)
    if held is None or held.values["fixmedins_code"] != code:
        return center_pb2.REJECTED, f"cancel of {item.setl_id}, which the center does not have"
    if held.state != common_pb2.SETTLED:
        if held.cancel_id == item.cancel_id:
            return center_pb2.DUPLICATE, item.cancel_id
        if held.cancel_id and nodes.issued_by(held.cancel_id, "C", code, node):
            raise Refused(
                center_pb2.CONFLICT, f"{item.setl_id} is held cancelled by another cancel id"
            )
        return center_pb2.REJECTED, f"{item.setl_id} is already cancelled as {held.cancel_id}"
    v = held.values
    key = (v["psn_no"], v["acc_year"], v["acc_pool"])
    acc, delta = batch.current(key), v["acc_delta"]
    batch.set_accumulators(key, {f: acc[f] - delta[f] for f in ACC_FIELDS})
    if v["acct_pay"]:
        batch.move_balance(v["psn_no"], v["acct_pay"])
    at = item.cancel_time_ms
    batch.cancel(item.setl_id, item.cancel_id, at, local_date(at, env.tz_offset_min))
    return center_pb2.APPLIED, item.cancel_id
