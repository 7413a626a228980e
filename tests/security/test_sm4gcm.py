"""SM4-GCM sealing: the RFC 8998 (appendix A.1) known answer, round trips, and refusal of
anything altered or bound to other associated data."""

from __future__ import annotations

import pytest

import engine_rs
from clients.sm4gcm import SealError, open_sealed, seal, seal_with_nonce

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
IV = bytes.fromhex("00001234567800000000ABCD")
AAD = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
PT = bytes.fromhex(
    "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
    "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
)
CT = bytes.fromhex(
    "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
    "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
)
TAG = bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC")


def test_rfc8998_known_answer() -> None:
    assert seal_with_nonce(KEY, IV, PT, AAD) == IV + CT + TAG
    assert open_sealed(KEY, IV + CT + TAG, AAD) == PT


def test_the_block_cipher_under_gcm_is_the_engines_sm4() -> None:
    # With no plaintext and no aad, GHASH is over one all-zero length block, so it is zero
    # and the tag is E_K(J0), J0 = nonce || 00000001: the engine's SM4 must give it.
    tag = seal_with_nonce(KEY, IV, b"", b"")[-16:]
    assert tag == engine_rs.sm4_encrypt_blocks(KEY, IV + b"\x00\x00\x00\x01")


def test_round_trip_fresh_nonces_and_refusals() -> None:
    a, b = (
        seal(KEY, b"440106195603120011", b"person 1"),
        seal(KEY, b"440106195603120011", b"person 1"),
    )
    assert a != b  # a fresh nonce each time
    assert open_sealed(KEY, a, b"person 1") == b"440106195603120011"
    for bad_key, sealed, aad in (
        (KEY, a, b"person 2"),  # moved to another record
        (KEY, a[:-1] + bytes([a[-1] ^ 1]), b"person 1"),  # tag altered
        (KEY, a[:13] + bytes([a[13] ^ 1]) + a[14:], b"person 1"),  # ciphertext altered
        (bytes(16), a, b"person 1"),  # another key
        (KEY, a[:20], b"person 1"),  # truncated
    ):
        with pytest.raises(SealError):
            open_sealed(bad_key, sealed, aad)
    with pytest.raises(SealError, match="16 bytes"):
        seal(b"short", b"x")
