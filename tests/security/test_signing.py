"""Request signing end to end: `medsettle keys new` registers an institution's SM2 key; a
front-end that requires signatures serves a HIS whose SDK signs SM3withSM2 (and one that
signs HMAC-SM3), and refuses unsigned, tampered, stale, replayed and wrongly keyed calls
with UNAUTHENTICATED, writing nothing. The canonical string is pinned by a known answer."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import engine_rs
from clients.sdk import MedsettleClient, MedsettleError
from clients.signing import HMAC, MD_NONCE, MD_SIGNATURE, MD_TIMESTAMP, SM2, Signer, canonical
from medsettle.v1 import common_pb2, settlement_pb2, settlement_pb2_grpc
from server.demo.localserver import LocalServer
from server.security.signing import InstitutionKey, load_keys, write_keys
from tests.harness import INST_A, INST_B, RETIRED, admit, total

ROOT = Path(__file__).resolve().parents[2]
SETTLE = "/medsettle.v1.Settlement/Settle"


def test_canonical_string_known_answer() -> None:
    req = settlement_pb2.SettleRequest(
        header=common_pb2.RequestHeader(msgid="M1", fixmedins_code=INST_A, opter="收费员"),
        mdtrt_id="V1",
        psn_no="4401",
        medfee_sumamt=12345,
        acct_used_flag=True,
    )
    assert canonical(SETTLE, req, 1764547200000, "n0nce123").decode() == (
        "acct_used_flag=true"
        '&header={"fixmedins_code":"H44010100001","msgid":"M1","opter":"收费员"}'
        "&mdtrt_id=V1&medfee_sumamt=12345&method=/medsettle.v1.Settlement/Settle"
        "&nonce=n0nce123&psn_no=4401&timestamp=1764547200000"
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    """A keys file with A's SM2 key (made by the CLI) and B's HMAC secret."""
    d = tmp_path_factory.mktemp("keys")
    keys_file = d / "signing_keys.toml"
    subprocess.run(
        [
            *(sys.executable, "-m", "server.cli", "keys", "new", "--institution", INST_A),
            *("--dir", str(d), "--keys-file", str(keys_file)),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    secret = bytes.fromhex((d / f"{INST_A}.sm2").read_text().strip())
    assert (d / f"{INST_A}.sm2").stat().st_mode & 0o077 == 0
    registered = load_keys(keys_file)
    assert registered[INST_A].sm2_public_key == engine_rs.sm2_public_key(secret)
    mac = b"b-shared-secret-0123456789"
    write_keys(keys_file, {**registered, INST_B: InstitutionKey(hmac_key=mac)})
    return keys_file, secret, mac


@pytest.fixture
def front(keys: tuple[Path, bytes, bytes], tmp_path: Path) -> Iterator[LocalServer]:
    server = LocalServer(
        tmp_path / "front.db",
        extra=["--signing", "required", "--signing-keys", str(keys[0])],
        log=tmp_path / "front.log",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def settlements(server: LocalServer) -> int:
    with sqlite3.connect(server.db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM settlements").fetchone()[0])


def test_signed_his_visits_sm2_and_hmac(
    front: LocalServer, keys: tuple[Path, bytes, bytes]
) -> None:
    _, secret, mac = keys
    for inst, signer in ((INST_A, Signer(SM2, secret)), (INST_B, Signer(HMAC, mac))):
        c = MedsettleClient(
            front.target,
            fixmedins_code=inst,
            opter="cashier01",
            retries=0,
            signer=signer,
            password=front.demo_password(),
        )
        with c:
            c.sign_in()
            mdtrt_id, ls = admit(c, RETIRED, n_lines=10, seed=7)  # UploadFees, signed
            done = c.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls), acct_used=True)
            assert done.setlinfo.setl_id
            stay = c.register(
                RETIRED.psn_no,
                insutype=RETIRED.insutype,
                med_type=21,
                begndate=20260615,
                ipt_otp_no=f"S{inst}",
                dise_codg=["I21.9"],
            )
            streamed = c.stream_fees(stay.mdtrt_id, ls, chunk=3)  # signed by its first message
            assert streamed.line_count == len(ls)


def _settle_request(c: MedsettleClient) -> settlement_pb2.SettleRequest:
    mdtrt_id, ls = admit(c, RETIRED, n_lines=5, seed=9)
    return settlement_pb2.SettleRequest(
        header=c.header(c.new_msgid()),
        mdtrt_id=mdtrt_id,
        psn_no=RETIRED.psn_no,
        medfee_sumamt=total(ls),
    )


def test_bad_signatures_are_refused_and_write_nothing(
    front: LocalServer, keys: tuple[Path, bytes, bytes]
) -> None:
    _, secret, mac = keys
    good = Signer(SM2, secret)
    c = MedsettleClient(
        front.target,
        fixmedins_code=INST_A,
        opter="cashier01",
        retries=0,
        signer=good,
        password=front.demo_password(),
    )
    with c:
        c.sign_in()
        req = _settle_request(c)
        before = settlements(front)
        with grpc.insecure_channel(front.target) as ch:
            settle = settlement_pb2_grpc.SettlementStub(ch).Settle
            now = int(time.time() * 1000)

            def refused(md: list[tuple[str, str]], says: str) -> None:
                with pytest.raises(grpc.RpcError) as err:
                    settle(req, metadata=tuple(md), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
                assert says in (err.value.details() or ""), err.value.details()

            refused([], "requires signed requests")
            tampered = settlement_pb2.SettleRequest()
            tampered.CopyFrom(req)
            tampered.medfee_sumamt += 1
            md = good.metadata(SETTLE, tampered)  # signed for another amount
            refused(md, "does not verify")
            refused(good.metadata("/medsettle.v1.Settlement/PreSettle", req), "does not verify")
            other = engine_rs.sm2_sign(b"\x07" * 32, canonical(SETTLE, req, now, "nonce-xyz"))
            forged = [
                ("x-medsettle-sign-type", SM2),
                (MD_TIMESTAMP, str(now)),
                (MD_NONCE, "nonce-xyz"),
                (MD_SIGNATURE, base64.b64encode(other).decode()),
            ]
            refused(forged, "does not verify")
            refused(good.metadata(SETTLE, req, now_ms=now - 301_000), "from the server's clock")
            refused(Signer(HMAC, mac).metadata(SETTLE, req), "registered for SM3withSM2")
            assert settlements(front) == before  # nothing settled by a refused call
            md = good.metadata(SETTLE, req)
            settle(req, metadata=tuple(md), timeout=10)  # the real one
            assert settlements(front) == before + 1
            refused(md, "already used")  # the same signed call again: a replay


def test_server_refuses_a_bad_keys_file(tmp_path: Path) -> None:
    bad = tmp_path / "keys.toml"
    bad.write_text('[institutions.H1]\nsm2_public_key = "04abcd"\n')
    out = subprocess.run(
        [
            *(sys.executable, "-m", "server.cli", "serve", "--db", str(tmp_path / "x.db")),
            *("--signing", "required", "--signing-keys", str(bad)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "institutions.H1" in out.stderr, out.stderr


def test_unsigned_sdk_is_refused(front: LocalServer) -> None:
    c = MedsettleClient(
        front.target,
        fixmedins_code=INST_A,
        opter="cashier01",
        retries=0,
        password=front.demo_password(),
    )
    with c, pytest.raises(MedsettleError) as err:
        c.sign_in()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
