"""The Python decision over a forwarded batch that the engine's replaced (issue 15): the
oracle of tests/center/test_forward_engine.py, kept as it ran in server/center/forwarded.py
and server/center/store/batch.py before the move (only the database reads are gone: the
view is built from the same rows the engine takes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import engine_rs
from medsettle.v1 import catalog_pb2, center_pb2, common_pb2
from server import nodes
from server.center.settle import no_person, person_of
from server.center.store.batch import HELD
from server.codes import MED_TYPES, treatment_of, valid_date
from server.common import local_date
from server.errors import ClientError, FailedPrecondition, NotFound
from server.fundsplit import SETL_AMOUNTS, SplitContext, choose_rule, fund_split
from server.persons import ACC_FIELDS
from server.refdata import Institution
from server.security.pii import Vault

Key = tuple[str, int, str]
SETTLED, CANCELLED = 1, 2
MAX_BALANCE_FEN = 2**62
EARLIEST_MS = 946_684_800_000
DAY_MS = 86_400_000
MAX_TEXT = 64


# What a split decides for a settlement: two splits of the same visit, person, policy,
# accumulators and account balance agree on all of them and on every fund leg.
SPLIT_RESULT = (
    *SETL_AMOUNTS,
    "balc",
    "psn_type",
    "clr_type",
    "rule_id",
    "policy_version",
)


def split_differences(theirs: common_pb2.SetlInfo, ours: common_pb2.SetlInfo) -> list[str]:
    """Where a settlement as another party computed it (`theirs`) differs from our split of
    the same inputs (`ours`), one readable entry per field or fund leg; empty when equal."""
    out = [
        f"{f} {getattr(theirs, f)} (ours {getattr(ours, f)})"
        for f in SPLIT_RESULT
        if getattr(theirs, f) != getattr(ours, f)
    ]
    legs = {g.fund_pay_type: (g.inscp_scp_amt, g.fund_payamt) for g in theirs.setldetail}
    mine = {g.fund_pay_type: (g.inscp_scp_amt, g.fund_payamt) for g in ours.setldetail}
    if len(legs) != len(theirs.setldetail):
        out.append("setldetail: a fund appears twice")
    for fund in sorted(legs.keys() | mine.keys()):
        if legs.get(fund) != mine.get(fund):
            out.append(f"fund {fund} (base, paid) {legs.get(fund)} (ours {mine.get(fund)})")
    return out


@dataclass
class TwinEnv:
    pii: Vault
    tz_offset_min: int
    max_visit_fee_fen: int
    inst: Institution
    policies: dict[int, engine_rs.Policy]


@dataclass
class Held:
    """A settlement as the batch sees it: held by the center, or recorded earlier in it."""

    values: dict[str, Any]  # the HELD fields, as stored
    legs: list[tuple[str, int, int]]  # (fund_pay_type, base, amount), sorted
    state: int
    cancel_id: str | None
    new: dict[str, Any] | None = None  # its row (SETTLEMENT_COLUMNS), when recorded here


@dataclass
class LedgerBatch:
    """The batch's view of the ledger and what it will write."""

    code: str  # the institution the batch is of
    settlements: dict[str, Held] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)  # mdtrt_id -> its settled setl_id
    persons: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # READ_COLUMNS rows
    balances: dict[str, int] = field(default_factory=dict)
    accumulators: dict[Key, dict[str, int]] = field(default_factory=dict)  # current or seed
    stored: set[Key] = field(default_factory=set)  # keys with a current row in the database
    # What the batch writes.
    touched: set[Key] = field(default_factory=set)
    moved: dict[str, int] = field(default_factory=dict)  # psn_no -> balance change
    recorded: list[dict[str, Any]] = field(default_factory=list)  # new settlements' rows
    legs: list[tuple[str, str, int, int]] = field(default_factory=list)
    cancels: list[tuple[str, str, int, int]] = field(default_factory=list)  # held ones
    differences: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def from_rows(
        cls,
        code: str,
        settlements: list[tuple[Any, ...]],
        legs: list[tuple[Any, ...]],
        active: list[tuple[str, str]],
        persons: list[tuple[Any, ...]],
        accumulators: list[tuple[Any, ...]],
    ) -> LedgerBatch:
        """The view as the old `load` built it from the same rows."""
        b = cls(code)
        for setl_id, state, cancel_id, *held in settlements:
            b.settlements[setl_id] = Held(dict(zip(HELD, held, strict=True)), [], state, cancel_id)
        for setl_id, *leg in legs:
            if setl_id in b.settlements:
                b.settlements[setl_id].legs.append((leg[0], leg[1], leg[2]))
        for h in b.settlements.values():
            h.legs.sort()
        b.active = dict(active)
        for row in persons:
            b.persons[row[0]] = row
            b.balances[row[0]] = row[-1]
        for psn_no, year, pool, opening, *acc in accumulators:
            key = (psn_no, year, pool)
            if opening == 0:
                b.stored.add(key)
            b.accumulators.setdefault(key, dict(zip(ACC_FIELDS, acc, strict=True)))
        return b

    def current(self, key: Key) -> dict[str, int]:
        """The person's accumulators for (year, pool) as of this point of the batch: the
        current row, else the opening one, else zeros."""
        return dict(self.accumulators.get(key) or dict.fromkeys(ACC_FIELDS, 0))

    def set_accumulators(self, key: Key, values: dict[str, int]) -> None:
        self.accumulators[key] = values
        self.touched.add(key)

    def move_balance(self, psn_no: str, change: int) -> None:
        if psn_no in self.balances:
            self.balances[psn_no] += change
            self.moved[psn_no] = self.moved.get(psn_no, 0) + change

    def record(self, row: dict[str, Any], legs: list[tuple[str, int, int]]) -> None:
        """A new settlement (its row by SETTLEMENT_COLUMNS) and its legs."""
        held = Held({f: row[f] for f in HELD}, sorted(legs), SETTLED, None, row)
        self.settlements[row["setl_id"]] = held
        self.active[row["mdtrt_id"]] = row["setl_id"]
        self.recorded.append(row)
        self.legs += [(row["setl_id"], *leg) for leg in legs]

    def cancel(self, setl_id: str, cancel_id: str, at: int, date: int) -> None:
        held = self.settlements[setl_id]
        held.state, held.cancel_id = CANCELLED, cancel_id
        if self.active.get(held.values["mdtrt_id"]) == setl_id:
            del self.active[held.values["mdtrt_id"]]
        if held.new is not None:  # recorded in this batch: inserted as cancelled
            held.new.update(state=CANCELLED, cancel_id=cancel_id, cancel_time=at, cancel_date=date)
        else:
            self.cancels.append((setl_id, cancel_id, at, date))


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


def _require_sane(env: TwinEnv, item: center_pb2.ForwardItem, now: int) -> None:
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


def _split_again(
    env: TwinEnv,
    batch: LedgerBatch,
    h: center_pb2.NodeHeader,
    item: center_pb2.ForwardItem,
) -> tuple[common_pb2.SetlInfo, dict[str, int]]:
    """The settlement as the center splits it, and its accumulator change; REJECTED when it
    is not what the front-end forwarded."""
    info = item.setlinfo
    inst = env.inst
    row = batch.persons.get(info.psn_no)
    if row is None:
        raise NotFound(no_person(info.psn_no))
    person = person_of(env.pii, row)
    if info.insutype != person.insutype:
        raise Refused(
            center_pb2.REJECTED,
            f"insutype {info.insutype}: the center has the person under {person.insutype}",
        )
    policy = env.policies.get(info.policy_version)
    if policy is None:
        raise FailedPrecondition(
            f"policy_version: the center has no policy version {info.policy_version}"
        )
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


def _forward_settle(
    env: TwinEnv,
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
    ours, delta = _split_again(env, batch, h, item)
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
    env: TwinEnv,
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
        batch.differences.append((ours.setl_id, psn_no, year, pool, current, theirs, now))
        return center_pb2.APPLIED_WITH_DIFFERENCE, "the center's accumulators differed"
    return center_pb2.APPLIED, ours.setl_id


# ------------------------------------------------------------------------------- cancel
def _forward_cancel(
    env: TwinEnv,
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


def decide(
    env: TwinEnv, batch: LedgerBatch, req: center_pb2.ForwardRequest, now: int
) -> list[tuple[int, int, str]]:
    """The old loop of `forward`: (seq, outcome, detail) per item, the batch's writes in it."""
    h = req.header
    out = []
    conflicted: int | None = None
    for item in req.items:
        try:
            if conflicted is not None:
                raise Refused(center_pb2.REJECTED, f"not applied: item {conflicted} conflicted")
            if item.kind == "settle":
                result = _forward_settle(env, batch, h, item, now)
            elif item.kind == "cancel":
                result = _forward_cancel(env, batch, h, item, now)
            else:
                raise Refused(center_pb2.REJECTED, f"unknown kind {item.kind!r}")
        except Refused as r:
            result = (r.outcome, r.detail)
        except ClientError as exc:
            result = (center_pb2.REJECTED, exc.message)
        if result[0] == center_pb2.CONFLICT:
            conflicted = item.seq
        out.append((item.seq, result[0], result[1]))
    return out
