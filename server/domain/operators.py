"""The operator registry of each institution: who may sign in, holding which roles.

Written by the institution's security officer (`PutOperators`) or, to bootstrap a new
front-end, by `medsettle operators put` on the database itself. A change of roles, or
disabling, ends the operator's open sign-ins in the same transaction: nobody keeps a right
the registry no longer gives them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from clients.pb.medsettle.v1 import catalog_pb2
from server.errors import FailedPrecondition, PermissionDenied, Violations, field_error
from server.security import roles

OPTER_MAX = 64


@dataclass(frozen=True)
class Operator:
    opter: str
    opter_name: str
    roles: frozenset[str]
    disabled: bool = False


def put(conn: sqlite3.Connection, fixmedins_code: str, ops: Iterable[Operator], now: int) -> int:
    """Upsert `ops` into the registry of `fixmedins_code`; returns how many."""
    n = 0
    for op in ops:
        before = conn.execute(
            "SELECT roles, disabled FROM operators WHERE fixmedins_code = ? AND opter = ?",
            (fixmedins_code, op.opter),
        ).fetchone()
        stored = roles.render(op.roles)
        conn.execute(
            "INSERT OR REPLACE INTO operators VALUES (?, ?, ?, ?, ?, ?)",
            (fixmedins_code, op.opter, op.opter_name, stored, int(op.disabled), now),
        )
        if before is not None and (before[0] != stored or bool(before[1]) != op.disabled):
            conn.execute(
                "UPDATE signins SET sign_out_time = ? WHERE fixmedins_code = ? AND opter = ?"
                " AND sign_out_time IS NULL",
                (now, fixmedins_code, op.opter),
            )
        n += 1
    return n


def put_operators(
    conn: sqlite3.Connection, fixmedins_code: str, req: catalog_pb2.PutOperatorsRequest, now: int
) -> tuple[bytes, str]:
    """The RPC: validate every operator, upsert them, and refuse a change that would leave
    the institution without an enabled security officer (nobody could manage it again)."""
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
        ops.append(Operator(o.opter, o.opter_name, frozenset(o.roles), o.disabled))
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


def for_sign_in(conn: sqlite3.Connection, fixmedins_code: str, opter: str) -> frozenset[str]:
    """The roles an operator signs in with; PERMISSION_DENIED for one the registry does not
    know or has disabled."""
    row = conn.execute(
        "SELECT roles, disabled FROM operators WHERE fixmedins_code = ? AND opter = ?",
        (fixmedins_code, opter),
    ).fetchone()
    if row is None:
        raise PermissionDenied(
            f"header.opter: {opter} is not a registered operator of {fixmedins_code}"
        )
    if row[1]:
        raise PermissionDenied(f"header.opter: {opter} is disabled")
    return roles.parse(row[0])


def listing(conn: sqlite3.Connection, fixmedins_code: str) -> list[Operator]:
    return [
        Operator(r[0], r[1], roles.parse(r[2]), bool(r[3]))
        for r in conn.execute(
            "SELECT opter, opter_name, roles, disabled FROM operators WHERE fixmedins_code = ?"
            " ORDER BY opter",
            (fixmedins_code,),
        )
    ]
