"""A front-end's Settle, PreSettle and CancelSettlement in center mode (docs/architecture.md): the
visit's lines are preprocessed here, only the summary goes to the center, which splits against
the authoritative accumulators and commits; this front-end then keeps the center's answer. The
answer to the HIS has the same shape as in local mode.

Order of events for Settle, and why it is safe to retry at any point:
1. on a snapshot: authenticate, replay the stored answer of this msgid if there is one,
   preprocess and split, and make the summary for the center (`settle.center_ask`);
2. the center settles, under an id derived from (institution, msgid), so a retry after a
   crash between 2 and 3 meets the center's own idempotent answer;
3. one local transaction keeps the settlement, with the idempotency record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from dataclasses import dataclass

import grpc

from medsettle.v1 import center_pb2, common_pb2, settlement_pb2
from server import metrics
from server.common import (
    Caller,
    Env,
    HeaderFields,
    Outcome,
    Trail,
    authenticate,
    check_header,
    id_prefix,
    idempotent,
    issue_id,
    now_ms,
    replay_of,
    request_hash,
)
from server.door import Raw
from server.errors import ClientError, Unavailable
from server.frontend import settle
from server.frontend.center_link import CenterRoutes
from server.frontend.forwarder import cancelled_already, undo_row
from server.frontend.settle import Ask, OfflineLimits
from server.frontend.store.sqlite import Store

SETTLE = "/medsettle.v1.Settlement/Settle"
PRE_SETTLE = "/medsettle.v1.Settlement/PreSettle"
CANCEL = "/medsettle.v1.Settlement/CancelSettlement"
REVERSE = "/medsettle.v1.Settlement/Reverse"
log = logging.getLogger("medsettle.center_mode")


def undo_request(env: Env, header: HeaderFields, setl_id: str) -> center_pb2.CenterCancelRequest:
    """The compensating cancel of a center-mode settlement, keyed to the HIS call's msgid."""
    key = f"undo\0{header.fixmedins_code}\0{header.msgid}"
    return compensating_cancel(env, header.fixmedins_code, header.opter, key, setl_id)


def repair_request(
    env: Env, header: common_pb2.RequestHeader, setl_id: str
) -> center_pb2.CenterCancelRequest:
    """Reconciliation's repair of a settlement held only at the center, keyed to its id."""
    key = f"repair\0{header.fixmedins_code}\0{setl_id}"
    return compensating_cancel(env, header.fixmedins_code, header.opter, key, setl_id)


def compensating_cancel(
    env: Env, code: str, opter: str, key: str, setl_id: str
) -> center_pb2.CenterCancelRequest:
    """A cancel at the center whose own msgid and cancel id derive from `key`: the same on
    every retry, so sending it twice changes nothing there."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return center_pb2.CenterCancelRequest(
        header=center_pb2.NodeHeader(
            node_id=env.node_id, fixmedins_code=code, msgid=f"U{digest[:29]}", opter=opter
        ),
        setl_id=setl_id,
        cancel_id=f"{id_prefix('C', code, env.node_id)}U{digest[:12]}",
    )


class CenterMode:
    def __init__(
        self,
        store: Store,
        env: Env,
        routes: CenterRoutes,
        offline: OfflineLimits | None,
        retry_grace_s: float = 300.0,
    ) -> None:
        self.store = store
        self.env = env
        self.routes = routes
        self.offline = offline  # None: no local fallback
        # How long a settle the center may have committed unheard waits for a retry of its
        # msgid before the forwarder cancels it at the center (config center_retry_grace_s).
        self.retry_grace_ms = int(retry_grace_s * 1000)

    async def settle(self, req: Raw) -> bytes:
        """A Settle read at the door: its bytes go to the ledger and the center's question
        as they came, with the door's header and digest (never parsed here)."""
        header = req.header
        check_header(header, needs_msgid=True)
        data, digest = req.data, req.digest
        now = now_ms()
        env = self.env

        instance_id = self.routes.instance_id

        def prepare(conn: sqlite3.Connection) -> bytes | Ask:
            caller = authenticate(conn, env, header, now, SETTLE)
            return settle.center_ask(conn, env, caller, data, digest, instance_id)

        try:
            got = await self.store.read_together(prepare)
            if isinstance(got, bytes):
                metrics.settle_answered("center", "frontend", got, replayed=True)
                return got
            region = got.insured_region
            later = now_ms() + self.retry_grace_ms
            try:
                answer = await self.routes.link_for(region).settle(
                    got.request, header.fixmedins_code, env.node_id
                )
            except BaseException as exc:
                if not _definitive(exc):
                    # The center may have committed and only its answer been lost (a line
                    # cut, a deadline, the HIS giving up): unless a retry of this msgid
                    # keeps the settlement here first, it is cancelled there once the
                    # retries' grace is over.
                    undo = undo_request(env, header, _setl_id(got))
                    await asyncio.shield(self._leave_undo(undo, region, later))
                if not isinstance(exc, Unavailable) or self.offline is None:
                    raise
                return await self._settle_offline(req, now, self.offline)
            try:
                resp = await self._keep(req, now, got, answer)
            except (Unavailable, asyncio.CancelledError):
                # Not kept for a reason a retry of this msgid may get past (the store, an
                # answer that could not be read): the same grace.
                undo = undo_request(env, header, _setl_id(got))
                await asyncio.shield(self._leave_undo(undo, region, later))
                raise
            except ClientError:
                await self._undo(header, _setl_id(got), region)
                raise
        except ClientError as exc:
            metrics.settle_refused("center", "frontend", exc.code)
            raise
        return resp  # counted with the keep's batch (settle.keep_call)

    async def _undo(self, header: HeaderFields, setl_id: str, region: str) -> None:
        """The center committed a settlement this front-end then could not keep (the visit or
        its lines changed meanwhile): cancel it there, so it is never left settled at the
        center alone. The cancel is keyed to the original msgid, so sending it twice changes
        nothing; when the center does not answer, the outbox keeps it and the forwarder
        retries until the center confirms."""
        undo = undo_request(self.env, header, setl_id)
        try:
            await self.routes.link_for(region).cancel(undo)
        except ClientError as exc:
            if cancelled_already(exc):
                return
            # Left in the outbox: the forwarder retries it, and holds it (logged, in the
            # backlog, shown by reconciliation) when the center refuses it for good.
            await self._leave_undo(undo, region, now_ms())
            log.warning("center settlement %s left to cancel (%s)", setl_id, exc.message)

    async def _leave_undo(
        self, undo: center_pb2.CenterCancelRequest, region: str, not_before: int
    ) -> None:
        """An outbox row for the forwarder to send `undo` from `not_before` on (its
        created_at; one per settlement: a center down for a while meets the same msgid's
        retries, and the earliest time stands)."""
        payload = undo_row(region, undo)
        await self.store.write(
            lambda conn: conn.execute(
                "INSERT INTO outbox (kind, ref, payload, created_at) SELECT 'undo', ?, ?, ?"
                " WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE kind = 'undo' AND ref = ?"
                " AND sent_at IS NULL)",
                (undo.setl_id, payload, not_before, undo.setl_id),
            )
        )

    async def _keep(
        self,
        req: Raw,
        now: int,
        got: Ask,
        answer: bytes,
    ) -> bytes:
        """Keep the settlement the center committed, with the idempotency record (in the
        ledger, in the store's next batch: settle.keep_call)."""
        header = req.header
        env = self.env
        call = settle.keep_call(
            env,
            lambda conn: authenticate(conn, env, header, now, SETTLE),
            req.data,
            req.digest,
            now,
            SETTLE,
            got,
            answer,
        )
        return await settle.in_batch(self.store, call)

    async def _settle_offline(
        self,
        req: Raw,
        now: int,
        limits: OfflineLimits,
    ) -> bytes:
        """Settle here from the cached accumulators, marked offline; the forwarder sends it
        to the center when the link returns (where a disagreement is recorded, not lost)."""
        header = req.header
        env = self.env

        call = settle.settle_call(
            env,
            lambda conn: authenticate(conn, env, header, now, SETTLE),
            req.data,
            req.digest,
            now,
            SETTLE,
            limits,
        )
        return await settle.in_batch(self.store, call)

    async def pre_settle(self, req: settlement_pb2.SettleRequest) -> settlement_pb2.SettleResponse:
        header = req.header
        check_header(header, needs_msgid=False)
        now = now_ms()
        env = self.env

        instance_id = self.routes.instance_id

        def prepare(conn: sqlite3.Connection) -> Ask:
            caller = authenticate(conn, env, header, now, PRE_SETTLE)
            data = req.SerializeToString()
            ask = settle.center_ask(conn, env, caller, data, None, instance_id)
            assert isinstance(ask, Ask)  # no msgid's answer is looked up
            return ask

        c = await self.store.read_together(prepare)
        link = self.routes.link_for(c.insured_region)
        answer = await link.settle(c.request, header.fixmedins_code, env.node_id, pre_settle=True)
        info = center_pb2.CenterSettleResponse.FromString(answer).setlinfo
        info.msgid = header.msgid
        return settlement_pb2.SettleResponse(setlinfo=info)

    async def cancel(self, raw: Raw) -> bytes:
        """A center-mode settlement is cancelled at the center first, then here; a local
        (offline) one only here, and forwarded. (The door's digest; the message parsed.)"""
        req: settlement_pb2.CancelSettlementRequest = raw.message()
        header = req.header
        check_header(header, needs_msgid=True)
        digest = raw.digest
        now = now_ms()
        env = self.env

        def look(conn: sqlite3.Connection) -> bytes | _AtCenter | None:
            caller = authenticate(conn, env, header, now, CANCEL)
            stored = replay_of(
                conn, env.pii, header.fixmedins_code, header.msgid, "CancelSettlement", digest
            )
            if stored is not None:
                return stored
            return _at_center(conn, caller, req.setl_id, req.mdtrt_id, req.psn_no)

        outcome = Outcome()

        def keep(conn: sqlite3.Connection) -> bytes:
            caller = authenticate(conn, env, header, now, CANCEL)
            return idempotent(
                conn,
                header.fixmedins_code,
                header.msgid,
                "CancelSettlement",
                digest,
                now,
                lambda: settle.cancel_answer(conn, env, caller, req, now),
                outcome,
                Trail.of(env, CANCEL, caller, req),
            )

        # Counted as cancelled at the center, or here alone (an offline settlement).
        mode = "center"
        try:
            got = await self.store.read(look)
            if isinstance(got, bytes):
                metrics.cancel_answered(mode, "frontend", got, replayed=True)
                return got
            if got is not None:
                await self._cancel_at_center(header, got)
            else:
                mode = "offline"
            resp: bytes = await self.store.write(keep)
        except ClientError as exc:
            metrics.cancel_refused(mode, "frontend", exc.code)
            raise
        metrics.cancel_answered(mode, "frontend", resp, outcome.replayed)
        return resp

    async def before_reverse(self, req: settlement_pb2.ReverseRequest) -> None:
        """A Reverse of a center-mode Settle cancels at the center first, as CancelSettlement
        does (then the local reversal runs as in local mode; its outbox row meets the center's
        cancel as a duplicate). Anything else the reversal does is local."""
        header = req.header
        check_header(header, needs_msgid=True)
        digest = request_hash("Reverse", req)
        now = now_ms()
        env = self.env

        def look(conn: sqlite3.Connection) -> _AtCenter | None:
            caller = authenticate(conn, env, header, now, REVERSE)
            code = header.fixmedins_code
            if replay_of(conn, env.pii, code, header.msgid, "Reverse", digest) is not None:
                return None
            row = settle.reversal_target(conn, caller, req)
            if row is None or row[0] != "Settle":
                return None
            if settle.load_settlement(conn, caller, row[1])[6] != common_pb2.SETTLED:
                return None
            return _at_center(conn, caller, row[1], "", "")

        got = await self.store.read(look)
        if got is not None:
            await self._cancel_at_center(header, got)

    async def _cancel_at_center(self, header: common_pb2.RequestHeader, at: _AtCenter) -> None:
        """The center cancels under this call's msgid (a retry meets its stored answer). A
        settlement the center has cancelled already (an earlier cancel that committed there
        but not here) is cancelled here now: the sides come together."""
        env = self.env
        try:
            await self.routes.link_for(at.region).cancel(
                center_pb2.CenterCancelRequest(
                    header=center_pb2.NodeHeader(
                        node_id=env.node_id,
                        fixmedins_code=header.fixmedins_code,
                        msgid=header.msgid,
                        opter=header.opter,
                    ),
                    setl_id=at.setl_id,
                    cancel_id=issue_id(env, "C", header.fixmedins_code, at.rowid),
                )
            )
        except ClientError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION or not cancelled_already(exc):
                raise
            log.warning("%s was cancelled at the center already: cancelling it here", at.setl_id)


# The center's refusals that mean it did not commit the call (anything else, or no answer,
# may come after a commit whose answer was lost).
_NOT_COMMITTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def _setl_id(asked: Ask) -> str:
    """The settlement id this front-end asked the center to settle under (the center's
    answer names the same; read from what was sent, which is ours)."""
    return str(center_pb2.CenterSettleRequest.FromString(asked.request).setl_id)


def _definitive(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and exc.code in _NOT_COMMITTED


@dataclass(frozen=True)
class _AtCenter:
    """A center-mode settlement to cancel at the center: its local row, id, person's region."""

    rowid: int
    setl_id: str
    region: str


def _at_center(
    conn: sqlite3.Connection, caller: Caller, setl_id: str, mdtrt_id: str, psn_no: str
) -> _AtCenter | None:
    """After every check this front-end can make (so a refusal changes neither side): the
    settlement to cancel at the center first, or None for one settled here (offline)."""
    row = settle.cancellable(conn, caller, setl_id, mdtrt_id, psn_no)
    if row.mode != common_pb2.CENTER:
        return None
    region = conn.execute("SELECT insuplc_admdvs FROM persons WHERE psn_no = ?", (row.psn_no,))
    return _AtCenter(row.rowid, row.setl_id, region.fetchone()[0])
