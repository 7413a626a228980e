"""The tamper-evident audit trail: who did what, to which objects, with what outcome.

Each record is chained to the one before in its chain: `hash = HMAC-SHA256(audit key,
prev_hash || seq || fields)`. A changed record breaks its own hash; a removed one leaves a
gap in `seq`; a reordered one carries the wrong `seq` for its hash; a record forged by
someone who can write the database but lacks the key cannot be made to fit. Removing the
newest records leaves a shorter valid chain, which is why `medsettle audit verify` prints the
head (seq and hash) for the operator to keep outside the machine, and checks a head given
with `--head` is still there.

A front-end keeps one chain (its writes are serialised anyway); the center one per
institution, so settlements of different institutions do not wait on each other's audit
lock. Records older than the retention (default 180 days) are pruned from the start of a
chain; the last pruned record's (seq, hash) stays as the chain's anchor, so the chain still
verifies and a prune that went further than the retention shows.

Records are written in the same transaction as the change they record (`append` takes the
operation's connection), and for refused calls and reads in a transaction of their own
before the answer goes out.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = bytes(32)
DAY_MS = 86_400_000

# The request fields that name the objects a call touched, in this order.
OBJECT_FIELDS = ("psn_no", "mdtrt_id", "setl_id", "omsgid", "mdtrt_cert_no", "version")


@dataclass(frozen=True)
class Record:
    at: int  # unix ms
    fixmedins_code: str
    opter: str
    roles: str
    rpc: str  # the method's path
    objects: str  # "mdtrt_id=M01...;setl_id=S01..."
    outcome: str  # OK | REPLAY | a status code name, then ": reason"

    def fields(self) -> tuple[Any, ...]:
        return (
            self.at,
            self.fixmedins_code,
            self.opter,
            self.roles,
            self.rpc,
            self.objects,
            self.outcome,
        )


def link(key: bytes, chain: str, seq: int, prev: bytes, rec: Record) -> bytes:
    """The hash of record `seq` of `chain` after `prev`."""
    body = "\x1f".join(str(f) for f in (chain, seq, *rec.fields())).encode()
    return hmac.new(key, prev + body, hashlib.sha256).digest()


def anchor_mac(key: bytes, chain: str, seq: int, h: bytes, pruned_before: int) -> bytes:
    """What makes an anchor the audit key's own: one written by hand does not verify."""
    body = "\x1f".join(("anchor", chain, str(seq), h.hex(), str(pruned_before))).encode()
    return hmac.new(key, body, hashlib.sha256).digest()


# The longest value a record keeps as it is. Every id the door lets in is shorter
# (server/limits.py); anything longer is kept as its digest, so that no request, refused or
# not, can make its record larger than a few hundred bytes.
VALUE_MAX = 64


def digest(value: str) -> str:
    """What a record keeps of a value too long to keep: enough to match it, no more."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def kept(value: str) -> str:
    """`value`, or its digest when it is longer than VALUE_MAX."""
    return value if len(value) <= VALUE_MAX else digest(value)


def objects_of(request: Any, *extra: str) -> str:
    """The ids a request names (masked: a certificate number is personal data; digested
    when oversize)."""
    out = []
    for name in OBJECT_FIELDS:
        value = getattr(request, name, None)
        if value:
            text = str(value)
            if len(text) > VALUE_MAX:
                text = digest(text)
            elif name == "mdtrt_cert_no":
                text = mask(text)
            out.append(f"{name}={text}")
    for e in extra:
        if e:
            name, eq, value = e.partition("=")
            out.append(f"{name}={kept(value)}" if eq else kept(e))
    return ";".join(out)


def mask(text: str) -> str:
    return text[:4] + "*" * max(0, len(text) - 8) + text[-4:] if len(text) > 8 else "****"


# ------------------------------------------------------------------ SQLite (front-end)
def append(conn: sqlite3.Connection, key: bytes, rec: Record, chain: str = "") -> int:
    """Add `rec` to the end of `chain` in the caller's transaction; returns its seq."""
    row = conn.execute(
        "SELECT seq, hash FROM audit WHERE chain = ? ORDER BY seq DESC LIMIT 1", (chain,)
    ).fetchone()
    if row is None:
        anchor = conn.execute(
            "SELECT seq, hash FROM audit_anchor WHERE chain = ?", (chain,)
        ).fetchone()
        row = anchor if anchor is not None else (0, GENESIS)
    seq, prev = row[0] + 1, bytes(row[1])
    conn.execute(
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (chain, seq, *rec.fields(), link(key, chain, seq, prev, rec)),
    )
    return int(seq)


def prune(conn: sqlite3.Connection, key: bytes, now: int, retention_days: int) -> int:
    """Drop records older than the retention from the start of every chain, keeping each
    chain's anchor; returns how many went."""
    cutoff = now - retention_days * DAY_MS
    gone = 0
    chains = [r[0] for r in conn.execute("SELECT DISTINCT chain FROM audit")]
    for chain in chains:
        last = conn.execute(
            "SELECT seq, hash FROM audit WHERE chain = ? AND at < ? ORDER BY seq DESC LIMIT 1",
            (chain, cutoff),
        ).fetchone()
        if last is None:
            continue
        mac = anchor_mac(key, chain, last[0], bytes(last[1]), cutoff)
        conn.execute(
            "INSERT OR REPLACE INTO audit_anchor VALUES (?, ?, ?, ?, ?)",
            (chain, last[0], last[1], cutoff, mac),
        )
        gone += conn.execute(
            "DELETE FROM audit WHERE chain = ? AND seq <= ?", (chain, last[0])
        ).rowcount
    return gone


@dataclass
class Verdict:
    records: int
    heads: dict[str, tuple[int, bytes]]  # chain -> (seq, hash) of its newest record
    bad: str = ""  # the first bad record and why; "" when the trail is intact
    found: bytes | None = None  # the hash of the record `verify` was asked to look for

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(
    rows: Iterable[tuple[Any, ...]],
    anchors: dict[str, tuple[int, bytes, int, bytes]],
    key: bytes,
    now: int,
    retention_days: int,
    want: tuple[str, int] | None = None,
) -> Verdict:
    """Check `rows` (chain, seq, fields..., hash; ordered by chain, seq) against the key and
    the anchors (chain -> seq, hash, pruned_before). Stops at the first bad record."""
    v = Verdict(0, {})
    chain: str | None = None
    seq, prev = 0, GENESIS
    for row in rows:
        c, s, fields, h = row[0], row[1], row[2:9], bytes(row[9])
        if c != chain:
            chain = c
            seq, prev = 0, GENESIS
            if c in anchors:
                a_seq, a_hash, before, mac = anchors[c]
                seq, prev = a_seq, bytes(a_hash)
                if not hmac.compare_digest(bytes(mac), anchor_mac(key, c, a_seq, prev, before)):
                    v.bad = f"chain {c!r}: the anchor (seq {a_seq}) is not the audit key's"
                    return v
                if before > now - retention_days * DAY_MS + DAY_MS:
                    v.bad = (
                        f"chain {c!r}: records up to seq {a_seq} were pruned though younger"
                        f" than the {retention_days}-day retention"
                    )
                    return v
        rec = Record(*fields)
        where = f"chain {c!r} seq {s}"
        if s != seq + 1:
            v.bad = f"{where}: expected seq {seq + 1} (records missing or reordered)"
            return v
        if not hmac.compare_digest(h, link(key, c, s, prev, rec)):
            v.bad = f"{where}: hash does not match (record changed, or its predecessor)"
            return v
        seq, prev = s, h
        if want == (c, s):
            v.found = h
        v.records += 1
        v.heads[c] = (s, h)
    return v


def verify_sqlite(
    conn: sqlite3.Connection,
    key: bytes,
    now: int,
    retention_days: int,
    want: tuple[str, int] | None = None,
) -> Verdict:
    anchors = {
        r[0]: (r[1], bytes(r[2]), r[3], bytes(r[4]))
        for r in conn.execute("SELECT chain, seq, hash, pruned_before, mac FROM audit_anchor")
    }
    rows = conn.execute("SELECT * FROM audit ORDER BY chain, seq")
    return verify(rows, anchors, key, now, retention_days, want)
