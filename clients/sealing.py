"""Optional SM4-GCM encryption of message payloads, for deployments that require the
national cipher on the messages themselves (on top of TLS, or on a line without it).

The convention, both sides: a sealed call carries the metadata `x-medsettle-payload:
sm4-gcm` and `x-medsettle-institution: <fixmedins_code>`; every request message is
`sm4gcm.seal(key, message bytes, aad)` under the institution's registered 16-byte key, and
every response message likewise. The associated data names the method, the direction and the
message's place in its stream (`/medsettle.v1.Settlement/Settle|req|0`), so a sealed message
cannot be replayed as another call's, turned into an answer, or moved within a stream.

`sealed_stubs` gives the SDK stubs that do this; request signing (clients/signing.py) still
signs the message itself, before it is sealed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from clients import sm4gcm

MD_PAYLOAD = "x-medsettle-payload"
MD_INSTITUTION = "x-medsettle-institution"
SM4_GCM = "sm4-gcm"


def aad(method: str, direction: str, n: int) -> bytes:
    return f"{method}|{direction}|{n}".encode()


class _Counter:
    """Seals or opens the successive messages of one call."""

    def __init__(self, key: bytes, method: str, direction: str) -> None:
        self.key, self.method, self.direction = key, method, direction
        self.n = itertools.count()

    def seal(self, data: bytes) -> bytes:
        return sm4gcm.seal(self.key, data, aad(self.method, self.direction, next(self.n)))

    def open(self, data: bytes) -> bytes:
        return sm4gcm.open_sealed(self.key, data, aad(self.method, self.direction, next(self.n)))


class _SealedMethod:
    """One method of a sealed stub: a multicallable made per call, so its serializers count
    the call's own messages."""

    def __init__(
        self,
        channel: grpc.Channel,
        path: str,
        kind: str,
        out_cls: Any,
        institution: str,
        key: bytes,
    ) -> None:
        self.channel, self.path, self.kind, self.out_cls = channel, path, kind, out_cls
        self.md = [(MD_PAYLOAD, SM4_GCM), (MD_INSTITUTION, institution)]
        self.key = key

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        req = _Counter(self.key, self.path, "req")
        resp = _Counter(self.key, self.path, "resp")
        kwargs["metadata"] = [*(kwargs.get("metadata") or ()), *self.md]

        def serialize(msg: Any) -> bytes:
            return req.seal(msg.SerializeToString())

        def deserialize(data: bytes) -> Any:
            return self.out_cls.FromString(resp.open(data))

        make: Callable[..., Any] = getattr(self.channel, self.kind)
        return make(self.path, request_serializer=serialize, response_deserializer=deserialize)(
            request, **kwargs
        )


class SealedStub:
    def __init__(
        self, channel: grpc.Channel, service: ServiceDescriptor, institution: str, key: bytes
    ) -> None:
        if len(key) != 16:
            raise ValueError("an SM4 payload key is 16 bytes")
        for m in service.methods:
            kind = ("stream_" if m.client_streaming else "unary_") + (
                "stream" if m.server_streaming else "unary"
            )
            out_cls = message_factory.GetMessageClass(m.output_type)
            path = f"/{service.full_name}/{m.name}"
            setattr(self, m.name, _SealedMethod(channel, path, kind, out_cls, institution, key))

    def __getattr__(self, name: str) -> Any:  # the methods are set in __init__
        raise AttributeError(name)
