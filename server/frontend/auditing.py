"""The front-end's audit records outside a write's own transaction (server/auditing.py says
which and why they are bounded): each goes into its SQLite store through the group commit."""

from __future__ import annotations

from typing import Any

from server.auditing import AUTH_CODES, PERSONAL_READS, RefusalRecorder, outcome_of
from server.common import Caller, now_ms
from server.errors import ClientError
from server.frontend.store.sqlite import Store
from server.security import audit, roles
from server.security.identity import Peer


class FrontendAuditor:
    """Audit records of a front-end, into its SQLite store; one per worker (its budget of
    refusal records is the worker's)."""

    def __init__(self, store: Store, key: bytes, refusals_per_s: float = 50.0) -> None:
        self.store = store
        self.key = key
        self.refusals = RefusalRecorder(self._append, refusals_per_s)

    async def _append(self, rec: audit.Record) -> None:
        key = self.key
        await self.store.write(lambda conn: audit.append(conn, key, rec))

    async def close(self) -> None:
        await self.refusals.close()

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
                now_ms(),
                audit.kept(h.fixmedins_code),
                audit.kept(h.opter),
                "",
                rpc,
                audit.objects_of(request),
                "OK",
            )
        )

    async def refused(self, rpc: str, request: Any, exc: ClientError, *, write: bool) -> None:
        """A call refused after its header was read: recorded when it was a write, a read
        of personal data, or an authentication or authorisation failure."""
        if not (write or rpc in PERSONAL_READS or exc.code in AUTH_CODES):
            return
        header = getattr(request, "header", None)
        await self.refusals.record(
            audit.Record(
                now_ms(),
                audit.kept(getattr(header, "fixmedins_code", "")),
                audit.kept(getattr(header, "opter", "")),
                "",
                rpc,
                audit.objects_of(request),
                outcome_of(exc),
            ),
            exc,
        )

    async def denied(self, rpc: str, peer: Peer, request: Any, exc: ClientError) -> None:
        """An authentication or authorisation failure caught outside the calls' own code
        (certificate, signature, the center-service role)."""
        if exc.audited or exc.code not in AUTH_CODES:
            return
        header = getattr(request, "header", None)
        await self.refusals.record(
            audit.Record(
                now_ms(),
                audit.kept(getattr(header, "fixmedins_code", "") or peer.institution),
                audit.kept(getattr(header, "opter", "")),
                roles.render(peer.roles),
                rpc,
                f"peer={peer.describe()}",
                outcome_of(exc),
            ),
            exc,
        )
