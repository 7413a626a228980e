"""Pre-settlement (2206/2303), settlement (2207/2304), its cancel (2208/2305), reversal by
message id (2601), and settlement queries.

The computation both PreSettle and Settle run (the visit's lines through the engine's
preprocessing with the institution's catalog, then the fund split against the person's
accumulators for the year and the rule's pool) and a local-mode Settle whole run in the
ledger, in Rust on the store's connection (engine_rs/src/ledger/settle.rs): Settle inside the
writer's transaction, so the accumulators it reads are the latest committed ones, committing
the settlement, its legs and line results, the new accumulators, the account balance, an
outbox row for the center, the idempotency record and the audit record together. A cancel's
checks and undo run there too (engine_rs/src/ledger/cancel.rs), a local-mode
CancelSettlement whole in the same batches as the settles. What is here: the calls' shapes
for the store, center mode's steps around the computation, reversals and queries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import engine_rs
from medsettle.v1 import common_pb2, settlement_pb2
from server import metrics
from server.common import (
    Caller,
    Env,
    require_fresh_refdata,
)
from server.errors import FailedPrecondition, NotFound, field_error, refusal
from server.frontend.store.sqlite import LedgerCall, Store, ledger_of
from server.frontend.visits import cancel_registration, load_visit
from server.security.pii import Vault


@dataclass(frozen=True)
class OfflineLimits:
    """How far a center-mode front-end may settle on its own while the center is down: the
    policy's `offline` table when the policy in force has one, else these settings (the
    ledger checks them: engine_rs/src/ledger/settle.rs)."""

    max_medfee_fen: int
    max_per_day: int


@dataclass(frozen=True)
class Ask:
    """Center mode's question for the center (engine_rs/src/ledger/center_mode.rs
    `prepare`), and what the keep needs once the center has answered (`keep_call`)."""

    request: bytes  # the CenterSettleRequest, encoded by the ledger: sent as it is
    insured_region: str  # which center settles it
    acc_year: int
    acc_pool: str
    line_results: bytes  # store.line_results layout
    lines_digest: bytes  # the lines computed from: unchanged when the answer is kept?


# A ledger call's outcome (`Ledger.settle_batch`): the answer's bytes, whether it is a stored
# one replayed, its setl_id, and the engine's times (preprocess, split) when it computed.
LedgerOutcome = tuple[bytes, bool, str, tuple[int, int] | None]


def _in_ledger(conn: sqlite3.Connection, caller: Caller) -> tuple[engine_rs.Ledger, Any, Any]:
    """The connection's ledger and the reference data an operation on it settles with
    (refused unless a policy and a catalog are loaded)."""
    require_fresh_refdata(caller)
    return (
        ledger_of(conn),
        caller.snap.policy,
        caller.snap.catalog(conn, caller.inst.fixmedins_code),
    )


def center_ask(
    conn: sqlite3.Connection,
    env: Env,
    caller: Caller,
    data: bytes,
    req_hash: bytes | None,
    instance_id: str,
) -> bytes | Ask:
    """Center mode, before the center is asked (in the ledger; changes nothing), for the
    SettleRequest whose bytes are `data`: for a Settle (`req_hash`) the msgid's stored
    answer when there is one; otherwise the visit's fees preprocessed and split as a local
    settle would, and the summary for the center, from this front-end machine
    (`instance_id`)."""
    ledger, policy, catalog = _in_ledger(conn, caller)
    try:
        got = ledger.prepare_center(
            env.ledger_node,
            data,
            caller.for_ledger(""),
            policy,
            catalog,
            req_hash,
            instance_id,
        )
    except engine_rs.Refused as exc:
        raise refusal(exc) from None
    if isinstance(got, bytes):
        return got
    request, region, year, pool, blob, digest, took = got
    metrics.engine_time(*took)
    return Ask(request, region, year, pool, blob, digest)


def pre_settle(
    conn: sqlite3.Connection, env: Env, caller: Caller, req: settlement_pb2.SettleRequest
) -> bytes:
    """The pre-settlement's answer (a SettleResponse's bytes, from the ledger)."""
    ledger, policy, catalog = _in_ledger(conn, caller)
    try:
        answer, took = ledger.pre_settle(
            env.ledger_node,
            req.SerializeToString(),
            caller.for_ledger(""),
            policy,
            catalog,
        )
    except engine_rs.Refused as exc:
        raise refusal(exc) from None
    metrics.engine_time(*took)
    return answer


def settle_call(
    env: Env,
    header_of: Callable[[sqlite3.Connection], Caller],
    data: bytes,
    req_hash: bytes,
    now: int,
    rpc: str,
    offline: OfflineLimits | None = None,
) -> LedgerCall:
    """A local-mode Settle as the ledger runs it whole (engine_rs/src/ledger/settle.rs), in
    the store's next batch with the other settles (the GIL released): the msgid's stored
    answer replayed, or the visit computed and committed here with an outbox row that carries
    it to the center, its answer stored with the msgid; the audit record of either. With
    `offline`, the emergency plan of a center-mode front-end whose center is unreachable:
    the same, marked offline, within the limits. `header_of` authenticates the caller in the
    batch's transaction; `data` is the SettleRequest's bytes. Run it with `in_batch`."""
    limits = None if offline is None else (offline.max_medfee_fen, offline.max_per_day)
    mode = "local" if offline is None else "offline"
    return _ledger_call(env, header_of, data, req_hash, now, rpc, limits, None, mode)


def keep_call(
    env: Env,
    header_of: Callable[[sqlite3.Connection], Caller],
    data: bytes,
    req_hash: bytes,
    now: int,
    rpc: str,
    asked: Ask,
    answer: bytes,
) -> LedgerCall:
    """Center mode's last step as the ledger runs it whole (engine_rs/src/ledger/center_mode.rs),
    in the store's next batch: the msgid's stored answer replayed, or the settlement the
    center committed kept here, refused when the visit or its lines changed since they were
    sent or its undo is due; the center's accumulators become this front-end's cache, the
    answer is stored with the msgid, and either is audited. Run it with `in_batch`. (The
    center has committed: stale reference data does not refuse the keep.)"""
    kept = (
        answer,  # the center's CenterSettleResponse, as it came
        asked.acc_year,
        asked.acc_pool,
        asked.line_results,
        asked.lines_digest,
    )
    return _ledger_call(env, header_of, data, req_hash, now, rpc, None, kept, "center")


def _ledger_call(
    env: Env,
    header_of: Callable[[sqlite3.Connection], Caller],
    data: bytes,
    req_hash: bytes,
    now: int,
    rpc: str,
    limits: tuple[int, int] | None,
    kept: tuple[bytes, int, str, bytes, bytes] | None,
    mode: str,
) -> LedgerCall:
    """One Settle (its request's bytes: `data`) of the store's next batch as
    `Ledger.settle_batch` takes it; `header_of` authenticates the caller in the batch's
    transaction first. Its answer is counted in the business metrics under `mode` ("local",
    "offline", "center") with its batch."""

    def prepare(conn: sqlite3.Connection) -> tuple[Any, ...]:
        caller = header_of(conn)
        refdata = None  # a keep settles nothing here (the center has): it needs none
        if kept is None:
            _, policy, catalog = _in_ledger(conn, caller)
            refdata = (policy, catalog)
        return ("Settle", data, req_hash, now, caller.for_ledger(rpc), refdata, limits, kept)

    def count(tally: metrics.Tally, done: LedgerOutcome) -> None:
        tally.settle_answered(mode, "frontend", done[0], done[1])

    return LedgerCall(env.ledger_node, "Settle", prepare, count)


def cancel_call(
    env: Env,
    header_of: Callable[[sqlite3.Connection], Caller],
    data: bytes,
    req_hash: bytes,
    now: int,
    rpc: str,
) -> LedgerCall:
    """A local-mode CancelSettlement as the ledger runs it whole
    (engine_rs/src/ledger/cancel.rs `cancel_call`), in the store's next batch with the
    settles: the msgid's stored answer replayed, or the settlement cancelled (see `cancel`)
    with its answer stored with the msgid; the audit record of either. `data` is the
    CancelSettlementRequest's bytes."""

    def prepare(conn: sqlite3.Connection) -> tuple[Any, ...]:
        who = header_of(conn).for_ledger(rpc)
        return ("CancelSettlement", data, req_hash, now, who, None, None, None)

    def count(tally: metrics.Tally, done: LedgerOutcome) -> None:
        tally.cancel_answered("local", "frontend", done[0], done[1])

    return LedgerCall(env.ledger_node, "CancelSettlement", prepare, count)


async def in_batch(store: Store, call: LedgerCall) -> bytes:
    """Run a ledger call (`settle_call`, `keep_call`, `cancel_call`) in the store's next
    batch: the answer's bytes once durable (counted in the business metrics already, with
    the batch)."""
    try:
        done: LedgerOutcome = await store.write(call)
    except engine_rs.Refused as exc:
        raise refusal(exc) from None
    answer, replayed, _, took = done
    if took is not None:
        metrics.engine_time(*took)
    if replayed:
        metrics.REPLAYS.labels(call.method).inc()
    return answer


# ---------------------------------------------------------------------------- cancel
_SETL_COLS = (
    "id, setl_id, fixmedins_code, mdtrt_id, visit_id, psn_no, state, acct_pay, acc_year,"
    " acc_pool, acc_delta, info, cancel_id, cancel_msgid, cancel_time, mode"
)


def load_settlement(conn: sqlite3.Connection, caller: Caller, setl_id: str) -> tuple[Any, ...]:
    if not setl_id:
        raise field_error("setl_id", "is required")
    row = conn.execute(
        f"SELECT {_SETL_COLS} FROM settlements WHERE setl_id = ?", (setl_id,)
    ).fetchone()
    if row is None or row[2] != caller.inst.fixmedins_code:
        raise NotFound(f"setl_id: no settlement {setl_id} at this institution")
    return tuple(row)


def setl_info(vault: Vault, row: tuple[Any, ...]) -> common_pb2.SetlInfo:
    """A stored settlement (sealed: it names the person) with its current state."""
    info = common_pb2.SetlInfo.FromString(vault.open_setlinfo(row[1], bytes(row[11])))
    info.state = row[6]
    if row[6] == common_pb2.CANCELLED:
        info.cancel_id = row[12]
        info.cancel_msgid = row[13]
        info.cancel_time.FromMilliseconds(row[14])
    return info


@dataclass(frozen=True)
class Cancellable:
    """A settlement a cancel may undo now (engine_rs/src/ledger/cancel.rs `cancellable`)."""

    rowid: int
    setl_id: str
    psn_no: str
    mode: int  # SettlementMode


def cancellable(
    conn: sqlite3.Connection, caller: Caller, setl_id: str, mdtrt_id: str, psn_no: str
) -> Cancellable:
    """The settlement a cancel names, after every check this front-end can make (center
    mode makes them all before it asks the center to cancel, so a refused cancel changes
    nothing on either side)."""
    try:
        row = ledger_of(conn).cancellable(caller.for_ledger(""), setl_id, mdtrt_id, psn_no)
    except engine_rs.Refused as exc:
        raise refusal(exc) from None
    return Cancellable(*row)


def cancel(
    conn: sqlite3.Connection,
    env: Env,
    caller: Caller,
    setl_id: str,
    mdtrt_id: str,
    psn_no: str,
    msgid: str,
    now: int,
) -> tuple[common_pb2.SetlInfo, str]:
    """The settlement cancelled in the connection's transaction, after every check (the
    ledger's `cancel`): its SetlInfo, cancelled, and the setl_id. Reverse and center mode's
    keep of a cancel use it inside their journal; a local CancelSettlement is `cancel_call`."""
    try:
        info, _ = ledger_of(conn).cancel(
            env.ledger_node, caller.for_ledger(""), setl_id, mdtrt_id, psn_no, msgid, now
        )
    except engine_rs.Refused as exc:
        raise refusal(exc) from None
    return common_pb2.SetlInfo.FromString(info), setl_id


def cancel_answer(
    conn: sqlite3.Connection,
    env: Env,
    caller: Caller,
    req: settlement_pb2.CancelSettlementRequest,
    now: int,
) -> tuple[bytes, str]:
    """A CancelSettlement's answer (a SettleResponse's bytes) and its ref, for a journal
    kept in Python (center mode's keep of a cancel the center made)."""
    info, ref = cancel(
        conn, env, caller, req.setl_id, req.mdtrt_id, req.psn_no, req.header.msgid, now
    )
    return settlement_pb2.SettleResponse(setlinfo=info).SerializeToString(), ref


# ---------------------------------------------------------------------------- reversal
def reversal_target(
    conn: sqlite3.Connection, caller: Caller, req: settlement_pb2.ReverseRequest
) -> tuple[str, str] | None:
    """The (method, ref) of the call a Reverse names, after the checks of the request (center
    mode makes them before it cancels at the center); None when that call never arrived."""
    if not req.omsgid:
        raise field_error("omsgid", "is required")
    if req.omsgid == req.header.msgid:
        raise field_error("omsgid", "must differ from this call's own msgid")
    row = conn.execute(
        "SELECT method, ref FROM idempotency WHERE fixmedins_code = ? AND msgid = ?",
        (caller.inst.fixmedins_code, req.omsgid),
    ).fetchone()
    if row is None:
        return None
    method, ref = row
    if req.oinfno and req.oinfno != method:
        raise field_error("oinfno", f"the call {req.omsgid} was {method}, not {req.oinfno}")
    return str(method), str(ref)


def reverse(
    conn: sqlite3.Connection,
    env: Env,
    caller: Caller,
    req: settlement_pb2.ReverseRequest,
    now: int,
) -> tuple[bytes, str]:
    """Undo the call `omsgid` made; burn the msgid when it never arrived."""
    code = caller.inst.fixmedins_code
    row = reversal_target(conn, caller, req)
    resp = settlement_pb2.ReverseResponse(omsgid=req.omsgid)
    if row is None:
        conn.execute(
            "INSERT INTO idempotency VALUES (?, ?, 'REVERSED', x'', x'', ?, ?)",
            (code, req.omsgid, req.header.msgid, now),
        )
        resp.original_found = False
        resp.reversed = f"{req.omsgid} never arrived; it is now refused if it does"
        return resp.SerializeToString(), req.omsgid
    method, ref = row
    resp.original_found = True
    if method == "Settle":
        srow = load_settlement(conn, caller, ref)
        if srow[6] == common_pb2.CANCELLED:
            resp.reversed = f"Settle: settlement {ref} was already cancelled ({srow[12]})"
            resp.setlinfo.CopyFrom(setl_info(caller.pii, srow))
        else:
            info, _ = cancel(conn, env, caller, ref, "", "", req.header.msgid, now)
            resp.reversed = f"Settle: settlement {ref} cancelled as {info.cancel_id}"
            resp.setlinfo.CopyFrom(info)
    elif method == "Register":
        visit = load_visit(conn, caller, ref)
        if visit.state == "cancelled":
            resp.reversed = f"Register: visit {ref} was already cancelled"
        else:
            cancel_registration(conn, caller, ref, "")
            resp.reversed = f"Register: visit {ref} cancelled"
    elif method in ("UploadFees", "StreamFees"):
        visit = load_visit(conn, caller, ref)
        if visit.state != "registered":
            raise FailedPrecondition(
                f"omsgid: visit {ref} is {visit.state}; its fees cannot be reversed"
            )
        n = conn.execute(
            "DELETE FROM fee_lines WHERE visit_id = ? AND msgid = ?", (visit.id, req.omsgid)
        ).rowcount
        resp.reversed = f"{method}: {n} lines of visit {ref} deleted"
    else:
        raise FailedPrecondition(
            f"omsgid: {method} cannot be reversed (Register, UploadFees, StreamFees, Settle can)"
        )
    return resp.SerializeToString(), ref


# ---------------------------------------------------------------------------- queries
def get_settlement(
    conn: sqlite3.Connection, caller: Caller, setl_id: str
) -> settlement_pb2.SettleResponse:
    row = load_settlement(conn, caller, setl_id)
    return settlement_pb2.SettleResponse(setlinfo=setl_info(caller.pii, row))


def query_settlements(
    conn: sqlite3.Connection, caller: Caller, req: settlement_pb2.QuerySettlementsRequest
) -> settlement_pb2.QuerySettlementsResponse:
    limit = req.limit or 1000
    if not 0 < limit <= 10_000:
        raise field_error("limit", "must be between 1 and 10000")
    code = caller.inst.fixmedins_code
    which = req.WhichOneof("by")
    if which == "mdtrt_id":
        load_visit(conn, caller, req.mdtrt_id)
        where, args = "mdtrt_id = ?", (req.mdtrt_id,)
    elif which == "invono":
        if not req.invono:
            raise field_error("invono", "is empty")
        where, args = "invono = ? AND invono <> ''", (req.invono,)
    elif which == "time_range":
        begin = req.time_range.begin.ToMilliseconds()
        end = req.time_range.end.ToMilliseconds()
        if not req.time_range.HasField("end") or end <= begin:
            raise field_error("time_range.end", "must be after time_range.begin")
        where, args = "setl_time >= ? AND setl_time < ?", (begin, end)  # type: ignore[assignment]
    else:
        raise field_error("by", "give mdtrt_id, invono or time_range")
    rows = conn.execute(
        f"SELECT {_SETL_COLS} FROM settlements WHERE fixmedins_code = ? AND {where}"
        " ORDER BY id LIMIT ?",
        (code, *args, limit),
    ).fetchall()
    return settlement_pb2.QuerySettlementsResponse(
        settlements=[setl_info(caller.pii, tuple(r)) for r in rows]
    )
