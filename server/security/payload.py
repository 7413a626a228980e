"""The server's side of sealed payloads (clients/sealing.py has the convention): the
institutions' registered SM4 keys, and opening a call's messages / sealing its answers.

A front-end with `payload_encryption = "sm4-gcm"` answers only sealed calls (Ping and the
health service aside are sealed too; health is not a medsettle service): a call without the
metadata, from an institution without a registered key, or whose message does not open under
it, is UNAUTHENTICATED before anything is read; a header naming another institution than the
metadata's is PERMISSION_DENIED.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from clients import sm4gcm
from clients.sealing import MD_INSTITUTION, MD_PAYLOAD, SM4_GCM, aad
from server.errors import PermissionDenied, Unauthenticated


def load_keys(path: str | Path) -> dict[str, bytes]:
    """`[institutions.<code>] sm4_key = "<32 hex digits>"`; ValueError names a bad entry."""
    doc = tomllib.loads(Path(path).read_text("utf-8"))
    out: dict[str, bytes] = {}
    for code, entry in doc.get("institutions", {}).items():
        where = f"{path}: institutions.{code}"
        if not isinstance(entry, dict) or set(entry) != {"sm4_key"}:
            raise ValueError(f"{where}: expected sm4_key")
        try:
            key = bytes.fromhex(entry["sm4_key"])
        except ValueError:
            raise ValueError(f"{where}: sm4_key is hex") from None
        if len(key) != 16:
            raise ValueError(f"{where}: sm4_key is 16 bytes (32 hex digits)")
        out[code] = key
    return out


class PayloadKeys:
    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys

    def key_for(self, metadata: Any) -> tuple[str, bytes]:
        md = {k: v for k, v in (metadata or ())}
        if md.get(MD_PAYLOAD) != SM4_GCM:
            raise Unauthenticated(f"{MD_PAYLOAD}: this server takes only {SM4_GCM} sealed calls")
        inst = str(md.get(MD_INSTITUTION, ""))
        key = self.keys.get(inst)
        if key is None:
            raise Unauthenticated(f"{MD_INSTITUTION}: no payload key registered for {inst!r}")
        return inst, key

    @staticmethod
    def open(key: bytes, method: str, n: int, data: bytes) -> bytes:
        try:
            return sm4gcm.open_sealed(key, data, aad(method, "req", n))
        except sm4gcm.SealError:
            raise Unauthenticated(
                f"message {n}: does not open under the institution's payload key"
            ) from None

    @staticmethod
    def seal(key: bytes, method: str, n: int, data: bytes) -> bytes:
        return sm4gcm.seal(key, data, aad(method, "resp", n))

    @staticmethod
    def check_institution(inst: str, header: Any, where: str = "header") -> None:
        code = getattr(header, "fixmedins_code", "")
        if code and code != inst:
            raise PermissionDenied(
                f"{where}.fixmedins_code: {code} is not the sealing institution {inst}"
            )
