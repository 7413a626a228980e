"""The center's settlement from a front-end's summary (center mode, docs/architecture.md) and its
cancel, over PostgreSQL. (What front-ends in local mode forward: server/center/forwarded.py.)

The front-end preprocesses the lines and sends the sums; the center locks the person's
accumulators for the year and pool (`lock_accumulators`: a row lock held to commit, so two
front-ends or two center processes settling one person take turns in the database), runs the
same `fund_split` the front-end's local mode runs, and commits the ledger row, its legs, the
new accumulators, the account balance and the idempotency record in one transaction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

import engine_rs
from medsettle.v1 import catalog_pb2, center_pb2, common_pb2
from server import nodes
from server.center import bindings
from server.center.store.pg import Conn, lock_accumulators, write_accumulators
from server.codes import MED_TYPES, treatment_of, valid_date
from server.common import Outcome, id_prefix, local_date, out_of_order
from server.config import MAX_SETTLES_PER_CALL, Config
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Violations,
    field_error,
)
from server.fundsplit import RuleChoice, SplitContext, choose_rule, fund_split
from server.persons import ACC_FIELDS, READ_COLUMNS, PersonRow, open_person
from server.refdata import Institution
from server.security.datakeys import DataKeys
from server.security.pii import Vault


@dataclass
class CenterEnv:
    """Per-process caches of what rarely changes: policies by version, institutions; and the
    settings the center holds what front-ends send to."""

    tz_offset_min: int
    policies: dict[int, engine_rs.Policy]
    institutions: dict[str, Institution]
    lock: asyncio.Lock
    pii: Vault
    max_visit_fee_fen: int  # above it a forwarded settlement is absurd
    forward_node: engine_rs.CenterNode  # the engine's side of Forward: keys and settings

    @classmethod
    def new(
        cls,
        tz_offset_min: int,
        keys: DataKeys,
        pii_cipher: str,
        max_visit_fee_fen: int = Config.max_visit_fee_fen,
    ) -> CenterEnv:
        pii = Vault(keys, pii_cipher)
        node = engine_rs.CenterNode(keys.pii_seal, pii.version, tz_offset_min, max_visit_fee_fen)
        return cls(tz_offset_min, {}, {}, asyncio.Lock(), pii, max_visit_fee_fen, node)

    async def policy(self, conn: Conn, version: int) -> engine_rs.Policy:
        pol = self.policies.get(version)
        if pol is None:
            row = await (
                await conn.execute(
                    "SELECT canonical_json FROM policies WHERE version = %s", (version,)
                )
            ).fetchone()
            if row is None:
                raise FailedPrecondition(
                    f"policy_version: the center has no policy version {version}"
                )
            pol = engine_rs.Policy.from_json(row[0])
            self.policies[version] = pol
        return pol

    async def institution(self, conn: Conn, code: str) -> Institution:
        inst = self.institutions.get(code)
        if inst is None:
            row = await (
                await conn.execute(
                    "SELECT fixmedins_code, fixmedins_name, hosp_lv, admdvs FROM institutions"
                    " WHERE fixmedins_code = %s",
                    (code,),
                )
            ).fetchone()
            if row is None:
                raise NotFound(f"header.fixmedins_code: {code} is not known to the center")
            inst = Institution(row[0], row[1], int(row[2]), row[3])
            self.institutions[code] = inst
        return inst


def check_node_header(header: center_pb2.NodeHeader, *, needs_msgid: bool = True) -> None:
    v = Violations()
    v.require(len(header.node_id) == 2 and header.node_id.isdigit(), "header.node_id", "two digits")
    v.require(
        not header.instance_id or nodes.INSTANCE_ID.fullmatch(header.instance_id) is not None,
        "header.instance_id",
        "32 hex digits",
    )
    v.require(bool(header.fixmedins_code), "header.fixmedins_code", "is required")
    v.require(len(header.msgid) <= 64, "header.msgid", "at most 64 characters")
    if needs_msgid:
        v.require(bool(header.msgid), "header.msgid", "is required")
    v.raise_if_any()


def check_settle_batch(batch: center_pb2.CenterSettleBatch) -> None:
    """The checks of a SettleSummaries call as a whole (a failure refuses every item): its
    header names the node and institution, and every item's header is that header's, so
    what the door checked of the call's header (the client certificate's institution, the
    node's binding) holds for each item; at most MAX_SETTLES_PER_CALL items."""
    check_node_header(batch.header, needs_msgid=False)
    if not batch.calls:
        raise field_error("calls", "a batch needs at least one settle")
    if len(batch.calls) > MAX_SETTLES_PER_CALL:
        raise field_error(
            "calls", f"{len(batch.calls)} settles, more than {MAX_SETTLES_PER_CALL} in one call"
        )
    h = batch.header
    v = Violations()
    for i, call in enumerate(batch.calls):
        for name in ("fixmedins_code", "node_id", "instance_id"):
            v.require(
                getattr(call.header, name) == getattr(h, name),
                f"calls[{i}].header.{name}",
                f"differs from the batch's header.{name}",
            )
        if len(v.items) >= 20:
            break
    v.raise_if_any()


def check_settle_request(req: center_pb2.CenterSettleRequest, max_visit_fee_fen: int) -> None:
    check_node_header(req.header, needs_msgid=not req.pre_settle)
    h = req.header
    mine = id_prefix("S", h.fixmedins_code, h.node_id)
    v = Violations()
    v.require(
        req.pre_settle or nodes.issued_by(req.setl_id, "S", h.fixmedins_code, h.node_id),
        "setl_id",
        f"must be issued by node {h.node_id} of {h.fixmedins_code} ({mine}...)",
    )
    v.require(bool(req.mdtrt_id), "mdtrt_id", "is required")
    v.require(bool(req.psn_no), "psn_no", "is required")
    v.require(req.med_type in MED_TYPES, "med_type", f"{req.med_type} is not a known med_type")
    v.require(valid_date(req.begndate), "begndate", f"{req.begndate} is not a yyyymmdd date")
    v.require(req.policy_version > 0, "policy_version", "is required")
    s = req.summary
    parts = (s.fulamt_ownpay_amt, s.overlmt_amt, s.preselfpay_amt, s.inscp_scp_amt)
    for name in (
        "medfee_sumamt",
        "fulamt_ownpay_amt",
        "overlmt_amt",
        "preselfpay_amt",
        "inscp_scp_amt",
        "line_count",
    ):
        v.require(getattr(s, name) >= 0, f"summary.{name}", "must not be negative")
    v.require(s.line_count > 0, "summary.line_count", "a settlement needs fee lines")
    v.require(
        s.medfee_sumamt <= max_visit_fee_fen,
        "summary.medfee_sumamt",
        f"above this center's limit of {max_visit_fee_fen} fen a visit (max_visit_fee_fen)",
    )
    if all(p >= 0 for p in parts):
        v.require(
            sum(parts) == s.medfee_sumamt,
            "summary.medfee_sumamt",
            f"{s.medfee_sumamt} is not the sum of its four parts {sum(parts)}",
        )
    v.raise_if_any()


def no_person(psn_no: str) -> str:
    return f"psn_no: no insured person {psn_no} at the center"


def person_of(vault: Vault, row: tuple[Any, ...]) -> PersonRow:
    """A person as the center holds them, from a READ_COLUMNS row of `persons`."""
    r = open_person(vault, row)
    return PersonRow(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        bool(r[8]),
        bool(r[9]),
        bool(r[10]),
        r[11],
        r[12],
    )


async def center_person(conn: Conn, vault: Vault, psn_no: str, *, lock: bool) -> PersonRow:
    """The insured person as the center holds them (locked to the transaction's end with
    `lock`); NOT_FOUND when the center has no such person."""
    sql = f"SELECT {READ_COLUMNS} FROM persons WHERE psn_no = %s" + (" FOR UPDATE" if lock else "")
    row = await (await conn.execute(sql, (psn_no,))).fetchone()
    if row is None:
        raise NotFound(no_person(psn_no))
    return person_of(vault, row)


async def _replay(
    conn: Conn, vault: Vault, code: str, msgid: str, method: str, req_hash: bytes
) -> bytes | None:
    row = await (
        await conn.execute(
            "SELECT method, req_hash, response FROM idempotency"
            " WHERE fixmedins_code = %s AND msgid = %s",
            (code, msgid),
        )
    ).fetchone()
    if row is None:
        return None
    if row[0] != method or bytes(row[1]) != req_hash:
        raise AlreadyExists(
            f"header.msgid: {msgid} was already used for a different request ({row[0]})"
        )
    return vault.open_answer(code, msgid, bytes(row[2]))


INSERT_IDEMPOTENCY = "INSERT INTO idempotency VALUES (%s, %s, %s, %s, %s, %s, %s)"


def remembered(
    vault: Vault,
    code: str,
    msgid: str,
    method: str,
    req_hash: bytes,
    resp: bytes,
    ref: str,
    now: int,
) -> tuple[Any, ...]:
    """The idempotency record of an answer (INSERT_IDEMPOTENCY), the answer sealed."""
    return (code, msgid, method, req_hash, vault.seal_answer(code, msgid, resp), ref, now)


async def _refuse_undone(conn: Conn, setl_id: str) -> None:
    """A retry of a settle the front-end could not keep, and cancelled here since (its
    compensating cancel): the stored answer would say settled; refuse instead."""
    row = await (
        await conn.execute(
            "SELECT state, cancel_id FROM settlements WHERE setl_id = %s", (setl_id,)
        )
    ).fetchone()
    if row is not None and row[0] != common_pb2.SETTLED:
        raise FailedPrecondition(
            f"setl_id: {setl_id} was cancelled since ({row[1]}); settle again with a new msgid"
        )


async def settle_summary(
    conn: Conn,
    env: CenterEnv,
    req: center_pb2.CenterSettleRequest,
    req_hash: bytes,
    now: int,
    outcome: Outcome | None = None,
) -> bytes:
    """Settle (or, with `pre_settle`, only compute) one visit from its summary."""
    h = req.header
    await bindings.claim(conn, h, now, bind=not req.pre_settle)
    if not req.pre_settle:
        replay = await _replay(conn, env.pii, h.fixmedins_code, h.msgid, "SettleSummary", req_hash)
        if replay is not None:
            await _refuse_undone(conn, req.setl_id)
            if outcome is not None:
                outcome.replayed = True
            return replay
        taken = await (
            await conn.execute("SELECT msgid FROM settlements WHERE setl_id = %s", (req.setl_id,))
        ).fetchone()
        if taken is not None:
            raise AlreadyExists(f"setl_id: {req.setl_id} was already settled by {taken[0]}")
        active = await (
            await conn.execute(
                "SELECT setl_id FROM settlements WHERE fixmedins_code = %s AND mdtrt_id = %s"
                " AND state = 1",
                (h.fixmedins_code, req.mdtrt_id),
            )
        ).fetchone()
        if active is not None:
            raise FailedPrecondition(f"mdtrt_id: {req.mdtrt_id} is already settled as {active[0]}")
    inst = await env.institution(conn, h.fixmedins_code)
    policy = await env.policy(conn, req.policy_version)
    person = await center_person(conn, env.pii, req.psn_no, lock=not req.pre_settle)
    if req.insutype != person.insutype:
        raise field_error("insutype", f"the person is insured under {person.insutype}")
    ctx = split_context(req, inst)
    choice = choose_rule(policy, ctx, person)
    if req.pre_settle:
        before = await _current(conn, person.psn_no, choice.year, choice.pool)
    else:
        before = await lock_accumulators(conn, person.psn_no, choice.year, choice.pool)
    info, after, acc_after = split_summary(policy, choice, ctx, person, req, before)
    if req.pre_settle:
        return center_pb2.CenterSettleResponse(
            setlinfo=info, accumulators=acc_after
        ).SerializeToString()
    done = settled(env, req, req_hash, inst, choice, info, before, after, acc_after, now)
    # The writes go in one round trip (pipeline mode): none of them reads what another
    # returns, and an error in any (a visit settled meanwhile) still fails the transaction.
    async with conn.pipeline():
        await conn.execute(INSERT_SETTLEMENT, done.row)
        async with conn.cursor() as cur:
            await cur.executemany(INSERT_LEG, done.legs)
        await write_accumulators(conn, person.psn_no, choice.year, choice.pool, after)
        if info.acct_pay:
            await conn.execute(
                "UPDATE persons SET balc = balc - %s WHERE psn_no = %s",
                (info.acct_pay, person.psn_no),
            )
        await conn.execute(INSERT_IDEMPOTENCY, done.remembered)
    return done.answer


# A settlement's row as `settled` makes it (name, SQL type), and its fund legs'.
SETTLEMENT_COLUMNS = (
    ("setl_id", "text"),
    ("node_id", "text"),
    ("fixmedins_code", "text"),
    ("mdtrt_id", "text"),
    ("psn_no", "text"),
    ("insutype", "int"),
    ("clr_type", "int"),
    ("msgid", "text"),
    ("invono", "text"),
    ("setl_time", "bigint"),
    ("setl_date", "int"),
    ("state", "int"),
    ("mode", "int"),
    ("offline", "int"),
    ("medfee_sumamt", "bigint"),
    ("fund_pay_sumamt", "bigint"),
    ("acct_pay", "bigint"),
    ("psn_cash_pay", "bigint"),
    ("acc_year", "int"),
    ("acc_pool", "text"),
    ("acc_delta", "jsonb"),
    ("info", "bytea"),
    ("received_at", "bigint"),
)
LEG_COLUMNS = (
    ("setl_id", "text"),
    ("fund_pay_type", "text"),
    ("base", "bigint"),
    ("amount", "bigint"),
)
IDEMPOTENCY_COLUMNS = (
    ("fixmedins_code", "text"),
    ("msgid", "text"),
    ("method", "text"),
    ("req_hash", "bytea"),
    ("response", "bytea"),
    ("ref", "text"),
    ("created_at", "bigint"),
)
INSERT_SETTLEMENT = (
    f"INSERT INTO settlements ({', '.join(c for c, _ in SETTLEMENT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(SETTLEMENT_COLUMNS))})"
)
INSERT_LEG = "INSERT INTO setl_legs VALUES (%s, %s, %s, %s)"


def split_context(req: center_pb2.CenterSettleRequest, inst: Institution) -> SplitContext:
    """What the split needs of a center-mode call's visit and its institution."""
    return SplitContext(
        fixmedins_code=inst.fixmedins_code,
        hosp_lv=inst.hosp_lv,
        treatment_admdvs=inst.admdvs,
        mdtrt_id=req.mdtrt_id,
        insutype=req.insutype,
        med_type=req.med_type,
        treatment=treatment_of(req.med_type),
        begndate=req.begndate,
    )


def split_summary(
    policy: engine_rs.Policy,
    choice: RuleChoice,
    ctx: SplitContext,
    person: PersonRow,
    req: center_pb2.CenterSettleRequest,
    before: dict[str, int],
) -> tuple[common_pb2.SetlInfo, dict[str, int], catalog_pb2.Accumulator]:
    """The center-mode settlement of `req`'s summary (no id, time or state yet), the
    accumulators after it, and those as the answer carries them."""
    s = req.summary
    summary = engine_rs.Summary(
        medfee_sumamt=s.medfee_sumamt,
        fulamt_ownpay_amt=s.fulamt_ownpay_amt,
        overlmt_amt=s.overlmt_amt,
        preselfpay_amt=s.preselfpay_amt,
        inscp_scp_amt=s.inscp_scp_amt,
        line_count=s.line_count,
    )
    info, after = fund_split(
        policy, choice, ctx, person, summary, before, req.acct_used_flag, req.invono
    )
    info.categories.extend(s.categories)
    info.catalog_version = req.catalog_version
    info.mode = common_pb2.CENTER
    return info, after, catalog_pb2.Accumulator(year=choice.year, pool=choice.pool, **after)


@dataclass(frozen=True)
class Settled:
    """A center-mode settlement ready to write: the answer and its rows."""

    answer: bytes
    row: tuple[Any, ...]  # INSERT_SETTLEMENT
    legs: list[tuple[Any, ...]]  # INSERT_LEG
    remembered: tuple[Any, ...]  # INSERT_IDEMPOTENCY


def settled(
    env: CenterEnv,
    req: center_pb2.CenterSettleRequest,
    req_hash: bytes,
    inst: Institution,
    choice: RuleChoice,
    info: common_pb2.SetlInfo,
    before: dict[str, int],
    after: dict[str, int],
    acc_after: catalog_pb2.Accumulator,
    now: int,
) -> Settled:
    """`info` stamped as settled now under the call's ids, its answer, and its rows."""
    h = req.header
    info.setl_id = req.setl_id
    info.msgid = h.msgid
    info.state = common_pb2.SETTLED
    info.setl_time.FromMilliseconds(now)
    answer = center_pb2.CenterSettleResponse(
        setlinfo=info, accumulators=acc_after
    ).SerializeToString()
    delta = {f: after[f] - before[f] for f in ACC_FIELDS}
    row = (
        req.setl_id,
        h.node_id,
        inst.fixmedins_code,
        req.mdtrt_id,
        info.psn_no,
        info.insutype,
        info.clr_type,
        h.msgid,
        req.invono,
        now,
        local_date(now, env.tz_offset_min),
        common_pb2.SETTLED,
        common_pb2.CENTER,
        0,
        info.medfee_sumamt,
        info.fund_pay_sumamt,
        info.acct_pay,
        info.psn_cash_pay,
        choice.year,
        choice.pool,
        Jsonb(delta),
        env.pii.seal_setlinfo(req.setl_id, info.SerializeToString()),
        now,
    )
    legs = [(req.setl_id, g.fund_pay_type, g.inscp_scp_amt, g.fund_payamt) for g in info.setldetail]
    memo = remembered(
        env.pii, h.fixmedins_code, h.msgid, "SettleSummary", req_hash, answer, req.setl_id, now
    )
    return Settled(answer, row, legs, memo)


async def _current(conn: Conn, psn_no: str, year: int, pool: str) -> dict[str, int]:
    row = await (
        await conn.execute(
            f"SELECT {', '.join(ACC_FIELDS)} FROM accumulators"
            " WHERE psn_no = %s AND year = %s AND pool = %s ORDER BY opening LIMIT 1",
            (psn_no, year, pool),
        )
    ).fetchone()
    return dict(zip(ACC_FIELDS, row, strict=True)) if row else dict.fromkeys(ACC_FIELDS, 0)


async def _refuse_out_of_order(conn: Conn, code: str, setl_id: str, row: Any) -> None:
    """As at the front-end (settle.refuse_out_of_order), over every institution's ledger: a
    settlement is cancelled only while it is the person's latest in its year and pool (the
    accumulator row lock is held, so none can be added meanwhile)."""
    later = await (
        await conn.execute(
            "SELECT setl_id, fixmedins_code FROM settlements WHERE psn_no = %s AND acc_year = %s"
            " AND acc_pool = %s AND state = 1 AND (setl_time, setl_id) > (%s, %s)"
            " ORDER BY setl_time DESC, setl_id DESC",
            (row[1], row[4], row[5], row[8], setl_id),
        )
    ).fetchall()
    if later:
        raise out_of_order(setl_id, row[4], row[5], later, code)


async def cancel(
    conn: Conn, env: CenterEnv, req: center_pb2.CenterCancelRequest, req_hash: bytes, now: int
) -> bytes:
    check_node_header(req.header)
    if not req.setl_id:
        raise field_error("setl_id", "is required")
    h = req.header
    if not nodes.issued_by(req.cancel_id, "C", h.fixmedins_code, h.node_id):
        mine = id_prefix("C", h.fixmedins_code, h.node_id)
        raise field_error("cancel_id", f"must be issued by this node ({mine}...)")
    await bindings.claim(conn, h, now)
    replay = await _replay(conn, env.pii, h.fixmedins_code, h.msgid, "CancelSettlement", req_hash)
    if replay is not None:
        return replay
    row: Any = await (
        await conn.execute(
            "SELECT fixmedins_code, psn_no, state, acct_pay, acc_year, acc_pool, acc_delta, info,"
            " setl_time FROM settlements WHERE setl_id = %s FOR UPDATE",
            (req.setl_id,),
        )
    ).fetchone()
    if row is None or row[0] != h.fixmedins_code:
        raise NotFound(f"setl_id: no settlement {req.setl_id} of this institution")
    if row[2] != common_pb2.SETTLED:
        raise FailedPrecondition(f"setl_id: {req.setl_id} is already cancelled")
    psn_no, acct_pay, year, pool, delta = row[1], row[3], row[4], row[5], row[6]
    acc = await lock_accumulators(conn, psn_no, year, pool)
    await _refuse_out_of_order(conn, h.fixmedins_code, req.setl_id, row)
    restored = {f: acc[f] - delta[f] for f in ACC_FIELDS}
    await write_accumulators(conn, psn_no, year, pool, restored)
    if acct_pay:
        await conn.execute(
            "UPDATE persons SET balc = balc + %s WHERE psn_no = %s", (acct_pay, psn_no)
        )
    await conn.execute(
        "UPDATE settlements SET state = 2, cancel_id = %s, cancel_msgid = %s, cancel_time = %s,"
        " cancel_date = %s WHERE setl_id = %s",
        (req.cancel_id, h.msgid, now, local_date(now, env.tz_offset_min), req.setl_id),
    )
    info = common_pb2.SetlInfo.FromString(env.pii.open_setlinfo(req.setl_id, bytes(row[7])))
    info.state = common_pb2.CANCELLED
    info.cancel_id = req.cancel_id
    info.cancel_msgid = h.msgid
    info.cancel_time.FromMilliseconds(now)
    resp = center_pb2.CenterSettleResponse(
        setlinfo=info, accumulators=catalog_pb2.Accumulator(year=year, pool=pool, **restored)
    ).SerializeToString()
    memo = remembered(
        env.pii, h.fixmedins_code, h.msgid, "CancelSettlement", req_hash, resp, req.setl_id, now
    )
    await conn.execute(INSERT_IDEMPOTENCY, memo)
    return resp
