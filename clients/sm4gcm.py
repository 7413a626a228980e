"""SM4-GCM sealing (GB/T 32907 in the GCM mode of RFC 8998), for deployments that require
payloads, or stored personal data, encrypted with the national cipher.

`seal(key, plaintext, aad)` returns nonce (12 bytes) || ciphertext || tag (16 bytes), with a
fresh random nonce each time; `open_sealed` checks the tag (and the associated data, e.g. the
record's id, so a sealed value cannot be moved to another record) before returning anything.
A key seals at most 2**32 values with random nonces (NIST SP 800-38D's bound): rotate well
before that.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

NONCE = 12
TAG = 16


class SealError(ValueError):
    """A key of the wrong size, or a sealed value that is damaged, forged or not for this
    key and associated data."""


def _key(key: bytes) -> algorithms.SM4:
    if len(key) != 16:
        raise SealError(f"an SM4 key is 16 bytes, not {len(key)}")
    return algorithms.SM4(key)


def seal_with_nonce(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """The sealed value for a given nonce (never reuse one with the same key; `seal` draws
    them). Exposed for known-answer tests."""
    if len(nonce) != NONCE:
        raise SealError(f"the nonce is {NONCE} bytes")
    enc = Cipher(_key(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    body = enc.update(plaintext) + enc.finalize()
    return nonce + body + enc.tag


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    return seal_with_nonce(key, os.urandom(NONCE), plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    if len(sealed) < NONCE + TAG:
        raise SealError("too short to be a sealed value")
    nonce, body, tag = sealed[:NONCE], sealed[NONCE:-TAG], sealed[-TAG:]
    dec = Cipher(_key(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    try:
        return dec.update(body) + dec.finalize()
    except InvalidTag:
        raise SealError("the tag does not verify: damaged, forged, or another key or aad") from None
