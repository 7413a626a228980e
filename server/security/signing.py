"""The server's side of request signing (clients/signing.py has the canonical string and
the signer): each institution's registered key, the replay window, and the check a call
must pass before its handler runs when a deployment requires signatures.

Keys are registered in a TOML file (`signing_keys`), one table per institution:

    [institutions.H44010100001]
    sm2_public_key = "04…"      # SEC1 hex: the institution signs SM3withSM2
    # hmac_key = "…"            # or hex of a shared secret: HMAC-SM3

`medsettle keys new` makes an SM2 key pair and registers its public half there. A call is
accepted when its signature verifies with the institution's key, its timestamp is within
`window_ms` of the server's clock, and its nonce has not been seen in that window by this
worker process. (With several workers a replayed call may reach another worker inside the
window; a state-changing call then meets its msgid's stored answer and changes nothing.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import secrets
import time
import tomllib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

import engine_rs
from clients.signing import HMAC, MD_NONCE, MD_SIGNATURE, MD_TIMESTAMP, MD_TYPE, SM2, canonical
from server.errors import Unauthenticated

NONCE_MAX = 64


@dataclass(frozen=True)
class InstitutionKey:
    sm2_public_key: bytes = b""
    hmac_key: bytes = b""

    @property
    def sign_type(self) -> str:
        return SM2 if self.sm2_public_key else HMAC


def load_keys(path: str | Path) -> dict[str, InstitutionKey]:
    """The registered keys; ValueError names the entry that is wrong."""
    doc = tomllib.loads(Path(path).read_text("utf-8"))
    out: dict[str, InstitutionKey] = {}
    for code, entry in doc.get("institutions", {}).items():
        where = f"{path}: institutions.{code}"
        if not isinstance(entry, dict) or set(entry) - {"sm2_public_key", "hmac_key"}:
            raise ValueError(f"{where}: expected sm2_public_key or hmac_key")
        try:
            pub = bytes.fromhex(entry.get("sm2_public_key", ""))
            mac = bytes.fromhex(entry.get("hmac_key", ""))
        except ValueError:
            raise ValueError(f"{where}: keys are hex") from None
        if bool(pub) == bool(mac):
            raise ValueError(f"{where}: give exactly one of sm2_public_key, hmac_key")
        if pub:
            try:  # a point not on the curve is refused now, not on the first call
                engine_rs.sm2_verify(pub, b"", b"")
            except engine_rs.CryptoError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if mac and len(mac) < 16:
            raise ValueError(f"{where}: hmac_key is shorter than 16 bytes")
        out[code] = InstitutionKey(pub, mac)
    return out


def new_sm2_secret() -> bytes:
    """A random SM2 secret key (32 bytes below the curve order)."""
    while True:
        secret = secrets.token_bytes(32)
        try:
            engine_rs.sm2_public_key(secret)
            return secret
        except engine_rs.CryptoError:  # zero or not below the order: draw again
            continue


def write_keys(path: str | Path, keys: dict[str, InstitutionKey]) -> None:
    lines = ["# medsettle: institutions' request-signing keys (see server/security/signing.py)"]
    for code in sorted(keys):
        k = keys[code]
        lines.append(f"\n[institutions.{code}]")
        if k.sm2_public_key:
            lines.append(f'sm2_public_key = "{k.sm2_public_key.hex()}"')
        else:
            lines.append(f'hmac_key = "{k.hmac_key.hex()}"')
    Path(path).write_text("\n".join(lines) + "\n", "utf-8")


class NonceBook:
    """Nonces seen within the window, oldest first, so expiry is a walk from the front."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._seen: OrderedDict[str, int] = OrderedDict()

    def first_use(self, key: str, now_ms: int) -> bool:
        while self._seen:
            at = next(iter(self._seen.values()))
            if now_ms - at <= 2 * self.window_ms:
                break
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now_ms
        return True


class RequestVerifier:
    """The signature check of every call with a request header."""

    def __init__(
        self, keys: dict[str, InstitutionKey], window_ms: int = 300_000, threads: int = 2
    ) -> None:
        self.keys = keys
        self.window_ms = window_ms
        self.nonces = NonceBook(window_ms)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sm2-verify")

    async def check(self, method: str, request: Message, metadata: Any) -> None:
        """UNAUTHENTICATED unless the call carries a valid, fresh signature of the
        institution its header names. An SM2 verification (~0.4 ms of curve arithmetic,
        without the GIL) runs on a small thread pool, so the event loop keeps serving."""
        job = self._prepare(method, request, metadata, int(time.time() * 1000))
        if job is None:
            return
        key, text, sig, code, nonce, now = job
        if key.sm2_public_key:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(
                self._pool, engine_rs.sm2_verify, key.sm2_public_key, text, sig
            )
        else:
            ok = _same(engine_rs.hmac_sm3(key.hmac_key, text), sig)
        self._finish(ok, code, nonce, now)

    def check_sync(
        self, method: str, request: Message, metadata: Any, now_ms: int | None = None
    ) -> None:
        """`check` without an event loop (tests, tools)."""
        job = self._prepare(
            method, request, metadata, int(time.time() * 1000) if now_ms is None else now_ms
        )
        if job is None:
            return
        key, text, sig, code, nonce, now = job
        ok = (
            engine_rs.sm2_verify(key.sm2_public_key, text, sig)
            if key.sm2_public_key
            else _same(engine_rs.hmac_sm3(key.hmac_key, text), sig)
        )
        self._finish(ok, code, nonce, now)

    def _prepare(
        self, method: str, request: Message, metadata: Any, now: int
    ) -> tuple[InstitutionKey, bytes, bytes, str, str, int] | None:
        header = getattr(request, "header", None)
        code = getattr(header, "fixmedins_code", "")
        if not code:
            return None  # the handler refuses a header without an institution itself
        md = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
        key = self.keys.get(code)
        if key is None:
            raise Unauthenticated(f"header.fixmedins_code: {code} has no registered signing key")
        sign_type = md.get(MD_TYPE, "")
        if not sign_type or MD_SIGNATURE not in md:
            raise Unauthenticated(f"{MD_SIGNATURE}: this server requires signed requests")
        if sign_type != key.sign_type:
            raise Unauthenticated(f"{MD_TYPE}: {code} is registered for {key.sign_type}")
        ts_text, nonce = md.get(MD_TIMESTAMP, ""), md.get(MD_NONCE, "")
        if not ts_text.isdigit():
            raise Unauthenticated(f"{MD_TIMESTAMP}: milliseconds since the epoch are required")
        ts = int(ts_text)
        if abs(now - ts) > self.window_ms:
            raise Unauthenticated(
                f"{MD_TIMESTAMP}: {ts} is more than {self.window_ms // 1000} s from the"
                " server's clock"
            )
        if not 8 <= len(nonce) <= NONCE_MAX:
            raise Unauthenticated(f"{MD_NONCE}: 8 to {NONCE_MAX} characters are required")
        try:
            sig = base64.b64decode(md[MD_SIGNATURE], validate=True)
        except (binascii.Error, ValueError):
            raise Unauthenticated(f"{MD_SIGNATURE}: not Base64") from None
        return key, canonical(method, request, ts, nonce), sig, code, nonce, now

    def _finish(self, ok: bool, code: str, nonce: str, now: int) -> None:
        if not ok:
            raise Unauthenticated(f"{MD_SIGNATURE}: does not verify for {code}")
        # Recorded only once it verified: a forged call cannot burn a real nonce. (Runs on
        # the loop's thread: no two checks interleave here.)
        if not self.nonces.first_use(f"{code}\0{nonce}", now):
            raise Unauthenticated(f"{MD_NONCE}: already used (a replayed call)")


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
