"""The `medsettle.v1.Reconciliation` service: totals (3201) and details (3202) of the
caller's own ledger for a date range."""

from __future__ import annotations

from typing import Any

from clients.pb.medsettle.v1 import reconciliation_pb2
from server.domain import recon
from server.services.settlement import Calls, Ctx


class ReconciliationService:
    def __init__(self, calls: Calls, max_bytes: int) -> None:
        self.calls = calls
        self.max_bytes = max_bytes  # the server's message limit

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
