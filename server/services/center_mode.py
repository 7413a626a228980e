"""A front-end's Settle, PreSettle and CancelSettlement in center mode (seed 004): the visit's
lines are preprocessed here, only the summary goes to the center, which splits against the
authoritative accumulators and commits; this front-end then keeps the center's answer. The
answer to the HIS has the same shape as in local mode.

Order of events for Settle, and why it is safe to retry at any point:
1. on a snapshot: authenticate, replay the stored answer of this msgid if there is one,
   preprocess (`settle.compute`);
2. the center settles, under an id derived from (institution, msgid), so a retry after a
   crash between 2 and 3 meets the center's own idempotent answer;
3. one local transaction keeps the settlement, with the idempotency record.
"""

from __future__ import annotations

import sqlite3

from clients.pb.medsettle.v1 import center_pb2, common_pb2, settlement_pb2
from server import metrics
from server.center_link import CenterRoutes, center_setl_id
from server.domain import settle
from server.domain.common import (
    Env,
    Outcome,
    Trail,
    authenticate,
    check_header,
    idempotent,
    issue_id,
    now_ms,
    replay_of,
    request_hash,
)
from server.domain.settle import Computed, OfflineLimits
from server.errors import ClientError, Unavailable
from server.store import ACC_FIELDS
from server.store.sqlite import Store

SETTLE = "/medsettle.v1.Settlement/Settle"
PRE_SETTLE = "/medsettle.v1.Settlement/PreSettle"
CANCEL = "/medsettle.v1.Settlement/CancelSettlement"


def _center_request(
    env: Env, req: settlement_pb2.SettleRequest, c: settle.Computed, *, pre: bool
) -> center_pb2.CenterSettleRequest:
    info = c.info
    code = info.fixmedins_code
    return center_pb2.CenterSettleRequest(
        header=center_pb2.NodeHeader(
            node_id=env.node_id, fixmedins_code=code, msgid=req.header.msgid, opter=req.header.opter
        ),
        setl_id="" if pre else center_setl_id(env.node_id, code, req.header.msgid),
        mdtrt_id=c.visit.mdtrt_id,
        psn_no=c.visit.psn_no,
        insutype=c.visit.insutype,
        med_type=c.visit.med_type,
        begndate=c.visit.begndate,
        summary=center_pb2.VisitSummary(
            medfee_sumamt=info.medfee_sumamt,
            fulamt_ownpay_amt=info.fulamt_ownpay_amt,
            overlmt_amt=info.overlmt_amt,
            preselfpay_amt=info.preselfpay_amt,
            inscp_scp_amt=info.inscp_scp_amt,
            line_count=info.line_count,
            categories=list(info.categories),
        ),
        acct_used_flag=req.acct_used_flag,
        invono=req.invono,
        policy_version=info.policy_version,
        catalog_version=info.catalog_version,
        pre_settle=pre,
    )


class CenterMode:
    def __init__(
        self, store: Store, env: Env, routes: CenterRoutes, offline: OfflineLimits | None
    ) -> None:
        self.store = store
        self.env = env
        self.routes = routes
        self.offline = offline  # None: no local fallback

    async def settle(self, req: settlement_pb2.SettleRequest) -> bytes:
        header = req.header
        check_header(header, needs_msgid=True)
        digest = request_hash("Settle", req)
        now = now_ms()
        env = self.env

        def prepare(conn: sqlite3.Connection) -> bytes | settle.Computed:
            caller = authenticate(conn, env, header, now, SETTLE)
            stored = replay_of(conn, env.pii, header.fixmedins_code, header.msgid, "Settle", digest)
            return stored if stored is not None else settle.compute(conn, caller, req)

        outcome = Outcome()
        try:
            got = await self.store.read(prepare)
            if isinstance(got, bytes):
                metrics.settle_answered("center", "frontend", got, replayed=True)
                return got
            try:
                link = self.routes.link_for(got.insured_region)
                answer = await link.settle(_center_request(env, req, got, pre=False))
            except Unavailable:
                if self.offline is None:
                    raise
                resp = await self._settle_offline(req, digest, now, self.offline, outcome)
                metrics.settle_answered("offline", "frontend", resp, outcome.replayed)
                return resp
            resp = await self._keep(req, digest, now, got, answer, outcome)
        except ClientError as exc:
            metrics.settle_refused("center", "frontend", exc.code)
            raise
        metrics.settle_answered("center", "frontend", resp, outcome.replayed)
        return resp

    async def _keep(
        self,
        req: settlement_pb2.SettleRequest,
        digest: bytes,
        now: int,
        got: Computed,
        answer: center_pb2.CenterSettleResponse,
        outcome: Outcome,
    ) -> bytes:
        """Keep the settlement the center committed, with the idempotency record."""
        header = req.header
        env = self.env
        after = {f: getattr(answer.accumulators, f) for f in ACC_FIELDS}

        def keep(conn: sqlite3.Connection) -> bytes:
            caller = authenticate(conn, env, header, now, SETTLE)
            return idempotent(
                conn,
                header.fixmedins_code,
                header.msgid,
                "Settle",
                digest,
                now,
                lambda: settle.record_center_settlement(
                    conn, env, caller, req, got, answer.setlinfo, after, now
                ),
                outcome,
                Trail.of(env, SETTLE, caller, req),
            )

        return await self.store.write(keep)

    async def _settle_offline(
        self,
        req: settlement_pb2.SettleRequest,
        digest: bytes,
        now: int,
        limits: OfflineLimits,
        outcome: Outcome,
    ) -> bytes:
        """Settle here from the cached accumulators, marked offline; the forwarder sends it
        to the center when the link returns (where a disagreement is recorded, not lost)."""
        header = req.header
        env = self.env

        def op(conn: sqlite3.Connection) -> bytes:
            caller = authenticate(conn, env, header, now, SETTLE)
            return idempotent(
                conn,
                header.fixmedins_code,
                header.msgid,
                "Settle",
                digest,
                now,
                lambda: settle.settle(conn, env, caller, req, now, offline=limits),
                outcome,
                Trail.of(env, SETTLE, caller, req),
            )

        return await self.store.write(op)

    async def pre_settle(self, req: settlement_pb2.SettleRequest) -> settlement_pb2.SettleResponse:
        header = req.header
        check_header(header, needs_msgid=False)
        now = now_ms()
        env = self.env

        def prepare(conn: sqlite3.Connection) -> settle.Computed:
            return settle.compute(conn, authenticate(conn, env, header, now, PRE_SETTLE), req)

        c = await self.store.read(prepare)
        answer = await self.routes.link_for(c.insured_region).settle(
            _center_request(env, req, c, pre=True)
        )
        info = answer.setlinfo
        info.msgid = header.msgid
        return settlement_pb2.SettleResponse(setlinfo=info)

    async def cancel(self, req: settlement_pb2.CancelSettlementRequest) -> bytes:
        """A center-mode settlement is cancelled at the center first, then here; a local
        (offline) one only here, and forwarded."""
        header = req.header
        check_header(header, needs_msgid=True)
        digest = request_hash("CancelSettlement", req)
        now = now_ms()
        env = self.env

        def look(conn: sqlite3.Connection) -> bytes | tuple[int, int, str]:
            caller = authenticate(conn, env, header, now, CANCEL)
            stored = replay_of(
                conn, env.pii, header.fixmedins_code, header.msgid, "CancelSettlement", digest
            )
            if stored is not None:
                return stored
            row = settle.load_settlement(conn, caller, req.setl_id)
            region = conn.execute(
                "SELECT insuplc_admdvs FROM persons WHERE psn_no = ?", (row[5],)
            ).fetchone()[0]
            return row[0], row[15], region

        got = await self.store.read(look)
        if isinstance(got, bytes):
            return got
        rowid, mode, region = got
        if mode == common_pb2.CENTER:
            await self.routes.link_for(region).cancel(
                center_pb2.CenterCancelRequest(
                    header=center_pb2.NodeHeader(
                        node_id=env.node_id,
                        fixmedins_code=header.fixmedins_code,
                        msgid=header.msgid,
                        opter=header.opter,
                    ),
                    setl_id=req.setl_id,
                    cancel_id=issue_id(env, "C", header.fixmedins_code, rowid),
                )
            )

        def keep(conn: sqlite3.Connection) -> bytes:
            caller = authenticate(conn, env, header, now, CANCEL)
            return idempotent(
                conn,
                header.fixmedins_code,
                header.msgid,
                "CancelSettlement",
                digest,
                now,
                lambda: settle.cancel_call(conn, env, caller, req, now),
                None,
                Trail.of(env, CANCEL, caller, req),
            )

        return await self.store.write(keep)
