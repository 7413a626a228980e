"""The `medsettle.v1.Reconciliation` service: totals (3201) and details (3202) of the
caller's own ledger for a date range, and, on a front-end with a center, the repair of a
settlement the center holds settled and this front-end does not."""

from __future__ import annotations

import sqlite3
from typing import Any

from medsettle.v1 import common_pb2, reconciliation_pb2
from server import nodes, recon
from server.common import (
    Caller,
    authenticate,
    check_header,
    id_prefix,
    now_ms,
    replay_of,
    request_hash,
)
from server.errors import ClientError, FailedPrecondition, field_error
from server.frontend.center_link import CenterRoutes
from server.frontend.center_mode import repair_request
from server.frontend.forwarder import cancelled_already
from server.frontend.services.settlement import Calls, Ctx

REPAIR = "/medsettle.v1.Reconciliation/Repair"


class ReconciliationService:
    def __init__(self, calls: Calls, max_bytes: int, routes: CenterRoutes | None = None) -> None:
        self.calls = calls
        self.max_bytes = max_bytes  # the server's message limit
        self.routes = routes  # this front-end's centers, if it has any

    async def Totals(self, request: reconciliation_pb2.TotalsRequest, context: Ctx) -> Any:
        return await self.calls.read(
            "Totals",
            request,
            lambda conn, caller: recon.totals(
                recon.sqlite_fetch(conn), caller.inst.fixmedins_code, request
            ),
        )

    async def Details(self, request: reconciliation_pb2.DetailsRequest, context: Ctx) -> Any:
        return await self.calls.read(
            "Details",
            request,
            lambda conn, caller: recon.details(
                recon.sqlite_fetch(conn), caller.inst.fixmedins_code, request, self.max_bytes
            ),
        )

    async def Repair(self, request: reconciliation_pb2.RepairRequest, context: Ctx) -> bytes:
        """Checked here first (a refused repair changes neither side), then cancelled at the
        center under an id derived from the setl_id, then recorded here (idempotency and the
        audit trail); the center's "already cancelled" counts as done."""
        header = request.header
        check_header(header, needs_msgid=True)
        digest = request_hash("Repair", request)
        now = now_ms()
        env = self.calls.env
        code = header.fixmedins_code

        def look(conn: sqlite3.Connection) -> bytes | None:
            caller = authenticate(conn, env, header, now, REPAIR)
            stored = replay_of(conn, env.pii, code, header.msgid, "Repair", digest)
            if stored is None:
                repairable(conn, caller, env.node_id, request.setl_id)
            return stored

        try:
            stored = await self.calls.store.read(look)
            if stored is not None:
                return stored
            if self.routes is None:
                raise FailedPrecondition("setl_id: this front-end has no center to repair with")
            done = "cancelled at the center"
            try:
                await self.routes.link_for("").cancel(repair_request(env, header, request.setl_id))
            except ClientError as exc:
                if not cancelled_already(exc):
                    raise
                done = f"nothing to do at the center ({exc.message})"
        except ClientError as exc:
            await self.calls.auditor.refused(REPAIR, request, exc, write=True)
            raise
        answer = reconciliation_pb2.RepairResponse(setl_id=request.setl_id, done=done)
        return await self.calls.write(
            "Repair",
            request,
            lambda conn, caller, now: (answer.SerializeToString(), request.setl_id),
            req_hash=digest,
        )


def repairable(conn: sqlite3.Connection, caller: Caller, node_id: str, setl_id: str) -> None:
    """A repair cancels at the center only a center-mode settlement of this front-end (its
    institution and node, an id derived from a msgid) that is not settled here: one settled
    on both sides is cancelled with CancelSettlement, which cancels both."""
    code = caller.inst.fixmedins_code
    prefix = id_prefix("S", code, node_id)
    if not (nodes.issued_by(setl_id, "S", code, node_id) and setl_id[len(prefix) :][:1] == "H"):
        raise field_error(
            "setl_id", f"not a center-mode settlement of this front-end ({prefix}H...)"
        )
    row = conn.execute("SELECT state FROM settlements WHERE setl_id = ?", (setl_id,)).fetchone()
    if row is not None and row[0] == common_pb2.SETTLED:
        raise FailedPrecondition(
            f"setl_id: {setl_id} is settled here too; cancel it with CancelSettlement"
        )
