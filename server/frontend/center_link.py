"""A front-end's link to its center (center mode): one grpc.aio channel, a deadline on every
call, and the center's answers turned into the front-end's own statuses. A center that does
not answer in time is UNAVAILABLE to the HIS; nothing is committed locally then.

Every request's NodeHeader carries this front-end's instance id (server/nodes.py). A
center that answers that this node id belongs to another machine stops the front-end
(`background.stop_serving`): whatever call learns it, nothing more is settled under ids
another machine issues too."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc

from medsettle.v1 import catalog_pb2, center_pb2, center_pb2_grpc
from server import background, metrics
from server.common import id_prefix
from server.errors import FailedPrecondition, Relayed, Unavailable
from server.nodes import CLASH

UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def center_setl_id(node_id: str, fixmedins_code: str, msgid: str) -> str:
    """The id of a center-mode settlement, the same on every retry of one HIS call: a retry
    after a crash meets the center's record of it instead of settling twice."""
    digest = hashlib.sha256(f"{fixmedins_code}\0{msgid}".encode()).hexdigest()[:12]
    return f"{id_prefix('S', fixmedins_code, node_id)}H{digest}"


class CenterLink:
    def __init__(
        self, target: str, deadline_s: float, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.target = target
        self.deadline_s = deadline_s
        self.credentials = credentials  # mutual TLS when set
        self.instance_id = ""  # this front-end's (CenterRoutes.use_instance)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None  # the generated stub's types describe the sync channel
        self._up = metrics.CENTER_LINK_UP.labels(target)

    def _center(self) -> Any:
        if self._stub is None:  # created on the serving loop, on first use
            # Reconnect quickly after the line returns: gRPC's default backoff grows to two
            # minutes, during which every call would fail at once.
            options = [
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            self._channel = (
                grpc.aio.secure_channel(self.target, self.credentials, options=options)
                if self.credentials is not None
                else grpc.aio.insecure_channel(self.target, options=options)
            )
            self._stub = center_pb2_grpc.CenterStub(self._channel)
        return self._stub

    async def settle(self, req: center_pb2.CenterSettleRequest) -> center_pb2.CenterSettleResponse:
        req.header.instance_id = self.instance_id
        try:
            resp: center_pb2.CenterSettleResponse = await self._center().SettleSummary(
                req, timeout=self.deadline_s, wait_for_ready=True
            )
            self._up.set(1)
            return resp
        except grpc.aio.AioRpcError as err:
            raise self._refusal(err) from None

    async def cancel(self, req: center_pb2.CenterCancelRequest) -> center_pb2.CenterSettleResponse:
        req.header.instance_id = self.instance_id
        try:
            resp: center_pb2.CenterSettleResponse = await self._center().CancelSettlement(
                req, timeout=self.deadline_s, wait_for_ready=True
            )
            self._up.set(1)
            return resp
        except grpc.aio.AioRpcError as err:
            raise self._refusal(err) from None

    async def forward(self, req: center_pb2.ForwardRequest) -> center_pb2.ForwardResponse:
        req.header.instance_id = self.instance_id
        try:
            resp: center_pb2.ForwardResponse = await self._center().Forward(
                req, timeout=self.deadline_s, wait_for_ready=True
            )
            self._up.set(1)
            return resp
        except grpc.aio.AioRpcError as err:
            raise self._refusal(err) from None

    async def policy_since(
        self, req: center_pb2.PolicySinceRequest
    ) -> center_pb2.PolicySinceResponse:
        req.header.instance_id = self.instance_id
        try:
            resp: center_pb2.PolicySinceResponse = await self._center().PolicySince(
                req, timeout=self.deadline_s, wait_for_ready=True
            )
            self._up.set(1)
            return resp
        except grpc.aio.AioRpcError as err:
            raise self._refusal(err) from None

    async def catalog_since(
        self, req: catalog_pb2.DownloadCatalogRequest
    ) -> list[catalog_pb2.CatalogChunk]:
        try:
            call = self._center().CatalogSince(req, timeout=60 * self.deadline_s)
            chunks = [chunk async for chunk in call]
            self._up.set(1)
            return chunks
        except grpc.aio.AioRpcError as err:
            raise self._refusal(err) from None

    def _refusal(self, err: grpc.aio.AioRpcError) -> Exception:
        if err.code() in UNREACHABLE:
            self._up.set(0)
            return Unavailable(
                f"the center ({self.target}) did not answer within {self.deadline_s} s;"
                " nothing was settled: retry with the same msgid"
            )
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION and (err.details() or "").startswith(
            CLASH
        ):
            background.stop_serving(
                f"the center ({self.target}) refused this front-end: {err.details()}"
            )
        return Relayed(err.code(), f"center: {err.details()}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class CenterRoutes:
    """The center of each insured region (one PostgreSQL-backed center per pooling region),
    with a default for the rest."""

    def __init__(
        self,
        default: str,
        by_region: dict[str, str],
        deadline_s: float,
        credentials: grpc.ChannelCredentials | None = None,
        instance_id: str = "",
    ) -> None:
        self.links = {
            target: CenterLink(target, deadline_s, credentials)
            for target in {default, *by_region.values()}
            if target
        }
        self.default = self.links.get(default)
        self.by_region = {r: self.links[t] for r, t in by_region.items()}
        self.use_instance(instance_id)

    def __bool__(self) -> bool:
        return bool(self.links)

    @property
    def instance_id(self) -> str:
        return next((link.instance_id for link in self.links.values()), "")

    def use_instance(self, instance_id: str) -> None:
        """Name this front-end machine (`nodes.node_instance`) on every call to a center."""
        for link in self.links.values():
            link.instance_id = instance_id

    def any_link(self) -> CenterLink:
        """The default center, else any: where policy and catalog versions come from."""
        return self.default or next(iter(self.links.values()))

    def link_for(self, insured_region: str) -> CenterLink:
        link = self.by_region.get(insured_region, self.default)
        if link is None:
            raise FailedPrecondition(
                f"no center is configured for insured region {insured_region} (centers)"
            )
        return link

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
