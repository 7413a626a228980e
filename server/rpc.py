"""Glue between service implementations and grpc.aio.

Handlers are built from the service descriptors (not the generated `add_*_to_server`), so a
handler may answer with the stored response *bytes* of an idempotent replay: the response
serializer passes bytes through untouched, which is what makes a retry's answer identical
byte for byte. Every handler is wrapped so a `ClientError` becomes its precise status with
`google.rpc.Status` details, and anything else is logged and answered INTERNAL. A caller
with a client certificate speaks only for its institution: every request header it sends
is checked against the certificate here, for every service. Every message's ids and codes
are held to their lengths here too (server/limits.py), before anything reads or records them.
A service's `RAW_METHODS` (its hot unary methods) get their requests as bytes read at the
door in the engine instead (server/door.py: the same bounds, the header, the idempotency
digest), never parsed in Python unless something asks for a field.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from server import door, limits
from server.errors import ClientError
from server.security import roles
from server.security.identity import ANONYMOUS, Peer, peer_of
from server.security.payload import PayloadKeys
from server.security.signing import RequestVerifier

log = logging.getLogger("medsettle.rpc")


class Malformed:
    """What the deserializer hands over for bytes that are not the request message, so the
    handler answers INVALID_ARGUMENT (grpc's own path would answer INTERNAL)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _deserializer(cls: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return parse


def _admitter(cls: type[Message], method: str) -> Callable[[bytes], door.Raw]:
    return lambda data: door.admit(cls, method, data)


def check_parsed(request: Any) -> None:
    """Raise INVALID_ARGUMENT for a message the deserializer could not parse."""
    if isinstance(request, Malformed):
        raise ClientError(f"malformed request message: {request.reason}")


def _serialize(response: Message | bytes) -> bytes:
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


class Auditor(Protocol):
    async def denied(self, rpc: str, peer: Peer, request: Any, exc: ClientError) -> None: ...


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: BaseException,
    method: str,
    audit: tuple[Auditor, Peer, Any] | None = None,
) -> None:
    if isinstance(exc, ClientError):
        if audit is not None:
            auditor, peer, request = audit
            try:
                await auditor.denied(method, peer, request, exc)
            except Exception:  # the refusal still goes out; the log says what was not kept
                log.exception("audit record of a refused %s not written", method)
        status = exc.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


@dataclass(frozen=True)
class Deadlines:
    """Every call must say how long its caller waits (its gRPC deadline), and not longer
    than `max_s`: a call without one could hold a stream and its buffers forever."""

    required: bool = True
    max_s: float = 600.0

    def check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.required:
            return
        left = context.time_remaining()
        if left is None:
            raise ClientError(
                "deadline: every call needs one (grpc-timeout); set a timeout on the call"
            )
        if left > self.max_s + 1:
            raise ClientError(f"deadline: {left:.0f} s is more than this server's {self.max_s:g} s")


@dataclass(frozen=True)
class Access:
    """Who may call what (roles.py): `rules` name a role for every method served. With
    `by_peer` the role comes from the caller's certificate (the center's services, called by
    front-end machines); otherwise from the sign_no, checked by `authenticate`. A plaintext
    development server (`plaintext_open`, warned about at start) lets callers without a
    certificate through, since it has no way to know them."""

    rules: dict[str, frozenset[str]]
    by_peer: bool = False
    plaintext_open: bool = False

    def check(self, method: str, peer: Peer) -> None:
        if not self.by_peer or (peer is ANONYMOUS and self.plaintext_open):
            return
        roles.require(method, self.rules, peer.roles, peer.describe())


# Authenticates a client stream's first message (method path, message) before the server
# reads the rest: whoever may not make the call is refused before it holds anything more.
Admit = Callable[[str, Any], Awaitable[None]]


@dataclass(frozen=True)
class Guards:
    """What every call of a server passes before its handler: a deadline within the cap
    (`deadlines`), the role of the method (`access`), a valid request signature
    (`verifier`), sealed payloads (`payload`), a client stream's caller authenticated on
    its first message (`admit`); `auditor` records the authentication and authorisation
    failures among the refusals."""

    deadlines: Deadlines | None = None
    access: Access | None = None
    verifier: RequestVerifier | None = None
    payload: PayloadKeys | None = None
    auditor: Auditor | None = None
    admit: Admit | None = None


async def _gated(
    chunks: AsyncIterator[Any],
    peer: Peer,
    signed: tuple[RequestVerifier, str, Any] | None,
    opened: tuple[PayloadKeys, str, bytes, str, Callable[[bytes], Any]] | None,
    admitted: tuple[Admit, str] | None,
) -> AsyncIterator[Any]:
    """A request stream whose every message is opened when payloads are sealed, and whose
    every header is checked against the peer (and the sealing institution); when
    signatures are required, the call's signature must verify for its first message (the
    one with the header; the rest ride the same authenticated stream); the first message's
    caller is authenticated (`admitted`) before a second is read."""
    n = 0
    async for raw in chunks:
        chunk = raw
        if opened is not None:
            payload, inst, key, method, parse = opened
            chunk = parse(payload.open(key, method, n, raw))
            check_parsed(chunk)
            payload.check_institution(inst, getattr(chunk, "header", None), f"messages[{n}].header")
        check_parsed(chunk)
        limits.check_ids(chunk, f"messages[{n}].")
        peer.check_header(getattr(chunk, "header", None), f"messages[{n}].header")
        if n == 0 and signed is not None:
            verifier, path, context = signed
            await verifier.check(path, chunk, context.invocation_metadata())
        if n == 0 and admitted is not None:
            admit, path = admitted
            await admit(path, chunk)
        n += 1
        yield chunk


def _wrap_unary(
    method: str,
    fn: Callable[..., Awaitable[Any]],
    streaming_in: bool,
    parse: Callable[[bytes], Any],
    g: Guards,
    raw: bool = False,
) -> Callable[..., Awaitable[Any]]:
    """With `raw`, the request reaches the handler as bytes and `parse` is the door
    (server/door.py: the bounds of its ids are checked there, the message is not parsed)."""
    # a unary request arrives as bytes when sealed or read at the door (`_raw`)
    as_bytes = not streaming_in and (raw or g.payload is not None)

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        peer = ANONYMOUS
        try:
            if g.deadlines is not None:
                g.deadlines.check(context)
            key = b""
            if g.payload is not None:
                inst, key = g.payload.key_for(context.invocation_metadata())
                if not streaming_in:
                    request = g.payload.open(key, method, 0, request)
            if as_bytes:
                request = parse(request)
            if not streaming_in:
                if not raw:
                    check_parsed(request)
                    limits.check_ids(request)
                if g.payload is not None:
                    g.payload.check_institution(inst, getattr(request, "header", None))
            peer = peer_of(context)
            if g.access is not None:
                g.access.check(method, peer)
            if streaming_in:
                signed = None if g.verifier is None else (g.verifier, method, context)
                opened = None if g.payload is None else (g.payload, inst, key, method, parse)
                admitted = None if g.admit is None else (g.admit, method)
                request = _gated(request, peer, signed, opened, admitted)
            else:
                if peer is not ANONYMOUS:
                    peer.check_header(getattr(request, "header", None))
                if g.verifier is not None:
                    await g.verifier.check(method, request, context.invocation_metadata())
            answer = await fn(request, context)
            if g.payload is not None:
                return g.payload.seal(key, method, 0, _serialize(answer))
            return answer
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            audit = None if g.auditor is None else (g.auditor, peer, request)
            await _abort(context, exc, method, audit)

    return handler


def _wrap_stream_out(
    method: str, fn: Callable[..., AsyncIterator[Any]], parse: Callable[[bytes], Any], g: Guards
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        peer = ANONYMOUS
        try:
            if g.deadlines is not None:
                g.deadlines.check(context)
            key = b""
            if g.payload is not None:
                inst, key = g.payload.key_for(context.invocation_metadata())
                request = parse(g.payload.open(key, method, 0, request))
            check_parsed(request)
            limits.check_ids(request)
            if g.payload is not None:
                g.payload.check_institution(inst, getattr(request, "header", None))
            peer = peer_of(context)
            if g.access is not None:
                g.access.check(method, peer)
            peer.check_header(getattr(request, "header", None))
            if g.verifier is not None:
                await g.verifier.check(method, request, context.invocation_metadata())
            n = 0
            async for item in fn(request, context):
                if g.payload is not None:
                    item = g.payload.seal(key, method, n, _serialize(item))
                n += 1
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            audit = None if g.auditor is None else (g.auditor, peer, request)
            await _abort(context, exc, method, audit)

    return handler


def _raw(data: bytes) -> bytes:
    return data


def generic_handler(
    service: ServiceDescriptor, impl: object, guards: Guards | None = None
) -> grpc.GenericRpcHandler:
    """A handler for every method of `service` that `impl` has, calling `impl.<MethodName>`,
    behind `guards` (a method without a role rule is a programming error, refused at
    start). With sealed payloads the messages reach the handler as bytes and are opened
    there, where the call's metadata names the key."""
    g = guards or Guards()
    raw_methods: frozenset[str] = getattr(impl, "RAW_METHODS", frozenset())
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for m in service.methods:
        fn = getattr(impl, m.name, None)
        if fn is None:  # not served yet: grpc answers UNIMPLEMENTED
            continue
        path = f"/{service.full_name}/{m.name}"  # what the caller signed
        if g.access is not None and path not in g.access.rules:
            raise RuntimeError(f"{path} has no role rule in server/security/roles.py")
        cls = message_factory.GetMessageClass(m.input_type)
        raw = m.name in raw_methods and not (m.client_streaming or m.server_streaming)
        parse = _admitter(cls, m.name) if raw else _deserializer(cls)
        deser = _raw if g.payload is not None or raw else parse
        if m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(
                _wrap_unary(path, fn, True, parse, g),
                request_deserializer=deser,
                response_serializer=_serialize,
            )
        elif m.server_streaming and not m.client_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                _wrap_stream_out(path, fn, parse, g),
                request_deserializer=deser,
                response_serializer=_serialize,
            )
        elif not m.client_streaming:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                _wrap_unary(path, fn, False, parse, g, raw),
                request_deserializer=deser,
                response_serializer=_serialize,
            )
        else:  # pragma: no cover - the contract has no bidirectional calls
            raise NotImplementedError(m.full_name)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
