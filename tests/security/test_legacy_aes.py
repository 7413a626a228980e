"""The legacy AES-128/ECB/PKCS5 + Base64 codec (the commercial platform's message format): known
answers derived from the recipe with an independent implementation (OpenSSL's `enc -aes-128-ecb`,
commands beside each), round trips, and the refusals."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from server.security.legacy_aes import LegacyCodecError, decode, encode

KEY = "medsettle2026key"
MESSAGE = '{"infno":"1101","psn_no":"44010000000001"}'
# printf '%s' "$MESSAGE" | openssl enc -aes-128-ecb -nosalt \
#   -K "$(printf '%s' medsettle2026key | xxd -p)" | base64 -w0
CIPHERTEXT = "d9CIKPlBhmXPids4kaMOtca8rsAgTMW3IYkLo8TfugCOfVKONADTjwJ4YjQ7JBuc"
# printf abc | openssl enc -aes-128-ecb -nosalt -K "$(printf 1234567890abcdef | xxd -p)" | base64
SHORT = ("abc", "1234567890abcdef", "AIow8RtjVywtofrWexjrZg==")


def test_known_answers() -> None:
    assert encode(MESSAGE, KEY) == CIPHERTEXT
    assert decode(CIPHERTEXT, KEY) == MESSAGE
    text, key, cipher = SHORT
    assert encode(text, key) == cipher and decode(cipher, key) == text


@pytest.mark.parametrize(
    "text", ["", "x", "a" * 15, "a" * 16, "a" * 17, "张建国 住院 2026-06-15", "\x00\xff"]
)
def test_round_trip(text: str) -> None:
    assert decode(encode(text, KEY), KEY) == text


def test_whole_block_input_gets_a_whole_padding_block() -> None:
    assert len(encode("a" * 16, KEY)) == len(encode("a" * 31, KEY)) == 44  # 32 bytes


def test_ecb_leaks_repeated_blocks() -> None:
    """Why the format is for compatibility only: equal blocks encrypt equally."""
    raw = __import__("base64").b64decode(encode("0123456789abcdef" * 2, KEY))
    assert raw[:16] == raw[16:32]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_agrees_with_openssl_on_other_inputs() -> None:
    for text in ("", "医保结算", "x" * 100):
        out = subprocess.run(
            ["openssl", "enc", "-aes-128-ecb", "-nosalt", "-K", KEY.encode().hex(), "-a", "-A"],
            input=text.encode(),
            capture_output=True,
            check=True,
        )
        assert encode(text, KEY) == out.stdout.decode().strip()


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (CIPHERTEXT, "short", "16 ASCII characters"),
        (CIPHERTEXT, "医保结算医保结算医保结算医保结算", "16 ASCII characters"),
        ("not base64!", KEY, "not Base64"),
        ("QUJD", KEY, "whole 16-byte blocks"),
        (CIPHERTEXT, "medsettle2026kez", "wrong key"),
    ],
)
def test_refusals(text: str, key: str, says: str) -> None:
    with pytest.raises(LegacyCodecError, match=says):
        decode(text, key)
