"""The audit records that are not part of a write's own transaction (those are written by
`idempotent`): reads of personal data, refused calls, and authentication or authorisation
failures wherever they are caught. Each is committed before the answer goes out, through the
same group commit as the writes (so it costs a share of an fsync, not one of its own).

Refusals cost the caller nothing, so what they may write is bounded: every value a record
keeps is short (audit.kept), and each worker records at most `max_refusal_audits_per_s`
refusals a second one by one; beyond that they are counted (a metric) and summarised in one
record a second, so a flood of refused calls cannot fill the disk.

This module is what both roles share; the front-end's auditor is server/frontend/auditing.py,
the center's `CenterAuditor` is in server/center/services.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc

from server import metrics
from server.common import now_ms
from server.errors import ClientError, Unavailable
from server.security import audit

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


class RefusalBudget:
    """How many refusals a second are recorded one by one: a token bucket filling at
    `per_s` a second, holding one second's worth (at least one)."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.burst = max(1.0, per_s)
        self.tokens = self.burst
        self.clock = clock
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


SUMMARY_EVERY_S = 1.0
SUMMARY_GROUPS = 10  # (code, rpc) groups a summary names, the most frequent first
SUMMARY = "SUMMARY"  # how a summary record's outcome begins


class RefusalSummary:
    """The refusals counted, not recorded, since the last summary record."""

    def __init__(self) -> None:
        self.by: Counter[tuple[str, str, str]] = Counter()  # (institution, code, rpc)
        self.first = self.last = 0

    def add(self, rec: audit.Record, code: str) -> None:
        self.last = rec.at
        self.first = self.first or rec.at
        self.by[(rec.fixmedins_code, code, rec.rpc)] += 1

    def record(self, per_s: float) -> audit.Record:
        n = sum(self.by.values())
        institutions = {inst for inst, _, _ in self.by}
        by_rpc: Counter[tuple[str, str]] = Counter()
        for (_, code, rpc), k in self.by.items():
            by_rpc[(code, rpc)] += k
        groups = ";".join(
            f"{code} {rpc}={k}" for (code, rpc), k in by_rpc.most_common(SUMMARY_GROUPS)
        )
        return audit.Record(
            now_ms(),
            institutions.pop() if len(institutions) == 1 else "",
            "",
            "",
            "",
            f"refused={n};from={self.first};to={self.last};{groups}",
            f"{SUMMARY}: {n} refused calls counted, not recorded one by one (more than"
            f" {per_s:g} a second)",
        )


class RefusalRecorder:
    """Writes refusals' records through `append`, at most `per_s` a second one by one (the
    worker's budget); beyond it counts them (a metric) and writes one summary record a
    second. A store that cannot write does not stop a refusal from going out. The front-end's
    auditor has one; the center's can have its own over its store."""

    def __init__(
        self, append: Callable[[audit.Record], Awaitable[None]], per_s: float = 50.0
    ) -> None:
        self.append = append
        self.budget = RefusalBudget(per_s)
        self._summary = RefusalSummary()
        self._summarising: asyncio.Task[None] | None = None

    async def record(self, rec: audit.Record, exc: ClientError) -> None:
        exc.audited = True
        if not self.budget.take():
            metrics.REFUSALS_SUMMARISED.labels(exc.code.name).inc()
            self._summary.add(rec, exc.code.name)
            if self._summarising is None:
                self._summarising = asyncio.get_running_loop().create_task(self._summarise())
            return
        try:
            await self.append(rec)
        except Unavailable:
            log.warning("audit record of a refused %s not written: the store cannot write", rec.rpc)

    async def _summarise(self) -> None:
        try:
            await asyncio.sleep(SUMMARY_EVERY_S)
        finally:
            self._summarising = None
        await self.flush()

    async def flush(self) -> None:
        """Write the summary of the refusals counted since the last one, if any."""
        summary, self._summary = self._summary, RefusalSummary()
        if summary.by:
            try:
                await self.append(summary.record(self.budget.per_s))
            except Unavailable:
                log.warning("audit: a summary of %d refusals not written", summary.by.total())

    async def close(self) -> None:
        """The summary pending, written now (the server is stopping)."""
        if self._summarising is not None:
            self._summarising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summarising
        await self.flush()


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
