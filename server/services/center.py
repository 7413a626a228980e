"""The `medsettle.v1.Center` service over PostgreSQL: settle from a front-end's summary and
cancel (center mode). Forwarding and catalog/policy increments arrive with the forwarder;
until then those methods answer UNIMPLEMENTED (they are not registered)."""

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

    async def CancelSettlement(
        self, request: center_pb2.CenterCancelRequest, context: Ctx
    ) -> bytes:
        digest = request_hash("CancelSettlement", request)
        now = now_ms()
        env = self.env

        async def op(conn: Conn) -> bytes:
            return await center.cancel(conn, env, request, digest, now)

        return await self.store.transaction(op)
