"""A front-end's link to its center (center mode): one grpc.aio channel, a deadline on every
call, and the center's answers turned into the front-end's own statuses. A center that does
not answer in time is UNAVAILABLE to the HIS; nothing is committed locally then.

Every request's NodeHeader carries this front-end's instance id (server/nodes.py). A
center that answers that this node id belongs to another machine stops the front-end
(`background.stop_serving`): whatever call learns it, nothing more is settled under ids
another machine issues too.

Settles go to the center in batches (`batch` > 1, the setting `center_batch`): the settles
of one institution that reach the link while its previous call is out travel together in
one `SettleSummaries` call, each answered on its own as `SettleSummary` would answer it. A
call that fails as a whole (no answer, a refusal of the batch) fails each of its settles
the same way, as a lost `SettleSummary` would. A center that predates `SettleSummaries`
answers it UNIMPLEMENTED: `center_batch = 1` sends it one `SettleSummary` a settle.

A settle travels as the bytes the ledger encoded (its header naming this machine already)
and its answer comes back as bytes for the ledger to keep: the link decodes and encodes
neither (`CenterSettleBatchBytes`, the same wire as the batch's messages)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from medsettle.v1 import catalog_pb2, center_pb2, center_pb2_grpc
from server import background, metrics
from server.errors import FailedPrecondition, Relayed, Unavailable
from server.nodes import CLASH

UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_CODES = {c.value[0]: c for c in grpc.StatusCode}
# A settle waiting for its batch's answer: the encoded request, and where its answer (an
# encoded CenterSettleResponse) goes.
Waiting = tuple[bytes, "asyncio.Future[bytes]"]
SETTLE_SUMMARY = "/medsettle.v1.Center/SettleSummary"
SETTLE_SUMMARIES = "/medsettle.v1.Center/SettleSummaries"


class CenterLink:
    def __init__(
        self,
        target: str,
        deadline_s: float,
        credentials: grpc.ChannelCredentials | None = None,
        batch: int = 1,
    ) -> None:
        self.target = target
        self.deadline_s = deadline_s
        self.credentials = credentials  # mutual TLS when set
        self.batch = batch  # settles in one SettleSummaries call at most; 1: SettleSummary
        self.instance_id = ""  # this front-end's (CenterRoutes.use_instance)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None  # the generated stub's types describe the sync channel
        self._raw: dict[str, Any] = {}  # the settle methods, bytes in and out
        self._up = metrics.CENTER_LINK_UP.labels(target)
        self._waiting: dict[tuple[str, str], list[Waiting]] = {}  # by (institution, node)
        self._senders: dict[tuple[str, str], asyncio.Task[None]] = {}

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
            assert self._channel is not None
            self._raw = {
                SETTLE_SUMMARY: self._channel.unary_unary(SETTLE_SUMMARY),
                SETTLE_SUMMARIES: self._channel.unary_unary(
                    SETTLE_SUMMARIES,
                    request_serializer=center_pb2.CenterSettleBatchBytes.SerializeToString,
                    response_deserializer=center_pb2.CenterSettleBatchResponseBytes.FromString,
                ),
            }
        return self._stub

    def _settle_method(self, path: str) -> Any:
        """A settle method of the center, bytes in and out (the channel made on first use)."""
        self._center()
        return self._raw[path]

    async def settle(
        self, req: bytes, fixmedins_code: str, node_id: str, *, pre_settle: bool = False
    ) -> bytes:
        """The center's answer (an encoded CenterSettleResponse) to `req`, an encoded
        CenterSettleRequest of `node_id` for `fixmedins_code` whose header names this
        machine (settle.center_ask)."""
        if self.batch > 1 and not pre_settle:
            return await self._batched(req, (fixmedins_code, node_id))
        return await self._settle_one(req)

    async def _batched(self, req: bytes, key: tuple[str, str]) -> bytes:
        """`req` in the next SettleSummaries call of its institution and node (`key`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        self._waiting.setdefault(key, []).append((req, done))
        if key not in self._senders:
            self._senders[key] = loop.create_task(self._send(key))
        return await done

    async def _send(self, key: tuple[str, str]) -> None:
        """Calls for `key` one after another while settles wait. A settle whose caller gave
        up meanwhile is sent all the same: the caller has left its undo (center_mode.py)."""
        try:
            while waiting := self._waiting.get(key):
                batch, self._waiting[key] = waiting[: self.batch], waiting[self.batch :]
                await self._send_batch(key, batch)
        except BaseException as exc:  # cancelled (the server stopping): nobody waits on
            for _, done in self._waiting.pop(key, []):
                _settle_future(done, error=exc)
            raise
        finally:
            del self._senders[key]
            if not self._waiting.get(key):
                self._waiting.pop(key, None)

    async def _send_batch(self, key: tuple[str, str], batch: list[Waiting]) -> None:
        call = center_pb2.CenterSettleBatchBytes(
            header=center_pb2.NodeHeader(
                node_id=key[1], fixmedins_code=key[0], instance_id=self.instance_id
            ),
            calls=[req for req, _ in batch],
        )
        metrics.CENTER_LINK_BATCH.observe(len(batch))
        try:
            resp: center_pb2.CenterSettleBatchResponseBytes = await self._settle_method(
                SETTLE_SUMMARIES
            )(call, timeout=self.deadline_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            for _, done in batch:
                _settle_future(done, error=self._refusal(err))
            return
        except BaseException as exc:  # this task cancelled (the server stopping), or a fault
            for _, done in batch:
                _settle_future(done, error=exc)
            raise
        self._up.set(1)
        if len(resp.outcomes) != len(batch):  # not an answer to this call: as if none came
            lost = Unavailable(
                f"the center ({self.target}) answered {len(resp.outcomes)} settles of"
                f" {len(batch)}; retry with the same msgid"
            )
            for _, done in batch:
                _settle_future(done, error=lost)
            return
        for (_, done), out in zip(batch, resp.outcomes, strict=True):
            if out.code == 0:
                _settle_future(done, answer=out.answer)
            else:
                code = _CODES.get(out.code, grpc.StatusCode.UNKNOWN)
                _settle_future(done, error=self._status_error(code, out.message))

    async def _settle_one(self, req: bytes) -> bytes:
        try:
            resp: bytes = await self._settle_method(SETTLE_SUMMARY)(
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
        return self._status_error(err.code(), err.details() or "")

    def _status_error(self, code: grpc.StatusCode, details: str) -> Exception:
        """The front-end's own error for the center's status `code` with `details`."""
        if code in UNREACHABLE:
            self._up.set(0)
            return Unavailable(
                f"the center ({self.target}) did not answer within {self.deadline_s} s;"
                " nothing was settled: retry with the same msgid"
            )
        if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(CLASH):
            background.stop_serving(f"the center ({self.target}) refused this front-end: {details}")
        return Relayed(code, f"center: {details}")

    async def close(self) -> None:
        for task in list(self._senders.values()):
            task.cancel()
        if self._channel is not None:
            await self._channel.close()


def _settle_future(
    done: asyncio.Future[bytes],
    *,
    answer: bytes | None = None,
    error: BaseException | None = None,
) -> None:
    """Hand a settle its outcome, unless its caller has gone."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    elif answer is not None:
        done.set_result(answer)


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
        batch: int = 1,
    ) -> None:
        self.links = {
            target: CenterLink(target, deadline_s, credentials, batch)
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
