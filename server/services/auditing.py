"""The audit records that are not part of a write's own transaction (those are written by
`idempotent`): reads of personal data, refused calls, and authentication or authorisation
failures wherever they are caught. Each is committed before the answer goes out, through the
same group commit as the writes (so it costs a share of an fsync, not one of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.domain.common import Caller, now_ms
from server.errors import ClientError
from server.security import audit, roles
from server.security.identity import Peer
from server.store.sqlite import Store

log = logging.getLogger("medsettle.audit")

AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

# Reads that return personal data: each leaves a record.
PERSONAL_READS = frozenset(
    {
        "/medsettle.v1.Settlement/GetPerson",
        "/medsettle.v1.Settlement/PreSettle",
        "/medsettle.v1.Settlement/GetSettlement",
        "/medsettle.v1.Settlement/QuerySettlements",
        "/medsettle.v1.Reconciliation/Details",
    }
)


def outcome_of(exc: ClientError) -> str:
    return f"{exc.code.name}: {exc.message}"[:500]


class FrontendAuditor:
    """Audit records of a front-end, into its SQLite store."""

    def __init__(self, store: Store, key: bytes) -> None:
        self.store = store
        self.key = key

    async def _append(self, rec: audit.Record) -> None:
        key = self.key
        await self.store.write(lambda conn: audit.append(conn, key, rec))

    async def read(self, rpc: str, caller: Caller, request: Any) -> None:
        if rpc in PERSONAL_READS:
            await self._append(
                audit.Record(
                    now_ms(),
                    caller.inst.fixmedins_code,
                    caller.opter,
                    roles.render(caller.roles),
                    rpc,
                    audit.objects_of(request),
                    "OK",
                )
            )

    async def read_by_header(self, rpc: str, request: Any) -> None:
        """A read answered by the center (center mode), by the header's operator."""
        h = request.header
        await self._append(
            audit.Record(
                now_ms(), h.fixmedins_code, h.opter, "", rpc, audit.objects_of(request), "OK"
            )
        )

    async def refused(self, rpc: str, request: Any, exc: ClientError, *, write: bool) -> None:
        """A call refused after its header was read: recorded when it was a write, a read
        of personal data, or an authentication or authorisation failure."""
        if not (write or rpc in PERSONAL_READS or exc.code in AUTH_CODES):
            return
        header = getattr(request, "header", None)
        exc.audited = True
        await self._append(
            audit.Record(
                now_ms(),
                getattr(header, "fixmedins_code", ""),
                getattr(header, "opter", ""),
                "",
                rpc,
                audit.objects_of(request),
                outcome_of(exc),
            )
        )

    async def denied(self, rpc: str, peer: Peer, request: Any, exc: ClientError) -> None:
        """An authentication or authorisation failure caught outside the calls' own code
        (certificate, signature, the center-service role)."""
        if exc.audited or exc.code not in AUTH_CODES:
            return
        header = getattr(request, "header", None)
        exc.audited = True
        await self._append(
            audit.Record(
                now_ms(),
                getattr(header, "fixmedins_code", "") or peer.institution,
                getattr(header, "opter", ""),
                roles.render(peer.roles),
                rpc,
                f"peer={peer.describe()}",
                outcome_of(exc),
            )
        )


class AuditPruner:
    """Drops audit records older than the retention, at start and then hourly (one task,
    in a server's first worker); `prune()` does it in one transaction of the store."""

    def __init__(
        self, prune: Callable[[], Awaitable[int]], retention_days: int, every_s: float = 3600
    ) -> None:
        self.prune = prune
        self.retention_days = retention_days
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                gone = await self.prune()
                if gone:
                    log.info("audit: %d records past %d days pruned", gone, self.retention_days)
            except Exception:
                log.exception("audit pruning failed; retried in %.0f s", self.every_s)
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
