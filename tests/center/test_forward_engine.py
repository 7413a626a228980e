"""The engine's decision over a forwarded batch (`engine_rs.ForwardBatch.decide`) equals the
Python decision it replaced (tests/center/forward_twin.py), item by item and write by write,
over random batches built on one view of the ledger: honest settlements of a few persons
(two of one person in a batch, against stale or inflated accumulators, with the account or
not), settlements tampered with, absurd ones, other nodes' ids, replays and conflicting
replays, cancels of settlements held and recorded in the batch, a visit settled again after
its cancel, unknown persons, policy versions and kinds. No database: the rows are the ones
`LedgerBatch.load` would fetch."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest

import engine_rs
from medsettle.v1 import catalog_pb2, center_pb2, common_pb2
from server.center.settle import person_of
from server.codes import treatment_of
from server.demo import dataset as demo_data
from server.fundsplit import SplitContext, choose_rule, fund_split
from server.persons import ACC_FIELDS
from server.refdata import Institution
from server.security.datakeys import DataKeys
from server.security.pii import Vault
from tests.center import forward_twin as twin

CODE, NODE, OTHER_NODE = "H440100001", "01", "02"
NOW = 1_796_488_200_000  # 2026-12-05T16:30Z
YEAR = 2026
TZ = 480
MAX_FEE = 10_000_000_000
POLICY = Path(__file__).parents[2] / "server" / "demo" / "demo_city_policy.toml"


def sid(kind: str, n: int, node: str = NODE) -> str:
    return f"{kind}{CODE}{node}{n:012d}"


class World:
    """One view of the center's ledger (as rows) and what a front-end knows of it."""

    def __init__(self, rng: random.Random, cipher: str) -> None:
        keys = DataKeys.derive(b"forward-engine-test-master-key!!")
        self.vault = Vault(keys, cipher)
        self.node = engine_rs.CenterNode(keys.pii_seal, self.vault.version, TZ, MAX_FEE)
        self.policy = engine_rs.Policy.from_toml(POLICY.read_text())
        self.people = demo_data.persons()[:6]
        admdvs = self.people[0].insuplc_admdvs
        self.inst = Institution(CODE, "test hospital", rng.choice([1, 2, 3]), admdvs)
        self.env = twin.TwinEnv(
            self.vault, TZ, MAX_FEE, self.inst, {self.policy.version: self.policy}
        )
        self.persons = [self._row(p, rng) for p in self.people]
        self.accumulators: list[tuple[Any, ...]] = []
        for p in self.people:
            for pool in ("outpatient", "inpatient"):
                shape = rng.choice(["none", "current", "opening", "both"])
                for opening in (0, 1):
                    if (shape == "current" and opening == 0) or (
                        shape == "opening" and opening == 1
                    ):
                        self.accumulators.append((p.psn_no, YEAR, pool, opening, *self._acc(rng)))
                    if shape == "both":
                        self.accumulators.append((p.psn_no, YEAR, pool, opening, *self._acc(rng)))
        self.accumulators.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        self.settlements: list[tuple[Any, ...]] = []
        self.legs: list[tuple[Any, ...]] = []
        self.active: list[tuple[str, str]] = []
        self.next_id = 1

    def _row(self, p: catalog_pb2.PersonRecord, rng: random.Random) -> tuple[Any, ...]:
        return (
            p.psn_no,
            self.vault.seal("psn_name", p.psn_no, p.psn_name),
            self.vault.seal("psn_cert_no", p.psn_no, p.psn_cert_no),
            p.gend,
            p.brdy,
            p.psn_type,
            p.insutype,
            p.insuplc_admdvs,
            p.cvlserv_flag,
            p.maf_flag,
            p.retired,
            p.cross_region,
            rng.choice([0, 500, 365_000]),
        )

    @staticmethod
    def _acc(rng: random.Random) -> list[int]:
        return [rng.choice([0, 0, 1, 50_000, 130_000]) for _ in ACC_FIELDS]

    def view_acc(self, key: tuple[str, int, str]) -> dict[str, int]:
        rows = sorted(r for r in self.accumulators if tuple(r[:3]) == key)
        return (
            dict(zip(ACC_FIELDS, rows[0][4:], strict=True))
            if rows
            else dict.fromkeys(ACC_FIELDS, 0)
        )

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


def honest_settle(
    w: World,
    rng: random.Random,
    seq: int,
    known: dict[tuple[str, int, str], dict[str, int]],
    balances: dict[str, int],
) -> center_pb2.ForwardItem | None:
    """A settlement as an honest front-end makes it, against what it knows of the year."""
    person_row = rng.choice(w.persons)
    person = person_of(w.vault, person_row)
    med_type = rng.choice([11, 11, 21, 14])
    begndate = YEAR * 10000 + rng.randint(1, 12) * 100 + rng.randint(1, 28)
    n = w.new_id()
    ctx = SplitContext(
        CODE,
        w.inst.hosp_lv,
        w.inst.admdvs,
        sid("M", n),
        person.insutype,
        med_type,
        treatment_of(med_type),
        begndate,
    )
    try:
        choice = choose_rule(w.policy, ctx, person)
    except Exception:
        return None
    key = (person.psn_no, choice.year, choice.pool)
    before = dict(known.get(key) or w.view_acc(key))
    if rng.random() < 0.15:  # stale: settled elsewhere meanwhile
        before = {f: max(0, v - rng.choice([0, 1, 10_000])) for f, v in before.items()}
    if rng.random() < 0.05:  # claims more use of the year than the center holds
        before["dedc_paid"] += 100_000
    parts = [rng.choice([0, 0, 1_234, 50_000]) for _ in range(3)]
    inscp = rng.choice([1, 9_999, 150_000, 2_000_000, 40_000_000])
    summary = engine_rs.Summary(
        medfee_sumamt=sum(parts) + inscp,
        fulamt_ownpay_amt=parts[0],
        overlmt_amt=parts[1],
        preselfpay_amt=parts[2],
        inscp_scp_amt=inscp,
        line_count=rng.randint(1, 30),
    )
    balc = balances.get(person.psn_no, person.balc)
    if rng.random() < 0.1:
        balc += 1_000_000  # more in the account than the center holds
    info, after = fund_split(
        w.policy,
        choice,
        ctx,
        dataclasses.replace(person, balc=balc),
        summary,
        before,
        rng.random() < 0.6,
        f"INV{n}",
    )
    info.setl_id = sid("S", n)
    info.msgid = f"MSG{n}"
    info.setl_time.FromMilliseconds(NOW - rng.randint(0, 10**9))
    info.state = common_pb2.SETTLED
    info.mode = common_pb2.LOCAL
    info.catalog_version = 7
    info.offline = rng.random() < 0.1
    info.categories.add(med_chrgitm_type=1, det_item_fee_sumamt=summary.medfee_sumamt)
    item = center_pb2.ForwardItem(seq=seq, kind="settle", setlinfo=info, begndate=begndate)
    item.accumulators_before.CopyFrom(
        catalog_pb2.Accumulator(year=choice.year, pool=choice.pool, **before)
    )
    item.accumulators_after.CopyFrom(
        catalog_pb2.Accumulator(year=choice.year, pool=choice.pool, **after)
    )
    known[key] = after
    balances[person.psn_no] = info.balc
    return item


def tampered(w: World, rng: random.Random, item: center_pb2.ForwardItem) -> center_pb2.ForwardItem:
    """`item` changed one way, under ids of its own (so its checks, not a replay's, run)."""
    bad = copy.deepcopy(item)
    info = bad.setlinfo
    n = w.new_id()
    info.setl_id, info.mdtrt_id = sid("S", n), sid("M", n)
    how = rng.randrange(16)
    if how == 0:
        info.hifp_pay += 1
    elif how == 1:
        info.medfee_sumamt = -5
    elif how == 2:
        bad.begndate = 20260230
    elif how == 3:
        info.msgid = "a\0b"
    elif how == 4:
        info.invono = "x" * 65
    elif how == 5:
        info.setl_time.FromMilliseconds(0)
    elif how == 6:
        info.setl_id = sid("S", 99, OTHER_NODE)
    elif how == 7:
        info.psn_no = "NOBODY"
    elif how == 8:
        info.policy_version = 1
    elif how == 9:
        info.insutype = 999
    elif how == 10:
        bad.accumulators_after.dedc_paid += 7
    elif how == 11:
        info.setldetail[0].fund_payamt += 3
    elif how == 12:
        info.setldetail.add(fund_pay_type=info.setldetail[0].fund_pay_type)
    elif how == 13:
        bad.accumulators_before.pool = "bad\0pool"
    elif how == 14:  # the year of another pool: not the one the rule uses
        bad.accumulators_before.pool = bad.accumulators_after.pool = "it's"
    else:
        info.med_type = 51  # no rule of the demo policy covers maternity
    return bad


def build_batch(w: World, rng: random.Random, size: int) -> center_pb2.ForwardRequest:
    """A random batch over `w` (which gains the held settlements the batch may name)."""
    known: dict[tuple[str, int, str], dict[str, int]] = {}
    balances: dict[str, int] = {}
    made: list[center_pb2.ForwardItem] = []
    items: list[center_pb2.ForwardItem] = []
    # Settlements the center holds already: some settled, one cancelled; replays of them.
    for _ in range(3):
        item = honest_settle(w, rng, 0, {}, {})
        if item is None:
            continue
        info = item.setlinfo
        delta = {
            f: getattr(item.accumulators_after, f) - getattr(item.accumulators_before, f)
            for f in ACC_FIELDS
        }
        cancelled = rng.random() < 0.3
        w.settlements.append(
            (
                info.setl_id,
                2 if cancelled else 1,
                sid("C", w.new_id()) if cancelled else None,
                NODE,
                CODE,
                info.mdtrt_id,
                info.psn_no,
                info.msgid,
                info.setl_time.ToMilliseconds(),
                common_pb2.LOCAL,
                info.medfee_sumamt,
                info.fund_pay_sumamt,
                info.acct_pay,
                info.psn_cash_pay,
                item.accumulators_before.year,
                item.accumulators_before.pool,
                delta,
            )
        )
        w.legs += [
            (info.setl_id, g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt) for g in info.setldetail
        ]
        if not cancelled:
            w.active.append((info.mdtrt_id, info.setl_id))
        made.append(item)
    conflicts = rng.random() < 0.3  # a batch with a conflicting replay somewhere
    seq = 0
    while len(items) < size:
        seq += 1
        roll = rng.random()
        if roll < 0.45 or not made:
            item = honest_settle(w, rng, seq, known, balances)
            if item is None:
                continue
            made.append(item)
        elif roll < 0.60:
            item = tampered(w, rng, rng.choice(made))
        elif roll < 0.68:
            item = copy.deepcopy(rng.choice(made))  # a replay
            if conflicts and rng.random() < 0.2:
                item.setlinfo.psn_cash_pay += 1  # with other content: a conflict
        elif roll < 0.85:
            target = rng.choice(made)
            cancel_id = rng.choice([sid("C", w.new_id()), sid("C", 5), "C-bad\n"])
            item = center_pb2.ForwardItem(
                kind="cancel",
                setl_id=target.setlinfo.setl_id,
                cancel_id=cancel_id,
                cancel_time_ms=rng.choice([NOW - 5, NOW, 5]),
            )
        elif roll < 0.92:
            # the visit settled again (after its cancel, or while still settled)
            target = rng.choice(made)
            item = copy.deepcopy(target)
            item.setlinfo.setl_id = sid("S", w.new_id())
        elif roll < 0.96:
            item = center_pb2.ForwardItem(kind=rng.choice(["undo", "it's", ""]))
        else:
            item = center_pb2.ForwardItem(
                kind="cancel",
                setl_id=sid("S", 424242),
                cancel_id=sid("C", w.new_id()),
                cancel_time_ms=NOW,
            )
        item.seq = seq
        items.append(item)
    return center_pb2.ForwardRequest(
        header=center_pb2.NodeHeader(node_id=NODE, fixmedins_code=CODE), items=items
    )


def parse_copy(text: bytes) -> list[list[str | None]]:
    """COPY text rows back into values (None for NULL)."""
    rows = []
    for line in text.decode().split("\n")[:-1]:
        row: list[str | None] = []
        for v in line.split("\t"):
            if v == "\\N":
                row.append(None)
                continue
            out, i = [], 0
            while i < len(v):
                if v[i] == "\\":
                    out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[v[i + 1]])
                    i += 2
                else:
                    out.append(v[i])
                    i += 1
            row.append("".join(out))
        rows.append(row)
    return rows


def columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(width)]


def compare(w: World, req: center_pb2.ForwardRequest) -> list[tuple[int, int, str]]:
    plan = engine_rs.ForwardBatch(req.SerializeToString())
    rows = (w.settlements, w.legs, w.active, w.persons, w.accumulators)
    decided = plan.decide(
        w.node,
        (CODE, NODE, w.inst.hosp_lv, w.inst.admdvs),
        NOW,
        {w.policy.version: w.policy},
        *rows,
    )
    batch = twin.LedgerBatch.from_rows(CODE, *rows)
    expected = twin.decide(w.env, batch, req, NOW)
    assert decided.outcomes == expected
    answer = center_pb2.ForwardResponse.FromString(decided.answer)
    assert [(r.seq, r.outcome, r.detail) for r in answer.results] == expected
    # the writes
    assert decided.cancels == columns(batch.cancels, 4)
    acc_rows = [
        (*k, *(batch.accumulators[k][f] for f in ACC_FIELDS)) for k in sorted(batch.touched)
    ]
    width = 3 + len(ACC_FIELDS)
    assert decided.accumulators == (
        columns([r for r in acc_rows if r[:3] in batch.stored], width),
        columns([r for r in acc_rows if r[:3] not in batch.stored], width),
    )
    assert decided.moved == columns([(p, d) for p, d in sorted(batch.moved.items()) if d], 2)
    assert decided.differences == batch.differences
    assert decided.recorded == len(batch.recorded)
    got = parse_copy(decided.settlements_copy)
    names = engine_rs.CENTER_SETTLEMENT_COLUMNS
    for mine, theirs in zip(got, batch.recorded, strict=True):
        row = dict(zip(names, mine, strict=True))
        info, delta = row.pop("info"), row.pop("acc_delta")
        assert info is not None and delta is not None
        opened = w.vault.open_setlinfo(theirs["setl_id"], bytes.fromhex(info[2:]))
        assert common_pb2.SetlInfo.FromString(opened) == common_pb2.SetlInfo.FromString(
            w.vault.open_setlinfo(theirs["setl_id"], theirs["info"])
        )
        assert json.loads(delta) == theirs["acc_delta"]
        for name, value in row.items():
            want = theirs.get(name)
            assert value == (None if want is None else str(want)), name
    assert parse_copy(decided.legs_copy) == [[str(v) for v in leg] for leg in batch.legs]
    return expected


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_the_engine_decides_a_batch_as_the_python_twin_did(cipher: str) -> None:
    seen: set[int] = set()
    for seed in range(40):
        rng = random.Random(seed)
        w = World(rng, cipher)
        req = build_batch(w, rng, rng.randint(1, 60))
        seen |= {outcome for _, outcome, _ in compare(w, req)}
    # every outcome was reached, so every path above was compared
    assert seen == {
        center_pb2.APPLIED,
        center_pb2.APPLIED_WITH_DIFFERENCE,
        center_pb2.DUPLICATE,
        center_pb2.REJECTED,
        center_pb2.CONFLICT,
    }


def test_a_name_that_does_not_open_fails_the_batch_not_an_item() -> None:
    rng = random.Random(7)
    w = World(rng, "aes-256-gcm")
    items = [honest_settle(w, rng, 1, {}, {}) for _ in range(20)]
    item = next(i for i in items if i is not None)
    req = center_pb2.ForwardRequest(
        header=center_pb2.NodeHeader(node_id=NODE, fixmedins_code=CODE), items=[item]
    )
    assert compare(w, req)[0][1] in (center_pb2.APPLIED, center_pb2.APPLIED_WITH_DIFFERENCE)
    w.persons = [(r[0], b"\x01" + b"\0" * 40, *r[2:]) for r in w.persons]
    plan = engine_rs.ForwardBatch(req.SerializeToString())
    with pytest.raises(engine_rs.EngineError, match="does not open"):
        plan.decide(
            w.node,
            (CODE, NODE, w.inst.hosp_lv, w.inst.admdvs),
            NOW,
            {w.policy.version: w.policy},
            w.settlements,
            w.legs,
            w.active,
            w.persons,
            w.accumulators,
        )
