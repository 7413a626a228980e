"""Request signing as the national insurance platform does it, for gRPC calls.

The signed text is the canonical string of the call: the request message's fields (its
proto3 JSON form, field names as in the .proto) together with `method` (the full gRPC
method path), `timestamp` (milliseconds since the epoch) and `nonce`, in ASCII order of
their names, as `name=value` joined by `&`; empty fields are left out; a nested message or a
list is written as compact JSON with its keys sorted. It is signed SM3withSM2 with the
institution's SM2 key (user id `1234567812345678`; the signature is Base64 of r||s) or,
where a deployment shares a secret instead, HMAC-SM3 (Base64 of the 32-byte MAC). The
signature, its type, the timestamp and the nonce travel as call metadata, so the messages
themselves are unchanged; the server checks the signature against the key registered for
the institution in the header, and the timestamp and nonce against its replay window.

`SigningInterceptor` signs the calls of a channel (`MedsettleClient(..., signer=)`); for an
upload stream the signature covers its first message, the one with the header.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

import engine_rs

SM2 = "SM3withSM2"
HMAC = "HMAC-SM3"
MD_TYPE = "x-medsettle-sign-type"
MD_TIMESTAMP = "x-medsettle-timestamp"
MD_NONCE = "x-medsettle-nonce"
MD_SIGNATURE = "x-medsettle-signature"


def canonical(method: str, request: Message, timestamp_ms: int, nonce: str) -> bytes:
    """The bytes that are signed for a call (UTF-8 of the canonical string), computed by the
    engine from the request's wire bytes and its type's descriptor (engine_rs/src/signing.rs),
    the same on both sides of the call."""
    return engine_rs.signed_text(
        request.DESCRIPTOR.full_name, request.SerializeToString(), method, timestamp_ms, nonce
    )


@dataclass(frozen=True)
class Signer:
    """An institution's signing key: an SM2 secret key (32 bytes) or an HMAC-SM3 secret."""

    sign_type: str
    key: bytes
    uid: str = engine_rs.SM2_DEFAULT_UID

    def __post_init__(self) -> None:
        if self.sign_type not in (SM2, HMAC):
            raise ValueError(f"sign_type: {self.sign_type!r} is not {SM2} or {HMAC}")
        if self.sign_type == SM2:
            engine_rs.sm2_public_key(self.key)  # a bad key fails here, not on the first call

    def metadata(
        self, method: str, request: Message, now_ms: int | None = None, nonce: str | None = None
    ) -> list[tuple[str, str]]:
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        nonce = nonce or secrets.token_hex(16)
        text = canonical(method, request, ts, nonce)
        raw = (
            engine_rs.sm2_sign(self.key, text, self.uid)
            if self.sign_type == SM2
            else engine_rs.hmac_sm3(self.key, text)
        )
        return [
            (MD_TYPE, self.sign_type),
            (MD_TIMESTAMP, str(ts)),
            (MD_NONCE, nonce),
            (MD_SIGNATURE, base64.b64encode(raw).decode("ascii")),
        ]


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class SigningInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Adds the signature metadata to every call of a channel: of its request message, or of
    an upload stream's first message (the one with the header)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        md: list[tuple[str, str | bytes]] = list(details.metadata or [])
        md += self.signer.metadata(details.method, request)
        return continuation(_Details(details, md), request)

    def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        return self.intercept_unary_unary(continuation, details, request)

    def intercept_stream_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request_iterator: Any
    ) -> Any:
        it = iter(request_iterator)
        first = next(it)
        md: list[tuple[str, str | bytes]] = list(details.metadata or [])
        md += self.signer.metadata(details.method, first)
        return continuation(_Details(details, md), itertools.chain([first], it))


class AioSigningInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamUnaryClientInterceptor
):
    """`SigningInterceptor` for grpc.aio channels (the load kit's)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        md: list[tuple[str, str | bytes]] = list(details.metadata or [])
        if not any(k == MD_SIGNATURE for k, _ in md):  # not signed beforehand
            md += self.signer.metadata(_path(details.method), request)
        return await continuation(_aio_details(details, md), request)

    async def intercept_stream_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request_iterator: Any
    ) -> Any:
        it = iter(request_iterator)  # the kit streams from a list
        first = next(it)
        md: list[tuple[str, str | bytes]] = list(details.metadata or [])
        md += self.signer.metadata(_path(details.method), first)
        return await continuation(_aio_details(details, md), itertools.chain([first], it))


def _aio_details(base: Any, md: list[tuple[str, str | bytes]]) -> Any:
    return grpc.aio.ClientCallDetails(
        base.method, base.timeout, grpc.aio.Metadata(*md), base.credentials, base.wait_for_ready
    )


def _path(method: str | bytes) -> str:
    return method if isinstance(method, str) else method.decode()
