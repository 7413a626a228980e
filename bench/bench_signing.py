"""What the security checks cost per call, without the network: the SDK's canonical string
of the load kit's Settle request (clients/signing.py `canonical`, the engine's
`signed_text`), the server's whole check of an HMAC-SM3 signature
(server/security/signing.py `RequestVerifier.check_sync`: the metadata, the canonical
string, the MAC, the nonce book), and under mutual TLS the caller's identity from its
certificate (server/security/identity.py `peer_of`) beside grpc's whole `auth_context()`.

    .venv/bin/python -m bench.bench_signing --calls 20000 --rounds 3

Each round times `--calls` calls of each, one after another, each call with its own nonce;
the identity is read `--calls` times inside one call of a gRPC server on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

import engine_rs
from clients.signing import HMAC, MD_NONCE, MD_SIGNATURE, MD_TIMESTAMP, MD_TYPE, canonical
from medsettle.v1 import common_pb2, settlement_pb2
from server.security import certs
from server.security.identity import peer_of
from server.security.signing import InstitutionKey, RequestVerifier

CODE = "H44010100001"
METHOD = "/medsettle.v1.Settlement/Settle"


def settle_request() -> settlement_pb2.SettleRequest:
    """A Settle as the load kit sends it."""
    return settlement_pb2.SettleRequest(
        header=common_pb2.RequestHeader(
            fixmedins_code=CODE,
            msgid="H4401010000120261206230000123456",
            opter="load",
            sign_no="1234567890abcdef1234567890abcdef",
        ),
        mdtrt_id="MH4401010000101000000000001",
        psn_no="4401000000000001",
        medfee_sumamt=102_550,
        acct_used_flag=True,
    )


def one_round(calls: int) -> tuple[float, float]:
    """(microseconds per canonical string, microseconds per verified call)."""
    key = secrets.token_bytes(32)
    verifier = RequestVerifier({CODE: InstitutionKey(hmac_key=key)})
    req = settle_request()
    now = int(time.time() * 1000)
    nonces = [f"nonce{i:012d}" for i in range(calls)]
    t0 = time.perf_counter()
    texts = [canonical(METHOD, req, now, n) for n in nonces]
    text_us = (time.perf_counter() - t0) / calls * 1e6
    metadata = [
        (
            (MD_TYPE, HMAC),
            (MD_TIMESTAMP, str(now)),
            (MD_NONCE, n),
            (MD_SIGNATURE, base64.b64encode(engine_rs.hmac_sm3(key, t)).decode()),
        )
        for n, t in zip(nonces, texts, strict=True)
    ]
    t0 = time.perf_counter()
    for md in metadata:
        verifier.check_sync(METHOD, req, md, now)
    verify_us = (time.perf_counter() - t0) / calls * 1e6
    return text_us, verify_us


def identity_round(calls: int) -> tuple[float, float]:
    """(microseconds per `peer_of`, per `auth_context()`) under mutual TLS."""
    with tempfile.TemporaryDirectory() as d:
        pki = Path(d)
        certs.init(pki, [CODE], [])
        ca = str(pki / "ca.pem")
        files = [
            certs.TlsFiles(str(pki / f"{stem}.pem"), str(pki / f"{stem}.key"), ca)
            for stem in (f"frontend-{CODE}", CODE)
        ]
        took: list[float] = []

        async def handler(request: bytes, context: Any) -> bytes:
            for read in (lambda: peer_of(context), context.auth_context):
                t0 = time.perf_counter()
                for _ in range(calls):
                    read()
                took.append((time.perf_counter() - t0) / calls * 1e6)
            return b""

        async def run() -> None:
            server = grpc.aio.server()
            methods: dict[str, Any] = {"M": grpc.unary_unary_rpc_method_handler(handler)}
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("b.B", methods)])
            port = server.add_secure_port("localhost:0", files[0].server_credentials(True))
            await server.start()
            try:
                target = f"localhost:{port}"
                async with grpc.aio.secure_channel(target, files[1].channel_credentials()) as ch:
                    call: Any = ch.unary_unary("/b.B/M")
                    await call(b"", timeout=300)
            finally:
                await server.stop(0)

        asyncio.run(run())
    return took[0], took[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    for r in range(args.rounds):
        text_us, verify_us = one_round(args.calls)
        peer_us, auth_us = identity_round(args.calls)
        print(
            f"round {r + 1}, per call: canonical string {text_us:.1f} us, HMAC-SM3 check"
            f" {verify_us:.1f} us; under mutual TLS peer_of {peer_us:.1f} us"
            f" (auth_context() {auth_us:.1f} us)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
