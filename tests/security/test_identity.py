"""Who a caller is from its certificate (server/security/identity.py `peer_of`), over real
TLS connections to a gRPC server on loopback: an institution's HIS certificate, a front-end
machine's, a center's, a verified certificate that names nobody medsettle knows (refused:
PERMISSION_DENIED), and no certificate or plaintext (anonymous: the sign-in decides)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.errors import PermissionDenied
from server.security import certs
from server.security.identity import peer_of


def _seen(pki: Path, client: str | None, *, tls: bool = True) -> str:
    """What `peer_of` makes of a call from `client`'s certificate (None: none)."""
    server_files = certs.TlsFiles(
        str(pki / "frontend-H1.pem"), str(pki / "frontend-H1.key"), str(pki / "ca.pem")
    )

    async def handler(request: bytes, context: Any) -> bytes:
        try:
            peer = peer_of(context)
        except PermissionDenied as exc:
            return f"denied: {exc}".encode()
        return f"{peer.describe()}; roles {sorted(peer.roles)}".encode()

    async def main() -> str:
        server = grpc.aio.server()
        methods: dict[str, Any] = {"M": grpc.unary_unary_rpc_method_handler(handler)}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", methods)])
        if tls:
            # a server that does not require a certificate does not ask for one either
            creds = server_files.server_credentials(require_client_cert=client is not None)
            port = server.add_secure_port("localhost:0", creds)
            files = certs.TlsFiles(
                str(pki / f"{client}.pem") if client else "",
                str(pki / f"{client}.key") if client else "",
                str(pki / "ca.pem"),
            )
            channel = grpc.aio.secure_channel(f"localhost:{port}", files.channel_credentials())
        else:
            port = server.add_insecure_port("localhost:0")
            channel = grpc.aio.insecure_channel(f"localhost:{port}")
        await server.start()
        try:
            async with channel:
                call: Any = channel.unary_unary("/t.T/M")
                answer: bytes = await call(b"", timeout=30)
                return answer.decode()
        finally:
            await server.stop(0)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init(d, ["H1"], ["440100"])
    authority = certs.Authority.load_or_create(d)
    # verified by the same CA, but naming nothing of medsettle's
    authority.issue(d, "stranger", ["urn:example:stranger:x"], ["localhost"])
    return d


def test_each_certificate_names_its_caller(pki: Path) -> None:
    assert _seen(pki, "H1") == "the institution certificate of H1; roles []"
    assert _seen(pki, "frontend-H1") == "the front-end certificate of H1; roles ['center_service']"
    assert _seen(pki, "center-440100") == "center 440100; roles []"


def test_a_certificate_naming_nobody_is_refused_and_none_is_anonymous(pki: Path) -> None:
    assert _seen(pki, "stranger") == "denied: the client certificate names no medsettle institution"
    assert _seen(pki, None) == "a caller without a certificate; roles []"
    assert _seen(pki, None, tls=False) == "a caller without a certificate; roles []"
