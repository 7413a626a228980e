"""What every operation shares: the caller's identity from its sign_no, idempotency by
(institution, msgid), id issuing, clock and day arithmetic."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

import engine_rs
from server import metrics
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Violations,
    field_error,
)
from server.refdata import Institution, RefData, Snapshot
from server.security import audit, roles
from server.security.datakeys import DataKeys
from server.security.pii import Vault

MSGID_MAX = 64
REVERSED = "REVERSED"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def local_date(ms: int, tz_offset_min: int) -> int:
    """The yyyymmdd of an instant in the configured local time (reconciliation days)."""
    t = time.gmtime(ms / 1000 + tz_offset_min * 60)
    return t.tm_year * 10000 + t.tm_mon * 100 + t.tm_mday


class SignInCache:
    """Sign-ins this process has read, trusted for `ttl_ms`: a sign-out in another worker
    process takes effect here within that time (expiry is exact: it is checked on `now`)."""

    def __init__(self, ttl_ms: int = 2000) -> None:
        self.ttl_ms = ttl_ms
        self._rows: dict[str, tuple[tuple[Any, ...], int]] = {}

    def get(self, sign_no: str, now: int) -> tuple[Any, ...] | None:
        hit = self._rows.get(sign_no)
        if hit is None or now - hit[1] > self.ttl_ms:
            return None
        return hit[0]

    def put(self, sign_no: str, row: tuple[Any, ...], now: int) -> None:
        if len(self._rows) > 10_000:
            self._rows.clear()
        self._rows[sign_no] = (tuple(row), now)

    def drop(self, sign_no: str) -> None:
        self._rows.pop(sign_no, None)


@dataclass
class Env:
    """Per-process settings the operations need."""

    refdata: RefData
    node_id: str
    sign_ttl_s: int
    tz_offset_min: int
    mode: int  # SettlementMode of this front-end
    max_lines_per_call: int
    max_lines_per_visit: int
    keys: DataKeys
    pii: Vault
    signins: SignInCache = field(default_factory=SignInCache)
    # Sanity bounds on money (fen) and the sign-in lock-out (config.py explains them).
    max_line_fee_fen: int = 1_000_000_000
    max_visit_fee_fen: int = 10_000_000_000
    signin_max_failures: int = 5
    signin_lockout_s: int = 900
    # What the ledger's settle operation needs of this node (engine_rs/src/ledger/settle.rs).
    ledger_node: engine_rs.LedgerNode = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ledger_node = engine_rs.LedgerNode(
            self.node_id, self.tz_offset_min, self.keys.pii_seal, self.pii.version, self.keys.audit
        )


@dataclass
class Caller:
    inst: Institution
    opter: str
    snap: Snapshot
    roles: frozenset[str]
    pii: Vault

    def for_ledger(self, rpc: str) -> tuple[str, int, str, str, str, str]:
        """The caller as the ledger's operations take it (engine_rs.Ledger.settle)."""
        inst = self.inst
        return (
            inst.fixmedins_code,
            inst.hosp_lv,
            inst.admdvs,
            self.opter,
            roles.render(self.roles),
            rpc,
        )


class HeaderFields(Protocol):
    """A request header as the checks read it: the message's, or the door's
    (server/door.py `Header`)."""

    @property
    def msgid(self) -> str: ...
    @property
    def fixmedins_code(self) -> str: ...
    @property
    def opter(self) -> str: ...
    @property
    def sign_no(self) -> str: ...
    @property
    def mdtrtarea_admvs(self) -> str: ...


def check_header(header: HeaderFields, *, needs_msgid: bool, needs_sign: bool = True) -> None:
    """Field checks of a header, before anything is read."""
    v = Violations()
    v.require(bool(header.fixmedins_code), "header.fixmedins_code", "is required")
    v.require(bool(header.opter), "header.opter", "is required")
    if needs_sign:
        v.require(bool(header.sign_no), "header.sign_no", "is required (SignIn first)")
    if needs_msgid:
        v.require(bool(header.msgid), "header.msgid", "is required on a state-changing call")
        v.require(len(header.msgid) <= MSGID_MAX, "header.msgid", f"longer than {MSGID_MAX}")
    v.raise_if_any()


def authenticate(
    conn: sqlite3.Connection,
    env: Env,
    header: HeaderFields,
    now: int,
    method: str,
) -> Caller:
    """The signed-in caller, or UNAUTHENTICATED; PERMISSION_DENIED unless the operator the
    sign_no was issued to is the header's and holds a role `method` requires. The
    institution must exist and own the sign_no; a signed-out or expired sign_no is refused."""
    snap = env.refdata.current(conn)
    row = env.signins.get(header.sign_no, now)
    if row is None:
        found = conn.execute(
            "SELECT fixmedins_code, expires_at, sign_out_time, opter, roles FROM signins"
            " WHERE sign_no = ?",
            (header.sign_no,),
        ).fetchone()
        if found is not None:
            row = (*found[:4], roles.parse(found[4]))
            env.signins.put(header.sign_no, row, now)
    if row is None or row[0] != header.fixmedins_code:
        raise Unauthenticated("header.sign_no: unknown for this institution; SignIn first")
    if row[2] is not None:
        raise Unauthenticated("header.sign_no: signed out; SignIn again")
    if now >= row[1]:
        raise Unauthenticated("header.sign_no: expired; SignIn again")
    if header.opter != row[3]:
        raise PermissionDenied(
            f"header.opter: {header.opter} is not the operator this sign_no was issued to"
        )
    roles.require(method, roles.FRONTEND_RULES, row[4], f"operator {row[3]}")
    inst = snap.institutions.get(header.fixmedins_code)
    if inst is None:  # pragma: no cover - sign-in checked it; an institution removed since
        raise Unauthenticated("header.fixmedins_code: unknown institution")
    if header.mdtrtarea_admvs and header.mdtrtarea_admvs != inst.admdvs:
        raise field_error("header.mdtrtarea_admvs", f"is not {inst.admdvs}, the institution's")
    return Caller(inst, header.opter, snap, row[4], env.pii)


def request_hash(method: str, request: Message) -> bytes:
    """Digest of what makes two calls "the same request": the method and every field but
    the sign_no (a retry after signing in again is still the same request)."""
    h = hashlib.sha256(method.encode())
    h.update(b"\0")
    h.update(_payload_bytes(request))
    return h.digest()


def _payload_bytes(request: Message) -> bytes:
    header = getattr(request, "header", None)
    if header is None or not getattr(header, "sign_no", ""):
        return request.SerializeToString(deterministic=True)
    # Cleared in place and put back (cheaper than a copy); nothing else runs meanwhile.
    sign_no = header.sign_no
    header.sign_no = ""
    try:
        return request.SerializeToString(deterministic=True)
    finally:
        header.sign_no = sign_no


def chunk_hasher(method: str) -> hashlib._Hash:
    h = hashlib.sha256(method.encode())
    h.update(b"\0")
    return h


def add_chunk(h: hashlib._Hash, request: Message) -> bytes:
    """One message of a stream into its digest: the bytes hashed (what a reader of the
    message's fields may decode again instead of asking protobuf for each)."""
    data = _payload_bytes(request)
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
    return data


@dataclass
class Outcome:
    """What a state-changing call did, read by the metrics once its answer is durable."""

    replayed: bool = False


@dataclass(frozen=True)
class Trail:
    """The audit record a write leaves in its own transaction, but for its outcome."""

    key: bytes
    pii: Vault  # the stored answer names a person: it is sealed
    rpc: str
    caller: Caller | None  # None: SignIn, before there is one
    opter: str
    objects: str
    show_ref: bool = True  # False for SignIn, whose ref is the sign_no (a credential)

    @classmethod
    def of(cls, env: Env, rpc: str, caller: Caller, request: Any) -> Trail:
        return cls(env.keys.audit, env.pii, rpc, caller, caller.opter, audit.objects_of(request))

    def write(self, conn: sqlite3.Connection, now: int, code: str, outcome: str, ref: str) -> None:
        held = roles.render(self.caller.roles) if self.caller is not None else ""
        objects = ";".join(o for o in (self.objects, f"ref={ref}" if ref else "") if o)
        rec = audit.Record(now, code, self.opter, held, self.rpc, objects, outcome)
        audit.append(conn, self.key, rec)


def idempotent(
    conn: sqlite3.Connection,
    fixmedins_code: str,
    msgid: str,
    method: str,
    req_hash: bytes,
    now: int,
    body: Callable[[], tuple[bytes, str]],
    outcome: Outcome | None,
    trail: Trail,
) -> bytes:
    """The stored answer of an earlier call with this msgid, or `body()`'s answer stored
    with it, with the audit record of either in the same transaction. The same msgid with
    another request (or method) is refused."""
    stored = replay_of(conn, trail.pii, fixmedins_code, msgid, method, req_hash)
    if stored is not None:
        metrics.REPLAYS.labels(method).inc()
        if outcome is not None:
            outcome.replayed = True
        trail.write(conn, now, fixmedins_code, "REPLAY", "")
        return stored
    response, ref = body()
    sealed = trail.pii.seal_answer(fixmedins_code, msgid, response)
    conn.execute(
        "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?)",
        (fixmedins_code, msgid, method, req_hash, sealed, ref, now),
    )
    trail.write(conn, now, fixmedins_code, "OK", ref if trail.show_ref else "")
    return response


def replay_of(
    conn: sqlite3.Connection,
    vault: Vault,
    fixmedins_code: str,
    msgid: str,
    method: str,
    req_hash: bytes,
) -> bytes | None:
    """The stored answer of this msgid's earlier call, None if there was none; refuses the
    msgid when it was used for another request or burnt by a reversal."""
    row = conn.execute(
        "SELECT method, req_hash, response FROM idempotency WHERE fixmedins_code = ? AND msgid = ?",
        (fixmedins_code, msgid),
    ).fetchone()
    if row is not None:
        if row[0] == REVERSED:
            raise FailedPrecondition(
                f"header.msgid: {msgid} was reversed before it arrived; send a new msgid"
            )
        if row[0] != method or bytes(row[1]) != req_hash:
            raise AlreadyExists(
                f"header.msgid: {msgid} was already used for a different request ({row[0]});"
                " a retry must resend the same request, a new request needs a new msgid"
            )
        return vault.open_answer(fixmedins_code, msgid, bytes(row[2]))
    return None


def id_prefix(kind: str, fixmedins_code: str, node_id: str) -> str:
    """How every id a front-end issues begins: its kind (S settlement, C cancel, M visit),
    the institution and the node. Two front-ends never issue the same id (institutions
    differ, or one institution's nodes do), and the center can tell whose an id is."""
    return f"{kind}{fixmedins_code}{node_id}"


def issue_id(env: Env, kind: str, fixmedins_code: str, rowid: int) -> str:
    """A client-facing id: `id_prefix` and the row id (unique in this database)."""
    return f"{id_prefix(kind, fixmedins_code, env.node_id)}{rowid:012d}"


def out_of_order(
    setl_id: str, year: int, pool: str, later: list[tuple[str, str]], fixmedins_code: str
) -> FailedPrecondition:
    """The refusal of a cancel while `later` settlements (setl_id, institution, newest first)
    of the person relied on its accumulators: they are named, but another institution's only
    by number (its ids are not this caller's to see)."""
    own = [s for s, code in later if code == fixmedins_code]
    others = len(later) - len(own)
    named = ", ".join([*own, *([f"{others} at other institutions"] if others else [])])
    return FailedPrecondition(
        f"setl_id: {setl_id} is not the person's latest settlement of {year} ({pool});"
        " later settlements relied on its accumulators: cancel them first, newest first"
        f" ({named}), then this one, and settle them again"
    )


def require_fresh_refdata(caller: Caller) -> None:
    if caller.snap.policy is None:
        raise FailedPrecondition("no policy is loaded on this front-end (PutPolicy)")
    if caller.snap.items is None:
        raise FailedPrecondition("no catalog is loaded on this front-end (ImportCatalog)")
