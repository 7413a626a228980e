"""The `medsettle.v1.Center` service over PostgreSQL: settle from a front-end's summary and
cancel (center mode), record what front-ends in local mode forward, and serve the catalog
and policy versions front-ends pull; plus the center's side of reconciliation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from psycopg.errors import UniqueViolation

from medsettle.v1 import catalog_pb2, center_pb2, common_pb2, reconciliation_pb2
from server import metrics, recon, reference
from server.auditing import AUTH_CODES, RefusalRecorder, outcome_of
from server.center import forwarded, summaries
from server.center import settle as center
from server.center.store import pg
from server.center.store.pg import Conn, PgStore
from server.common import Outcome, now_ms, request_hash
from server.errors import ClientError, FailedPrecondition, field_error
from server.security import audit, roles
from server.security.identity import Peer

Ctx = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
SETTLE = "/medsettle.v1.Center/SettleSummary"
CANCEL = "/medsettle.v1.Center/CancelSettlement"
FORWARD = "/medsettle.v1.Center/Forward"
ONE_BY_ONE = "SettleSummaries settles; pre-settle one by one"


class CenterAuditor:
    """The center's audit records: one chain per institution, written in the transaction of
    the settlement, cancel or forwarded batch they record; refusals and authentication or
    authorisation failures in a transaction of their own, through the worker's budget of
    refusal records (`RefusalRecorder`: beyond it they are counted and summarised)."""

    def __init__(self, store: PgStore, key: bytes, refusals_per_s: float = 50.0) -> None:
        self.store = store
        self.key = key
        self.refusals = RefusalRecorder(self._append_own, refusals_per_s)

    async def _append_own(self, rec: audit.Record) -> None:
        """`rec` in a transaction of its own, on its institution's chain."""

        async def op(conn: Conn) -> None:
            await pg.audit_append(conn, self.key, rec, rec.fixmedins_code)

        await self.store.transaction(op)

    @staticmethod
    def record(rpc: str, request: Any, now: int, outcome: str, extra: str) -> audit.Record:
        h = request.header
        objects = audit.objects_of(request, f"node={h.node_id}" if h.node_id else "", extra)
        role = roles.CENTER_SERVICE
        return audit.Record(now, h.fixmedins_code, h.opter, role, rpc, objects, outcome)

    async def append(
        self, conn: Conn, rpc: str, request: Any, now: int, replayed: bool, extra: str = ""
    ) -> None:
        rec = self.record(rpc, request, now, "REPLAY" if replayed else "OK", extra)
        await pg.audit_append(conn, self.key, rec, request.header.fixmedins_code)

    async def refused(self, rpc: str, request: Any, exc: ClientError) -> None:
        rec = self.record(rpc, request, now_ms(), outcome_of(exc), "")
        await self.refusals.record(rec, exc)

    async def denied(self, rpc: str, peer: Peer, request: Any, exc: ClientError) -> None:
        if exc.audited or exc.code not in AUTH_CODES:
            return
        exc.audited = True
        h = getattr(request, "header", None)
        code = getattr(h, "fixmedins_code", "") or peer.institution
        rec = audit.Record(
            now_ms(),
            code,
            getattr(h, "opter", ""),
            roles.render(peer.roles),
            rpc,
            f"peer={peer.describe()}",
            outcome_of(exc),
        )
        await self.refusals.record(rec, exc)


def payload_hash(method: str, request: Any) -> bytes:
    """`request_hash` of a front-end's call without its instance id: which machine sends a
    call is not part of what the call asks (a retry through another worker is the same)."""
    header = request.header
    instance_id, header.instance_id = header.instance_id, ""
    try:
        return request_hash(method, request)
    finally:
        header.instance_id = instance_id


class CenterService:
    def __init__(
        self,
        store: PgStore,
        env: center.CenterEnv,
        dsn: str,
        audit_key: bytes,
        refusals_per_s: float = 50.0,
        settle_batch: int = 256,
    ) -> None:
        self.store = store
        self.env = env
        self.auditor = CenterAuditor(store, audit_key, refusals_per_s)
        self.summaries = summaries.SummaryGroup(
            store,
            env,
            audit_key,
            self._settle_alone,
            lambda call, replayed: CenterAuditor.record(
                SETTLE, call.req, call.now, "REPLAY" if replayed else "OK", ""
            ),
            settle_batch,
        )
        increments = CenterIncrements(dsn)
        self.CatalogSince = increments.CatalogSince
        self.PolicySince = increments.PolicySince

    async def SettleSummary(self, request: center_pb2.CenterSettleRequest, context: Ctx) -> bytes:
        now = now_ms()
        if request.pre_settle:
            digest = self._checked(request)
            return await self.store.read(
                lambda conn: center.settle_summary(conn, self.env, request, digest, now)
            )
        tally = metrics.Tally()
        try:
            return await self._answered(request, self._submit(request, now), tally)
        finally:
            tally.flush()

    async def SettleSummaries(self, request: center_pb2.CenterSettleBatch, context: Ctx) -> Any:
        """Each item as its own SettleSummary, all submitted before any is awaited so they
        share a batch (summaries.SummaryGroup); a refusal is that item's outcome."""
        center.check_settle_batch(request)
        now = now_ms()
        submitted: list[Awaitable[summaries.Answer] | ClientError] = []
        for call in request.calls:
            try:
                if call.pre_settle:
                    raise field_error("pre_settle", ONE_BY_ONE)
                submitted.append(self._submit(call, now))
            except ClientError as exc:
                submitted.append(exc)
        resp = center_pb2.CenterSettleBatchResponse()
        tally = metrics.Tally()
        try:
            for call, got in zip(request.calls, submitted, strict=True):
                out = resp.outcomes.add()
                try:
                    if isinstance(got, ClientError):
                        raise got
                    answer = await self._answered(call, got, tally)
                except ClientError as exc:
                    out.code, out.message = exc.code.value[0], exc.message
                    continue
                out.answer.MergeFromString(answer)
        finally:
            tally.flush()  # once a label for the whole call, before its answer leaves
        return resp

    def _submit(
        self, request: center_pb2.CenterSettleRequest, now: int
    ) -> Awaitable[summaries.Answer]:
        """A settle's request checked and handed to the batches: its answer, to await."""
        return self.summaries.submit(request, self._checked(request), now)

    def _checked(self, request: center_pb2.CenterSettleRequest) -> bytes:
        """The request's checks (INVALID_ARGUMENT); its digest, which a replay must match."""
        center.check_settle_request(request, self.env.max_visit_fee_fen)
        return payload_hash("SettleSummary", request)

    async def _answered(
        self,
        request: center_pb2.CenterSettleRequest,
        answer: Awaitable[summaries.Answer],
        tally: metrics.Tally,
    ) -> bytes:
        """A submitted settle's answer, counted in `tally`; its refusal counted and audited."""
        try:
            resp, replayed = await answer
        except ClientError as exc:
            tally.settle_refused("center", "center", exc.code)
            await self.auditor.refused(SETTLE, request, exc)
            raise
        tally.settle_answered("center", "center", resp, replayed)
        return resp

    async def _settle_alone(self, call: summaries.Call) -> summaries.Answer:
        """One `SettleSummary` in a transaction of its own (a batch that failed whole)."""
        request, digest, now = call.req, call.digest, call.now
        outcome = Outcome()

        async def op(conn: Conn) -> bytes:
            outcome.replayed = False  # a serialisation retry runs it again
            resp = await center.settle_summary(conn, self.env, request, digest, now, outcome)
            await self.auditor.append(conn, SETTLE, request, now, outcome.replayed)
            return resp

        try:
            resp = await self.store.transaction(op)
        except UniqueViolation:  # a concurrent settle of the same visit got there first
            raise FailedPrecondition(f"mdtrt_id: {request.mdtrt_id} is already settled") from None
        return resp, outcome.replayed

    async def Forward(self, request: center_pb2.ForwardRequest, context: Ctx) -> Any:
        env = self.env
        now = now_ms()

        async def op(conn: Conn) -> bytes:
            resp = await forwarded.forward(conn, env, request, now)
            await self.auditor.append(
                conn, FORWARD, request, now, False, f"items={len(request.items)}"
            )
            return resp

        try:
            try:
                return await self.store.transaction(op)
            except UniqueViolation:  # the same batch replayed concurrently: now duplicates
                return await self.store.transaction(op)
        except ClientError as exc:  # e.g. this node is another front-end machine's
            await self.auditor.refused(FORWARD, request, exc)
            raise

    async def CancelSettlement(
        self, request: center_pb2.CenterCancelRequest, context: Ctx
    ) -> bytes:
        digest = payload_hash("CancelSettlement", request)
        now = now_ms()
        env = self.env

        async def op(conn: Conn) -> bytes:
            resp = await center.cancel(conn, env, request, digest, now)
            await self.auditor.append(conn, CANCEL, request, now, False)
            return resp

        try:
            return await self.store.transaction(op)
        except ClientError as exc:
            await self.auditor.refused(CANCEL, request, exc)
            raise


def read_pg(dsn: str, fn: Callable[[recon.Fetch], T]) -> T:
    """Run `fn` with a query function over one read-only snapshot of the center's database,
    on a short-lived connection (for the rare, heavier reads: reconciliation, increments)."""
    with pg.connect(dsn) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

        def fetch(sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
            return conn.execute(sql.replace("?", "%s"), args).fetchall()

        return fn(fetch)


class CenterIncrements:
    """CatalogSince and PolicySince: what a front-end pulls to stay on the center's versions."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def CatalogSince(
        self, request: catalog_pb2.DownloadCatalogRequest, context: Ctx
    ) -> AsyncIterator[catalog_pb2.CatalogChunk]:
        since, size = request.since_version, request.chunk_size
        chunks = await asyncio.to_thread(
            read_pg, self.dsn, lambda f: reference.catalog_chunks(f, since, size)
        )
        for chunk in chunks:
            yield chunk

    async def PolicySince(self, request: center_pb2.PolicySinceRequest, context: Ctx) -> Any:
        since = request.since_version

        def versions(fetch: recon.Fetch) -> center_pb2.PolicySinceResponse:
            rows = fetch(
                "SELECT policy_id, version, name, canonical_json FROM policies"
                " WHERE version > ? ORDER BY version",
                (since,),
            )
            return center_pb2.PolicySinceResponse(
                versions=[
                    catalog_pb2.PolicyVersion(
                        policy_id=r[0], version=r[1], name=r[2], canonical_json=r[3]
                    )
                    for r in rows
                ]
            )

        return await asyncio.to_thread(read_pg, self.dsn, versions)


class CenterReconciliationService:
    """`medsettle.v1.Reconciliation` at the center: the same totals and details as a
    front-end answers, from the center's ledger of the institution named in the header, so
    the two sides can be laid side by side. Reads run on a short-lived connection in a thread
    (reconciliation is rare; the queries are shared with the front-end's SQLite ledger)."""

    def __init__(self, dsn: str, max_bytes: int) -> None:
        self.dsn = dsn
        self.max_bytes = max_bytes  # the server's message limit

    @staticmethod
    def _code(header: common_pb2.RequestHeader) -> str:
        if not header.fixmedins_code:
            raise field_error("header.fixmedins_code", "is required")
        return header.fixmedins_code

    async def Totals(self, request: reconciliation_pb2.TotalsRequest, context: Ctx) -> Any:
        code = self._code(request.header)
        return await asyncio.to_thread(read_pg, self.dsn, lambda f: recon.totals(f, code, request))

    async def Details(self, request: reconciliation_pb2.DetailsRequest, context: Ctx) -> Any:
        code = self._code(request.header)

        def answer(fetch: recon.Fetch) -> reconciliation_pb2.DetailsResponse:
            resp = recon.details(fetch, code, request, self.max_bytes)
            if not request.page_token:  # with the first (or only) page
                resp.accumulator_differences.extend(
                    recon.accumulator_differences(fetch, code, request.begin_date, request.end_date)
                )
            return resp

        return await asyncio.to_thread(read_pg, self.dsn, answer)
