"""How many calls one peer address may have in flight at once (`max_calls_per_peer`, per
worker): beyond it a new call is RESOURCE_EXHAUSTED before its handler runs, so one host
(opening many connections, each with its own stream limit) cannot take every worker's
memory and turn while others wait. The address is the peer's IP without the port: every
connection of a host counts together.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server import metrics
from server.handlers import WrappedOnce

Behavior = Callable[..., Any]
Ctx = grpc.aio.ServicerContext[Any, Any]


def address_of(peer: str) -> str:
    """`ipv4:10.0.0.5:41234` -> `ipv4:10.0.0.5`, `ipv6:[::1]:41234` -> `ipv6:[::1]`;
    anything else (a Unix socket) as it is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class PeerCalls(grpc.aio.ServerInterceptor):
    """Counts every call by its peer's address while it runs; refuses one beyond `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str, int] = {}
        self._wrapped = WrappedOnce(self._wrap)

    async def _enter(self, context: Ctx) -> str:
        address = address_of(context.peer() or "")
        n = self.in_flight.get(address, 0)
        if n >= self.limit:
            metrics.PEER_CALLS_REFUSED.inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{n} calls from {address} are in flight, this server's max_calls_per_peer;"
                " retry when some have finished",
            )
        self.in_flight[address] = n + 1
        return address

    def _leave(self, address: str) -> None:
        n = self.in_flight[address] - 1
        if n:
            self.in_flight[address] = n
        else:
            del self.in_flight[address]

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler_call_details.method, handler)  # type: ignore[no-any-return]

    def _wrap(self, method: str, handler: Any) -> Any:
        # grpc's handlers are namedtuples: `_replace` wraps a behavior
        for kind in ("unary_unary", "stream_unary", "unary_stream", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._counted(behavior)})
        return handler

    def _counted(self, behavior: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(behavior):  # a stream of answers, yielded

            async def streamed(request: Any, context: Ctx) -> AsyncIterator[Any]:
                address = await self._enter(context)
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    self._leave(address)

            return streamed

        async def call(request: Any, context: Ctx) -> Any:
            address = await self._enter(context)
            try:
                return await behavior(request, context)
            finally:
                self._leave(address)

        return call
