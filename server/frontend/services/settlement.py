"""The `medsettle.v1.Settlement` service: the HIS transaction set over the store.

State-changing calls check the header, hash the request, and run one operation in the
store's group commit: authenticate the sign_no, then either replay the stored answer of the
same msgid or do the work and store its answer with the msgid. Reads run on a snapshot.

A client stream is authenticated on its first message, before the rest is read (`admit`);
a fee stream may hold no more than one visit's lines (server/limits.py); fee lines and visits
beyond the money bounds are refused before anything is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

import engine_rs
from medsettle.v1 import settlement_pb2
from server import limits, metrics
from server.auditing import PERSONAL_READS
from server.common import (
    Caller,
    Env,
    Outcome,
    Trail,
    add_chunk,
    authenticate,
    check_header,
    chunk_hasher,
    idempotent,
    now_ms,
    request_hash,
)
from server.door import Raw
from server.errors import ClientError, field_error, refuse_fields
from server.frontend import settle, visits
from server.frontend.auditing import FrontendAuditor
from server.frontend.center_mode import CANCEL, PRE_SETTLE, REVERSE, SETTLE, CenterMode
from server.frontend.services import signin
from server.frontend.store.sqlite import LedgerCall, Store
from server.rpc import check_parsed

Ctx = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
WriteBody = Callable[[sqlite3.Connection, Caller, int], tuple[bytes, str]]
# (connection, caller, request hash, now, method path) -> the answer
WholeBody = Callable[[sqlite3.Connection, Caller, bytes, int, str], bytes]


class Calls:
    """The two shapes every call of `service` takes: an idempotent write, or a read (and
    `admit`, a write's authentication ahead of its body). `auditor` is the worker's."""

    def __init__(
        self, store: Store, env: Env, service: str, auditor: FrontendAuditor | None = None
    ) -> None:
        self.store = store
        self.env = env
        self.service = service
        self.auditor = auditor or FrontendAuditor(store, env.keys.audit)

    async def write(
        self,
        method: str,
        request: Any,
        body: WriteBody,
        *,
        req_hash: bytes | None = None,
        outcome: Outcome | None = None,
    ) -> bytes:
        """An idempotent write: `body`'s answer stored with the msgid (or the stored one
        replayed), with its audit record."""
        env = self.env

        def whole(
            conn: sqlite3.Connection, caller: Caller, digest: bytes, now: int, path: str
        ) -> bytes:
            header = request.header
            return idempotent(
                conn,
                header.fixmedins_code,
                header.msgid,
                method,
                digest,
                now,
                lambda: body(conn, caller, now),
                outcome,
                Trail.of(env, path, caller, request),
            )

        return await self.write_whole(method, request, whole, req_hash=req_hash)

    async def write_whole(
        self,
        method: str,
        request: Any,
        body: WholeBody,
        *,
        req_hash: bytes | None = None,
    ) -> bytes:
        """A write whose body keeps the msgid's answer and the audit record itself (the
        ledger's settle), after the header check and the caller's authentication in the
        same transaction; a refusal is audited."""
        header = request.header
        check_header(header, needs_msgid=True)
        digest = req_hash if req_hash is not None else request_hash(method, request)
        now = now_ms()
        path = f"/medsettle.v1.{self.service}/{method}"
        env = self.env

        def op(conn: sqlite3.Connection) -> bytes:
            return body(conn, authenticate(conn, env, header, now, path), digest, now, path)

        try:
            return await self.store.write(op)
        except ClientError as exc:
            await self.auditor.refused(path, request, exc, write=True)
            raise

    async def write_ledger(
        self,
        method: str,
        request: Raw,
        run: Callable[[Callable[[sqlite3.Connection], Caller], bytes, int, str], Awaitable[bytes]],
    ) -> bytes:
        """A write the ledger does whole (it keeps the msgid's answer and the audit record),
        of a request read at the door (its digest is the request hash):
        `run(authenticate, request hash, now, path)` queues it in the store and awaits its
        answer; `authenticate(conn)` is the caller's authentication for the batch's
        transaction. A refusal is audited."""
        header = request.header
        check_header(header, needs_msgid=True)
        digest = request.digest
        now = now_ms()
        path = f"/medsettle.v1.{self.service}/{method}"
        env = self.env
        try:
            return await run(
                lambda conn: authenticate(conn, env, header, now, path), digest, now, path
            )
        except ClientError as exc:
            await self.auditor.refused(path, request, exc, write=True)
            raise

    async def admit(self, path: str, request: Any) -> None:
        """Authenticate a write to `path` before reading more of it (a client stream's first
        message, base.Guards.admit): a snapshot check of the sign_no and the role, audited
        when refused. `write` authenticates again in its own transaction (a sign-out may
        come between)."""
        header = request.header
        check_header(header, needs_msgid=True)
        now = now_ms()
        env = self.env
        try:
            await self.store.read(lambda conn: authenticate(conn, env, header, now, path))
        except ClientError as exc:
            await self.auditor.refused(path, request, exc, write=True)
            raise

    async def read(
        self, method: str, request: Any, body: Callable[[sqlite3.Connection, Caller], Any]
    ) -> Any:
        header = request.header
        check_header(header, needs_msgid=False)
        now = now_ms()
        env = self.env
        path = f"/medsettle.v1.{self.service}/{method}"

        def op(conn: sqlite3.Connection) -> tuple[Caller, Any]:
            caller = authenticate(conn, env, header, now, path)
            return caller, body(conn, caller)

        try:
            caller, answer = await self.store.read(op)
        except ClientError as exc:
            await self.auditor.refused(path, request, exc, write=False)
            raise
        await self.auditor.read(path, caller, request)
        return answer


class SettlementService:
    # read at the door from their bytes, which go to the ledger (server/door.py)
    RAW_METHODS = frozenset({"Settle", "CancelSettlement"})

    def __init__(
        self,
        store: Store,
        env: Env,
        center: CenterMode | None = None,
        auditor: FrontendAuditor | None = None,
    ) -> None:
        self.calls = Calls(store, env, "Settlement", auditor)
        self.store = store
        self.env = env
        self.center = center  # set in center mode

    async def SignIn(self, request: settlement_pb2.SignInRequest, context: Ctx) -> bytes:
        return await signin.sign_in(self.store, self.env, self.calls.auditor, request)

    async def SignOut(self, request: settlement_pb2.SignOutRequest, context: Ctx) -> bytes:
        sign_no = request.header.sign_no
        return await self.calls.write(
            "SignOut", request, lambda conn, caller, now: self._sign_out(conn, sign_no, now)
        )

    def _sign_out(self, conn: sqlite3.Connection, sign_no: str, now: int) -> tuple[bytes, str]:
        self.env.signins.drop(sign_no)
        return visits.sign_out(conn, sign_no, now)

    async def GetPerson(self, request: settlement_pb2.GetPersonRequest, context: Ctx) -> Any:
        return await self.calls.read(
            "GetPerson", request, lambda conn, caller: visits.get_person(conn, caller.pii, request)
        )

    async def Register(self, request: settlement_pb2.RegisterRequest, context: Ctx) -> bytes:
        env = self.env
        return await self.calls.write(
            "Register",
            request,
            lambda conn, caller, now: visits.register(conn, env, caller, request, now),
        )

    async def CancelRegistration(
        self, request: settlement_pb2.CancelRegistrationRequest, context: Ctx
    ) -> bytes:
        return await self.calls.write(
            "CancelRegistration",
            request,
            lambda conn, caller, now: visits.cancel_registration(
                conn, caller, request.mdtrt_id, request.psn_no
            ),
        )

    async def UploadFees(self, request: settlement_pb2.UploadFeesRequest, context: Ctx) -> bytes:
        if len(request.lines) > self.env.max_lines_per_call:
            raise field_error(
                "lines",
                f"{len(request.lines)} lines in one call, more than"
                f" {self.env.max_lines_per_call}; use StreamFees",
            )
        upload = engine_rs.FeeUpload(self.env.max_line_fee_fen, limits.MAX_VIOLATIONS)
        refuse_fields(upload.add(request.SerializeToString()))
        return await self._upload("UploadFees", request, upload)

    async def StreamFees(
        self, request_iterator: AsyncIterator[settlement_pb2.UploadFeesRequest], context: Ctx
    ) -> bytes:
        first: settlement_pb2.UploadFeesRequest | None = None
        upload = engine_rs.FeeUpload(self.env.max_line_fee_fen, limits.MAX_VIOLATIONS)
        digest = chunk_hasher("StreamFees")
        limit = self.env.max_lines_per_visit
        bound = limits.StreamBound(limit)
        n = 0
        async for chunk in request_iterator:
            check_parsed(chunk)
            bound.add(chunk)
            if first is None:
                first = chunk  # its caller is authenticated already (base.Guards.admit)
            elif chunk.mdtrt_id and chunk.mdtrt_id != first.mdtrt_id:
                raise field_error(f"messages[{n}].mdtrt_id", "differs from the first message's")
            if len(chunk.lines) > self.env.max_lines_per_call:
                raise field_error(
                    f"messages[{n}].lines",
                    f"more than {self.env.max_lines_per_call} lines in one message",
                )
            if len(upload) + len(chunk.lines) > limit:
                raise field_error("lines", f"more than {limit} lines in one stream")
            # the bytes the digest takes are the ones the engine reads the lines from
            refuse_fields(upload.add(add_chunk(digest, chunk)))
            n += 1
        if first is None:
            raise field_error("messages", "the stream carried no message")
        return await self._upload("StreamFees", first, upload, digest.digest())

    async def _upload(
        self,
        method: str,
        head: settlement_pb2.UploadFeesRequest,
        upload: engine_rs.FeeUpload,
        req_hash: bytes | None = None,
    ) -> bytes:
        """Fee lines onto a visit, unless its fees would pass the per-visit bound."""
        env = self.env

        def body(conn: sqlite3.Connection, caller: Caller, now: int) -> tuple[bytes, str]:
            visits.check_visit_total(conn, caller, head.mdtrt_id, upload, env.max_visit_fee_fen)
            return visits.upload_fees(conn, env, caller, head.mdtrt_id, upload, head.header.msgid)

        return await self.calls.write(method, head, body, req_hash=req_hash)

    async def DeleteFees(self, request: settlement_pb2.DeleteFeesRequest, context: Ctx) -> bytes:
        return await self.calls.write(
            "DeleteFees",
            request,
            lambda conn, caller, now: visits.delete_fees(conn, caller, request),
        )

    async def _in_center_mode(self, path: str, request: Any, answer: Awaitable[T]) -> T:
        """A call center mode answers, with the audit records Calls would write."""
        try:
            value = await answer
        except ClientError as exc:
            await self.calls.auditor.refused(path, request, exc, write=True)
            raise
        if path in PERSONAL_READS:
            await self.calls.auditor.read_by_header(path, request)
        return value

    async def PreSettle(self, request: settlement_pb2.SettleRequest, context: Ctx) -> Any:
        if self.center is not None:
            return await self._in_center_mode(PRE_SETTLE, request, self.center.pre_settle(request))
        return await self.calls.read(
            "PreSettle",
            request,
            lambda conn, caller: settle.pre_settle(conn, self.env, caller, request),
        )

    async def Settle(self, request: Raw, context: Ctx) -> bytes:
        if self.center is not None:
            return await self._in_center_mode(SETTLE, request, self.center.settle(request))
        return await self._in_ledger("Settle", request, settle.settle_call, metrics.settle_refused)

    async def CancelSettlement(self, request: Raw, context: Ctx) -> bytes:
        if self.center is not None:
            return await self._in_center_mode(CANCEL, request, self.center.cancel(request))
        return await self._in_ledger(
            "CancelSettlement",
            request,
            settle.cancel_call,
            metrics.cancel_refused,
        )

    async def _in_ledger(
        self,
        method: str,
        request: Raw,
        call_of: Callable[..., LedgerCall],
        refused: Callable[[str, str, grpc.StatusCode], None],
    ) -> bytes:
        """A local-mode write the ledger does whole (`call_of`: settle.settle_call or
        cancel_call) in the store's next batch, counted by the business metrics: answered
        with its batch once durable (the call's `count`), refused here."""
        try:
            resp = await self.calls.write_ledger(
                method,
                request,
                lambda auth, digest, now, path: settle.in_batch(
                    self.store, call_of(self.env, auth, request.data, digest, now, path)
                ),
            )
        except ClientError as exc:
            refused("local", "frontend", exc.code)
            raise
        return resp

    async def Reverse(self, request: settlement_pb2.ReverseRequest, context: Ctx) -> bytes:
        env = self.env
        if self.center is not None:  # a center-mode Settle is cancelled there first
            await self._in_center_mode(REVERSE, request, self.center.before_reverse(request))
        return await self.calls.write(
            "Reverse",
            request,
            lambda conn, caller, now: settle.reverse(conn, env, caller, request, now),
        )

    async def GetSettlement(
        self, request: settlement_pb2.GetSettlementRequest, context: Ctx
    ) -> Any:
        return await self.calls.read(
            "GetSettlement",
            request,
            lambda conn, caller: settle.get_settlement(conn, caller, request.setl_id),
        )

    async def QuerySettlements(
        self, request: settlement_pb2.QuerySettlementsRequest, context: Ctx
    ) -> Any:
        return await self.calls.read(
            "QuerySettlements",
            request,
            lambda conn, caller: settle.query_settlements(conn, caller, request),
        )

    async def Ping(self, request: settlement_pb2.PingRequest, context: Ctx) -> Any:
        return settlement_pb2.PingResponse(payload=request.payload)
