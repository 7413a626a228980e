"""Operators' passwords: stored only as a slow salted hash (scrypt, RFC 7914), checked in
constant time, off the event loop and a bounded number at a time.

A stored hash names its own parameters, `scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>`,
so the cost can be raised later (`COST`) without invalidating the hashes made before: each
is checked with the parameters it was made with. scrypt is memory-hard (n=2^14, r=8: 16 MiB
per check), so a stolen registry costs an attacker time and memory per guess, and the
stored hash cannot be turned back into the password.

The KDF is the expensive part of a sign-in; it runs on a small pool of its own threads
(hashlib releases the GIL) so the event loop keeps serving, and at most `QUEUE` checks may
wait for it: beyond that a sign-in is RESOURCE_EXHAUSTED, not a growing queue an anonymous
caller could build.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from server.errors import ResourceExhausted

T = TypeVar("T")

PASSWORD_MIN = 8  # characters
PASSWORD_MAX = 256  # bytes of UTF-8: enough for a passphrase, bounded for the KDF
SALT_BYTES = 16
HASH_BYTES = 32
POOL = 2  # KDF threads per process
QUEUE = 64  # checks that may wait for a KDF thread


@dataclass(frozen=True)
class Cost:
    log2_n: int = 14
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        return int(2 * 128 * self.r * (2**self.log2_n) * self.p + 1024 * 1024)


COST = Cost()  # what new hashes are made with
# What an unknown operator's password is checked against: the same work as a real check,
# so the time of an answer does not tell whether the operator exists.
_DUMMY_SALT = b"medsettle/dummy!"


def _kdf(password: str, salt: bytes, cost: Cost) -> bytes:
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=2**cost.log2_n,
        r=cost.r,
        p=cost.p,
        maxmem=cost.maxmem,
        dklen=HASH_BYTES,
    )


def make(password: str, cost: Cost = COST) -> str:
    """The stored form of `password` (a fresh salt each time)."""
    salt = os.urandom(SALT_BYTES)
    digest = _kdf(password, salt, cost)
    return f"scrypt${cost.log2_n}${cost.r}${cost.p}${salt.hex()}${digest.hex()}"


def _parse(stored: str) -> tuple[Cost, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        cost = Cost(int(parts[1]), int(parts[2]), int(parts[3]))
        return cost, bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        return None


def check(stored: str | None, password: str) -> bool:
    """Whether `password` is the one `stored` was made from. None or an unreadable stored
    value (an unknown operator, one without a password) is checked against a dummy with
    the same cost, and is never a match."""
    parsed = _parse(stored) if stored else None
    if parsed is None or not (0 < len(password.encode()) <= PASSWORD_MAX):
        _kdf(password[:PASSWORD_MAX], _DUMMY_SALT, COST)
        return False
    cost, salt, want = parsed
    return hmac.compare_digest(_kdf(password, salt, cost), want)


def weakness(password: str) -> str:
    """Why a new password is refused, or "" when it is acceptable."""
    if len(password) < PASSWORD_MIN:
        return f"at least {PASSWORD_MIN} characters"
    if len(password.encode()) > PASSWORD_MAX:
        return f"at most {PASSWORD_MAX} bytes"
    if password.strip() != password:
        return "no leading or trailing white space"
    return ""


class Kdf:
    """The process's KDF threads, and the bound on checks waiting for them."""

    def __init__(self, threads: int = POOL, queue: int = QUEUE) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kdf")
        self._queue = queue
        self._waiting = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._waiting >= self._queue:
                raise ResourceExhausted("sign-in: too many at once on this server; retry shortly")
            self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            with self._lock:
                self._waiting -= 1

    async def check(self, stored: str | None, password: str) -> bool:
        return await self.run(check, stored, password)

    async def make(self, password: str) -> str:
        return await self.run(make, password)


KDF = Kdf()  # one per process: every sign-in and password change shares it
