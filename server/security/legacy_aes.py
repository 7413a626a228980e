"""The legacy hospital message format (the commercial platform's interface): AES-128 in ECB mode
with PKCS5 padding, a 16-character key, and Base64 of the ciphertext, sent in an HTTP POST.

For compatibility only. ECB encrypts equal 16-byte blocks to equal ciphertext blocks, so it
leaks the structure of a message (repeated fields, the same person's records); it carries no
integrity either: a flipped ciphertext block decrypts to garbage or, worse, to a swapped
block. Pair it with a signature (the SM3withSM2 request signature) wherever it is used, and
prefer TLS plus SM4 for anything new.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_CHARS = 16
BLOCK_BITS = 128


class LegacyCodecError(ValueError):
    """A key, a Base64 text or a ciphertext the legacy format cannot take."""


def _cipher(key: str) -> Cipher[modes.ECB]:
    raw = key.encode("utf-8")
    if len(key) != KEY_CHARS or len(raw) != KEY_CHARS:
        raise LegacyCodecError(
            f"the key must be {KEY_CHARS} ASCII characters, not {len(raw)} bytes"
        )
    return Cipher(algorithms.AES128(raw), modes.ECB())  # ECB: the legacy format, see above


def encode(plaintext: str, key: str) -> str:
    """The message text (UTF-8) encrypted and Base64-encoded, as the legacy HIS sends it."""
    padder = padding.PKCS7(BLOCK_BITS).padder()  # PKCS5 padding is PKCS7 on 16-byte blocks
    data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    enc = _cipher(key).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")


def decode(text: str, key: str) -> str:
    """The message text of a legacy Base64 ciphertext; LegacyCodecError when it is not one
    (bad Base64, a length that is not whole blocks, wrong padding: usually the wrong key)."""
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LegacyCodecError(f"not Base64: {exc}") from None
    if not data or len(data) % 16:
        raise LegacyCodecError(f"{len(data)} bytes of ciphertext is not whole 16-byte blocks")
    dec = _cipher(key).decryptor()
    padded = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(BLOCK_BITS).unpadder()
    try:
        raw = unpadder.update(padded) + unpadder.finalize()
        return raw.decode("utf-8")
    except ValueError:  # bad padding or not UTF-8: the wrong key, or a damaged message
        raise LegacyCodecError(
            "the padding or text is wrong: wrong key or damaged message"
        ) from None
