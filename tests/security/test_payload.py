"""Sealed payloads on a real front-end (`payload_encryption = "sm4-gcm"`): a HIS with its
institution's SM4 key settles a visit, uploads by stream and downloads the catalog stream,
signed as well; a call that is not sealed, sealed under another key, sealed for another
method, or sealed by one institution for another's header, is refused and writes nothing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients import sm4gcm
from clients.sdk import MedsettleClient, MedsettleError
from clients.sealing import MD_INSTITUTION, MD_PAYLOAD, SM4_GCM, aad
from clients.signing import HMAC, Signer
from medsettle.v1 import common_pb2, settlement_pb2
from server.demo.localserver import LocalServer
from server.security.signing import InstitutionKey, write_keys
from tests.harness import DAY, EMPLOYEE, INST_A, INST_B, admit, lines, snapshot, total

KEY_A = secrets.token_bytes(16)
KEY_B = secrets.token_bytes(16)
MAC_A = secrets.token_bytes(32)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    d = tmp_path_factory.mktemp("sealed")
    (d / "payload.toml").write_text(
        f'[institutions.{INST_A}]\nsm4_key = "{KEY_A.hex()}"\n'
        f'[institutions.{INST_B}]\nsm4_key = "{KEY_B.hex()}"\n'
    )
    write_keys(d / "sign.toml", {INST_A: InstitutionKey(hmac_key=MAC_A)})
    server = LocalServer(
        d / "fe.db",
        env={
            "MEDSETTLE_PAYLOAD_ENCRYPTION": "sm4-gcm",
            "MEDSETTLE_PAYLOAD_KEYS": str(d / "payload.toml"),
        },
        extra=["--signing", "required", "--signing-keys", str(d / "sign.toml")],
        log=d / "fe.log",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def his(server: LocalServer, opter: str = "cashier01", key: bytes = KEY_A) -> MedsettleClient:
    return MedsettleClient(
        server.target,
        fixmedins_code=INST_A,
        opter=opter,
        retries=0,
        signer=Signer(HMAC, MAC_A),
        payload_key=key,
        password=server.demo_password(),
    )


def test_a_sealed_and_signed_visit(sealed: LocalServer) -> None:
    with his(sealed) as c:
        assert c.sign_in().roles == ["cashier"]
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=30, seed=41, med_type=11)
        done = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
        assert done.medfee_sumamt == total(ls) and done.psn_name == EMPLOYEE.psn_name
        # A sealed upload stream: every message sealed in its place.
        v = c.register(
            EMPLOYEE.psn_no, insutype=EMPLOYEE.insutype, med_type=11, begndate=DAY, ipt_otp_no="S1"
        )
        streamed = lines(25, seed=42)
        assert c.stream_fees(v.mdtrt_id, streamed, chunk=10).line_count == 25
    with his(sealed, "admin01") as admin:
        admin.sign_in()
        chunks = admin.download_catalog()  # a sealed server stream, message by message
        assert sum(len(ch.items) for ch in chunks) > 1000


def test_unsealed_or_wrongly_sealed_calls_are_refused(sealed: LocalServer) -> None:
    before = snapshot(sealed.db)
    plain = MedsettleClient(
        sealed.target,
        fixmedins_code=INST_A,
        opter="cashier01",
        retries=0,
        signer=Signer(HMAC, MAC_A),
        password=sealed.demo_password(),
    )
    with pytest.raises(MedsettleError) as err:
        plain.sign_in()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert MD_PAYLOAD in str(err.value)
    with pytest.raises(MedsettleError) as err:
        his(sealed, key=KEY_B).sign_in()  # another institution's key
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "does not open" in str(err.value)

    path = "/medsettle.v1.Settlement/SignIn"
    req = settlement_pb2.SignInRequest(
        header=common_pb2.RequestHeader(msgid="P1", fixmedins_code=INST_B, opter="cashier01")
    ).SerializeToString()

    def raw(data: bytes, inst: str, path: str = path) -> grpc.StatusCode:
        md = ((MD_PAYLOAD, SM4_GCM), (MD_INSTITUTION, inst))
        try:
            with grpc.insecure_channel(sealed.target) as ch:
                call: Any = ch.unary_unary(path)  # bytes in, bytes out
                call(data, timeout=10, metadata=md)
        except grpc.RpcError as e:
            code: grpc.StatusCode = e.code()
            return code
        return grpc.StatusCode.OK

    # Sealed by A for a header of B; sealed for another method; not sealed at all.
    assert raw(sm4gcm.seal(KEY_A, req, aad(path, "req", 0)), INST_A) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    other = aad("/medsettle.v1.Settlement/SignOut", "req", 0)
    assert raw(sm4gcm.seal(KEY_B, req, other), INST_B) == grpc.StatusCode.UNAUTHENTICATED
    assert raw(req, INST_B) == grpc.StatusCode.UNAUTHENTICATED
    # The same for the writes read at the door from their bytes (server/door.py).
    for method, message in (
        ("Settle", settlement_pb2.SettleRequest(mdtrt_id="M1", psn_no=EMPLOYEE.psn_no)),
        ("CancelSettlement", settlement_pb2.CancelSettlementRequest(setl_id="S1")),
    ):
        message.header.CopyFrom(
            common_pb2.RequestHeader(msgid=f"P-{method}", fixmedins_code=INST_B, opter="c")
        )
        hot = f"/medsettle.v1.Settlement/{method}"
        sealed_by_a = sm4gcm.seal(KEY_A, message.SerializeToString(), aad(hot, "req", 0))
        assert raw(sealed_by_a, INST_A, hot) == grpc.StatusCode.PERMISSION_DENIED, method
    assert snapshot(sealed.db) == before


def test_payload_keys_file_is_checked_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text(f'[institutions.{INST_A}]\nsm4_key = "abcd"\n')
    server = LocalServer(
        tmp_path / "x.db",
        env={"MEDSETTLE_PAYLOAD_ENCRYPTION": "sm4-gcm", "MEDSETTLE_PAYLOAD_KEYS": str(bad)},
        log=tmp_path / "x.log",
    )
    with pytest.raises(RuntimeError, match="exited"):
        server.start(timeout=20)
    assert "sm4_key is 16 bytes" in (tmp_path / "x.log").read_text()
