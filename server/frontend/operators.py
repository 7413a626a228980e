"""The operator registry of each institution: who may sign in, holding which roles, proven
by which password.

Written by the institution's security officer (`PutOperators`) or, to bootstrap a new
front-end, by `medsettle operators put` on the database itself. A change of roles or of the
password, or disabling, ends the operator's open sign-ins in the same transaction: nobody
keeps a right the registry no longer gives them, nor a session opened with a password that
was replaced. Only a salted scrypt hash of a password is stored (server/security/passwords.py).

Sign-in failures are counted per operator: `max_failures` wrong passwords in a row lock the
operator out for `lockout_s` (a new password set by the security officer lifts the lock).
What a refusal was (unknown, disabled, locked, wrong) goes to the audit trail only: the
caller hears one answer for all of them, so no answer tells whether an operator exists.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from medsettle.v1 import catalog_pb2
from server.errors import FailedPrecondition, Violations, field_error
from server.limits import FIELD_MAX
from server.security import passwords, roles

OPTER_MAX = FIELD_MAX["opter"]  # what the door lets through (server/limits.py)
PASSWORDS_PER_CALL = 100  # each costs the KDF's work


@dataclass(frozen=True)
class Operator:
    opter: str
    opter_name: str
    roles: frozenset[str]
    disabled: bool = False
    password_hash: str = ""  # passwords.make's; "" keeps the stored one


def put(conn: sqlite3.Connection, fixmedins_code: str, ops: Iterable[Operator], now: int) -> int:
    """Upsert `ops` into the registry of `fixmedins_code`; returns how many. A new password
    clears the failure count and any lock-out."""
    n = 0
    for op in ops:
        before = conn.execute(
            "SELECT roles, disabled FROM operators WHERE fixmedins_code = ? AND opter = ?",
            (fixmedins_code, op.opter),
        ).fetchone()
        stored = roles.render(op.roles)
        conn.execute(
            "INSERT INTO operators (fixmedins_code, opter, opter_name, roles, disabled,"
            " updated_at, password, failures, locked_until) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)"
            " ON CONFLICT (fixmedins_code, opter) DO UPDATE SET opter_name = excluded.opter_name,"
            " roles = excluded.roles, disabled = excluded.disabled,"
            " updated_at = excluded.updated_at,"
            " password = IIF(excluded.password = '', password, excluded.password),"
            " failures = IIF(excluded.password = '', failures, 0),"
            " locked_until = IIF(excluded.password = '', locked_until, 0)",
            (
                fixmedins_code,
                op.opter,
                op.opter_name,
                stored,
                int(op.disabled),
                now,
                op.password_hash,
            ),
        )
        changed = before is not None and (
            before[0] != stored or bool(before[1]) != op.disabled or bool(op.password_hash)
        )
        if changed:
            conn.execute(
                "UPDATE signins SET sign_out_time = ? WHERE fixmedins_code = ? AND opter = ?"
                " AND sign_out_time IS NULL",
                (now, fixmedins_code, op.opter),
            )
        n += 1
    return n


def exists(conn: sqlite3.Connection, fixmedins_code: str, opter: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM operators WHERE fixmedins_code = ? AND opter = ?", (fixmedins_code, opter)
    ).fetchone()
    return row is not None


def check_passwords(req: catalog_pb2.PutOperatorsRequest) -> None:
    """INVALID_ARGUMENT for a weak or oversize new password, before any is hashed."""
    v = Violations()
    given = [i for i, o in enumerate(req.operators) if o.password]
    v.require(
        len(given) <= PASSWORDS_PER_CALL,
        "operators",
        f"at most {PASSWORDS_PER_CALL} passwords in one call",
    )
    for i in given:
        reason = passwords.weakness(req.operators[i].password)
        v.require(not reason, f"operators[{i}].password", reason)
    v.raise_if_any()


def without_passwords(req: catalog_pb2.PutOperatorsRequest) -> catalog_pb2.PutOperatorsRequest:
    """The request as it is recognised and recorded: every password cleared (the digest of
    a retry must not be a way to test guesses of a password)."""
    out = catalog_pb2.PutOperatorsRequest()
    out.CopyFrom(req)
    for o in out.operators:
        o.ClearField("password")
    return out


def put_operators(
    conn: sqlite3.Connection,
    fixmedins_code: str,
    req: catalog_pb2.PutOperatorsRequest,
    hashes: Sequence[str],
    now: int,
) -> tuple[bytes, str]:
    """The RPC: validate every operator, upsert them with their new passwords' hashes
    (`hashes[i]`, "" for none), and refuse a change that would leave the institution
    without an enabled security officer (nobody could manage it again)."""
    if not req.operators:
        raise field_error("operators", "at least one is required")
    v = Violations()
    ops: list[Operator] = []
    for i, o in enumerate(req.operators):
        q = f"operators[{i}]"
        v.require(0 < len(o.opter) <= OPTER_MAX, f"{q}.opter", f"is required, <= {OPTER_MAX}")
        reason = roles.unknown(o.roles)
        v.require(not reason, f"{q}.roles", reason)
        v.require(bool(o.roles) or o.disabled, f"{q}.roles", "at least one unless disabled")
        v.require(
            bool(hashes[i]) or o.disabled or exists(conn, fixmedins_code, o.opter),
            f"{q}.password",
            "a new operator needs one",
        )
        ops.append(Operator(o.opter, o.opter_name, frozenset(o.roles), o.disabled, hashes[i]))
    v.raise_if_any()
    n = put(conn, fixmedins_code, ops, now)
    if not security_officers(conn, fixmedins_code):
        raise FailedPrecondition(
            "operators: the change would leave no enabled operator with the security role"
        )
    return catalog_pb2.PutCountResponse(count=n).SerializeToString(), ""


def security_officers(conn: sqlite3.Connection, fixmedins_code: str) -> int:
    return sum(
        1
        for (r,) in conn.execute(
            "SELECT roles FROM operators WHERE fixmedins_code = ? AND disabled = 0",
            (fixmedins_code,),
        )
        if roles.SECURITY in roles.parse(r)
    )


@dataclass(frozen=True)
class Credential:
    """What a sign-in is checked against."""

    password_hash: str  # "" when none was ever set
    roles: frozenset[str]
    disabled: bool
    locked_until: int  # unix ms; 0 = not locked


def credential(conn: sqlite3.Connection, fixmedins_code: str, opter: str) -> Credential | None:
    row = conn.execute(
        "SELECT password, roles, disabled, locked_until FROM operators"
        " WHERE fixmedins_code = ? AND opter = ?",
        (fixmedins_code, opter),
    ).fetchone()
    if row is None:
        return None
    return Credential(row[0], roles.parse(row[1]), bool(row[2]), row[3])


def password_hash(conn: sqlite3.Connection, fixmedins_code: str, opter: str) -> str | None:
    """The stored hash a sign-in's password is checked against (None: no such operator)."""
    cred = credential(conn, fixmedins_code, opter)
    return None if cred is None else cred.password_hash


def attempt(
    conn: sqlite3.Connection,
    fixmedins_code: str,
    opter: str,
    checked: str | None,
    matched: bool,
    now: int,
    max_failures: int,
    lockout_s: int,
) -> tuple[frozenset[str], str]:
    """A sign-in whose password was checked against the hash `checked` (`matched`, by the
    caller, off the write turn): the roles it signs in with and "", or no roles and why it
    is refused (for the audit trail). A wrong password counts against the operator and
    locks them out at `max_failures` in a row; a right one clears the count."""
    cred = credential(conn, fixmedins_code, opter)
    why = ""
    if cred is None:
        why = "unknown operator"
    elif cred.locked_until > now:
        why = "locked out"
    elif cred.disabled:
        why = "disabled"
    elif not cred.password_hash:
        why = "no password set"
    elif cred.password_hash != checked:  # changed between the check and this transaction
        why = "password changed meanwhile"
    if cred is None or why:
        _count_refusal(conn, fixmedins_code, opter)
        return frozenset(), why
    where = (fixmedins_code, opter)
    if not matched:
        failures = conn.execute(
            "UPDATE operators SET failures = failures + 1 WHERE fixmedins_code = ? AND opter = ?"
            " RETURNING failures",
            where,
        ).fetchone()[0]
        if failures < max_failures:
            return frozenset(), f"wrong password ({failures} in a row)"
        conn.execute(
            "UPDATE operators SET failures = 0, locked_until = ?"
            " WHERE fixmedins_code = ? AND opter = ?",
            (now + lockout_s * 1000, *where),
        )
        return frozenset(), f"wrong password ({failures} in a row): locked for {lockout_s} s"
    conn.execute(
        "UPDATE operators SET failures = 0, locked_until = 0"
        " WHERE fixmedins_code = ? AND opter = ? AND (failures <> 0 OR locked_until <> 0)",
        where,
    )
    return cred.roles, ""


def _count_refusal(conn: sqlite3.Connection, fixmedins_code: str, opter: str) -> None:
    """One page written, as a wrong password's count is: the refusal's commit then takes
    the same time whether or not the operator exists (migration 10)."""
    bucket = hashlib.sha256(f"{fixmedins_code}\0{opter}".encode()).digest()[0]
    conn.execute(
        "INSERT INTO signin_refusals VALUES (?, 1) ON CONFLICT (bucket) DO UPDATE SET n = n + 1",
        (bucket,),
    )


def listing(conn: sqlite3.Connection, fixmedins_code: str) -> list[Operator]:
    return [
        Operator(r[0], r[1], roles.parse(r[2]), bool(r[3]))
        for r in conn.execute(
            "SELECT opter, opter_name, roles, disabled FROM operators WHERE fixmedins_code = ?"
            " ORDER BY opter",
            (fixmedins_code,),
        )
    ]
