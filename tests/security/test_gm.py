"""The national algorithms in the Rust engine against the standards' known answers and
against independent implementations: SM3, HMAC-SM3 and SM4 against `cryptography` (OpenSSL
underneath) on random inputs, SM3withSM2 signatures both ways with the `openssl` command
(a signature made by one side verifies on the other, with the platform's user id)."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import engine_rs

UID = "1234567812345678"
# The SM2 curve's OID 1.2.156.10197.1.301, DER-encoded, for a SEC1 private key file.
SM2_OID = bytes.fromhex("06082a811ccf5501822d")
need_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def test_known_answers() -> None:
    assert engine_rs.SM2_DEFAULT_UID == UID
    assert engine_rs.sm3(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert engine_rs.sm4_encrypt_blocks(key, key).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm3_hmac_and_sm4_agree_with_cryptography() -> None:
    rng = secrets.SystemRandom()
    for n in (0, 1, 55, 56, 63, 64, 65, 1000, 10_000):
        data = secrets.token_bytes(n)
        h = hashes.Hash(hashes.SM3())
        h.update(data)
        assert engine_rs.sm3(data) == h.finalize()
        key = secrets.token_bytes(rng.choice([1, 16, 32, 64, 65, 200]))
        m = hmac.HMAC(key, hashes.SM3())
        m.update(data)
        assert engine_rs.hmac_sm3(key, data) == m.finalize()
        k16 = secrets.token_bytes(16)
        blocks = secrets.token_bytes(16 * (n % 7 + 1))
        enc = Cipher(algorithms.SM4(k16), modes.ECB()).encryptor()
        want = enc.update(blocks) + enc.finalize()
        assert engine_rs.sm4_encrypt_blocks(k16, blocks) == want
        assert engine_rs.sm4_decrypt_blocks(k16, want) == blocks


def _sec1_pem(secret: bytes, path: Path) -> Path:
    der = bytes.fromhex("3031020101") + b"\x04\x20" + secret + b"\xa0\x0a" + SM2_OID
    body = base64.encodebytes(der).decode()
    path.write_text(f"-----BEGIN EC PRIVATE KEY-----\n{body}-----END EC PRIVATE KEY-----\n")
    return path


def _der_sig(rs: bytes) -> bytes:
    def integer(x: bytes) -> bytes:
        x = x.lstrip(b"\x00") or b"\x00"
        if x[0] & 0x80:
            x = b"\x00" + x
        return b"\x02" + bytes([len(x)]) + x

    body = integer(rs[:32]) + integer(rs[32:])
    return b"\x30" + bytes([len(body)]) + body


def _rs_sig(der: bytes) -> bytes:
    assert der[0] == 0x30
    i, out = 2, b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2 : i + 2 + n].lstrip(b"\x00").rjust(32, b"\x00")
        i += 2 + n
    return out


def _secret() -> bytes:
    while True:  # below the curve order (a random 256-bit value almost always is)
        s = secrets.token_bytes(32)
        if (
            b"\x00" * 32
            < s
            < bytes.fromhex("fffffffeffffffffffffffffffffffff7203df6b21c6052b53bbf40939d54122")
        ):
            return s


@need_openssl
def test_sm2_signatures_interoperate_with_openssl(tmp_path: Path) -> None:
    for i in range(3):
        secret = _secret()
        key = _sec1_pem(secret, tmp_path / f"k{i}.pem")
        pub = tmp_path / f"p{i}.pem"
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True)
        text = subprocess.run(
            ["openssl", "pkey", "-in", key, "-noout", "-text"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # "pub:" then the point's bytes as hex pairs, then "ASN1 OID: SM2"
        hexpub = "".join(text.split("pub:")[1].split("ASN1")[0].split()).replace(":", "")
        assert engine_rs.sm2_public_key(secret).hex() == hexpub
        msg = tmp_path / f"m{i}"
        msg.write_bytes(f"fixmedins_code=H44010100001&msgid=M{i}&中文".encode())
        # Rust signs, OpenSSL verifies.
        sig = engine_rs.sm2_sign(secret, msg.read_bytes())
        assert len(sig) == 64
        (tmp_path / f"s{i}").write_bytes(_der_sig(sig))
        common = ["-rawin", "-digest", "sm3", "-pkeyopt", f"distid:{UID}", "-in", str(msg)]
        ok = subprocess.run(
            [
                *("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), *common),
                *("-sigfile", str(tmp_path / f"s{i}")),
            ],
            capture_output=True,
            text=True,
        )
        assert "Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr
        # OpenSSL signs, Rust verifies (and refuses another message or user id).
        out = tmp_path / f"o{i}"
        subprocess.run(
            ["openssl", "pkeyutl", "-sign", "-inkey", str(key), *common, "-out", str(out)],
            check=True,
        )
        theirs = _rs_sig(out.read_bytes())
        public = engine_rs.sm2_public_key(secret)
        assert engine_rs.sm2_verify(public, msg.read_bytes(), theirs)
        assert not engine_rs.sm2_verify(public, msg.read_bytes() + b"x", theirs)
        assert not engine_rs.sm2_verify(public, msg.read_bytes(), theirs, uid="another")


def test_bad_keys_are_crypto_errors_and_bad_signatures_are_false() -> None:
    with pytest.raises(engine_rs.CryptoError, match="secret key"):
        engine_rs.sm2_sign(b"\x00" * 32, b"x")
    with pytest.raises(engine_rs.CryptoError, match="public key"):
        engine_rs.sm2_verify(b"\x04" + b"\x01" * 64, b"x", b"\x00" * 64)
    with pytest.raises(engine_rs.CryptoError, match="sm4"):
        engine_rs.sm4_encrypt_blocks(b"k" * 16, b"short")
    assert issubclass(engine_rs.CryptoError, engine_rs.EngineError)
    secret = _secret()
    public = engine_rs.sm2_public_key(secret)
    assert not engine_rs.sm2_verify(public, b"x", b"")
    assert not engine_rs.sm2_verify(public, b"x", b"\xff" * 64)
