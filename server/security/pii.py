"""Personal identifiers at rest: names, ID (certificate) numbers, card numbers and e-voucher
tokens are stored sealed, and found by a keyed hash instead of their clear text; so are the
diagnoses of each visit, and the stored records that name a person.

A sealed value is `version (1 byte) || nonce (12) || ciphertext || tag (16)`: version 1 is
AES-256-GCM, version 2 SM4-GCM (for deployments that require the national cipher; its key is
the first 16 bytes of the same derived key). The associated data names the field and the
person it belongs to, so a value copied onto another person's row, or into another field,
does not open. Lookups (`GetPerson` by ID card, social-security card or e-voucher) use
`index`: HMAC-SHA256 under its own key, truncated to 16 bytes, which leaks equality only
(two rows with the same number have the same index), never the number.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clients import sm4gcm
from server.security.datakeys import DataKeys

AES_256_GCM = 1
SM4_GCM = 2
CIPHERS = {"aes-256-gcm": AES_256_GCM, "sm4-gcm": SM4_GCM}
NONCE = 12
INDEX_BYTES = 16


class PiiError(ValueError):
    """A sealed value that does not open: damaged, moved, or sealed under another key."""


class Vault:
    def __init__(self, keys: DataKeys, cipher: str = "aes-256-gcm") -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"pii_cipher: {cipher!r} is not one of {', '.join(CIPHERS)}")
        self.version = CIPHERS[cipher]
        self._aes = AESGCM(keys.pii_seal)
        self._sm4_key = keys.pii_seal[:16]
        self._index_key = keys.pii_index

    @staticmethod
    def _aad(field: str, owner: str) -> bytes:
        return f"medsettle/pii/1|{field}|{owner}".encode()

    def seal(self, field: str, owner: str, value: str) -> bytes:
        return self.seal_bytes(field, owner, value.encode())

    def open(self, field: str, owner: str, sealed: bytes) -> str:
        """The clear value; either cipher opens, whatever this vault seals with now (so a
        deployment can switch without re-sealing first)."""
        return self.open_bytes(field, owner, sealed).decode()

    def seal_bytes(self, field: str, owner: str, data: bytes) -> bytes:
        """`seal` for a stored message that carries personal data (a settlement, an answer)."""
        aad = self._aad(field, owner)
        if self.version == SM4_GCM:
            return bytes([SM4_GCM]) + sm4gcm.seal(self._sm4_key, data, aad)
        nonce = os.urandom(NONCE)
        return bytes([AES_256_GCM]) + nonce + self._aes.encrypt(nonce, data, aad)

    def open_bytes(self, field: str, owner: str, sealed: bytes) -> bytes:
        if not sealed:
            raise PiiError(f"{field} of {owner}: empty")
        aad = self._aad(field, owner)
        try:
            if sealed[0] == AES_256_GCM:
                nonce, body = sealed[1 : 1 + NONCE], sealed[1 + NONCE :]
                return self._aes.decrypt(nonce, body, aad)
            if sealed[0] == SM4_GCM:
                return sm4gcm.open_sealed(self._sm4_key, sealed[1:], aad)
        except (InvalidTag, sm4gcm.SealError):
            raise PiiError(
                f"{field} of {owner}: does not open (moved, damaged or another key)"
            ) from None
        raise PiiError(f"{field} of {owner}: unknown version {sealed[0]}")

    # The two stored records that name a person, each bound to its own key in the store.
    def seal_setlinfo(self, setl_id: str, data: bytes) -> bytes:
        """A stored settlement (`settlements.info`, a SetlInfo with the person's name)."""
        return self.seal_bytes("setlinfo", setl_id, data)

    def open_setlinfo(self, setl_id: str, sealed: bytes) -> bytes:
        return self.open_bytes("setlinfo", setl_id, sealed)

    def seal_answer(self, fixmedins_code: str, msgid: str, data: bytes) -> bytes:
        """The stored answer of an idempotent call (`idempotency.response`)."""
        return self.seal_bytes("response", f"{fixmedins_code}|{msgid}", data)

    def open_answer(self, fixmedins_code: str, msgid: str, sealed: bytes) -> bytes:
        return self.open_bytes("response", f"{fixmedins_code}|{msgid}", sealed)

    def seal_diagnoses(self, mdtrt_id: str, codes: Sequence[str]) -> bytes:
        """A visit's diagnoses (`visits.dise_codg`: ICD-10 codes, health data), bound to it."""
        return self.seal_bytes("dise_codg", mdtrt_id, ",".join(codes).encode())

    def open_diagnoses(self, mdtrt_id: str, sealed: bytes) -> list[str]:
        text = self.open_bytes("dise_codg", mdtrt_id, sealed).decode()
        return [d for d in text.split(",") if d]

    def index(self, field: str, value: str) -> bytes | None:
        """The lookup hash of a value; None for an empty one (nothing to find it by)."""
        if not value:
            return None
        mac = hmac.new(self._index_key, f"{field}|{value}".encode(), hashlib.sha256)
        return mac.digest()[:INDEX_BYTES]
