"""The `medsettle.v1.Center` service over PostgreSQL: settle from a front-end's summary and
cancel (center mode), and record what front-ends in local mode forward. Catalog and policy
increments are not served yet: those methods answer UNIMPLEMENTED (not registered)."""

from __future__ import annotations

from typing import Any

import grpc
from psycopg.errors import UniqueViolation

from clients.pb.medsettle.v1 import center_pb2
from server.domain import center
from server.domain.common import now_ms, request_hash
from server.errors import FailedPrecondition
from server.store.pg import Conn, PgStore

Ctx = grpc.aio.ServicerContext[Any, Any]


class CenterService:
    def __init__(self, store: PgStore, env: center.CenterEnv) -> None:
        self.store = store
        self.env = env

    async def SettleSummary(self, request: center_pb2.CenterSettleRequest, context: Ctx) -> bytes:
        center.check_settle_request(request)
        digest = request_hash("SettleSummary", request)
        now = now_ms()
        env = self.env

        async def op(conn: Conn) -> bytes:
            return await center.settle_summary(conn, env, request, digest, now)

        if request.pre_settle:
            return await self.store.read(op)
        try:
            return await self.store.transaction(op)
        except UniqueViolation:  # a concurrent settle of the same visit got there first
            raise FailedPrecondition(f"mdtrt_id: {request.mdtrt_id} is already settled") from None

    async def Forward(self, request: center_pb2.ForwardRequest, context: Ctx) -> Any:
        env = self.env
        now = now_ms()

        async def op(conn: Conn) -> center_pb2.ForwardResponse:
            return await center.forward(conn, env, request, now)

        try:
            return await self.store.transaction(op)
        except UniqueViolation:  # the same batch replayed concurrently: now all duplicates
            return await self.store.transaction(op)

    async def CancelSettlement(
        self, request: center_pb2.CenterCancelRequest, context: Ctx
    ) -> bytes:
        digest = request_hash("CancelSettlement", request)
        now = now_ms()
        env = self.env

        async def op(conn: Conn) -> bytes:
            return await center.cancel(conn, env, request, digest, now)

        return await self.store.transaction(op)
