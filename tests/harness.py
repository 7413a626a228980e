"""Helpers for the front-end tests: a real server on loopback over a real SQLite file, signed-in
SDK clients, the demo persons and fee lines, and a row-level snapshot of the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from clients.sdk import MedsettleClient
from medsettle.v1 import catalog_pb2, settlement_pb2
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from server.demo.visit import fee_lines
from server.fundsplit import SETL_AMOUNTS
from server.persons import ACC_FIELDS
from server.security import roles

__all__ = ["ACC_FIELDS", "SETL_AMOUNTS"]

INST_A = "H44010100001"  # tertiary, 440100
INST_B = "H44010100002"  # secondary, 440100
INST_FAR = "H44030100001"  # tertiary, 440300 (cross-region for 440100 persons)
DAY = 20260615


PERSONS = {p.psn_no: p for p in demo_data.persons()}
RETIRED = demo_data.persons()[0]  # employee, retired, account 3650.00
EMPLOYEE = demo_data.persons()[1]  # employee in service
CIVIL = demo_data.persons()[2]  # civil servant
CHILD = demo_data.persons()[3]  # resident, minor
ASSISTED = demo_data.persons()[4]  # resident on medical assistance
SECOND_STAY = demo_data.persons()[5]  # employee with one admission already this year
FILED = demo_data.persons()[6]  # cross-region filed


# The demo operators of every demo institution, one per role; they sign in with the demo
# database's generated password (`LocalServer.demo_password`).
OPERATOR_OF = {next(iter(o.roles)): o.opter for o in demo_data.OPERATORS}
DEMO_OPERATORS = frozenset(OPERATOR_OF.values())
CASHIER, SUPERVISOR, FINANCE, ADMIN = (
    OPERATOR_OF[r] for r in (roles.CASHIER, roles.SUPERVISOR, roles.FINANCE, roles.ADMIN)
)
SECURITY = OPERATOR_OF[roles.SECURITY]
# A test operator holding every role, for the tests of something other than privileges
# (test_roles.py tests those): `client` registers it through PutOperators, as the
# institution's security officer does.
ALL_ROLES = "tester"
DEMO_CODES = {i.fixmedins_code for i in demo_data.INSTITUTIONS}
# The password `register` gives the operators the tests register.
PASSWORD = "test-operator-password"


def password_of(server: LocalServer, opter: str) -> str:
    """The password `opter` signs in with at `server`: the demo one for a demo operator,
    otherwise the one `register` gives."""
    return server.demo_password() if opter in DEMO_OPERATORS else PASSWORD


def client(
    server: LocalServer,
    inst: str = INST_A,
    *,
    sign_in: bool = True,
    opter: str = ALL_ROLES,
    **options: Any,
) -> MedsettleClient:
    """A client of `server` for `opter` with their password (`options` go to the client)."""
    if opter == ALL_ROLES and inst in DEMO_CODES and not registered(server, inst, ALL_ROLES):
        register(server, inst, ALL_ROLES, *roles.OPERATOR_ROLES)
    options.setdefault("retries", 0)
    options.setdefault("password", password_of(server, opter))
    c = MedsettleClient(server.target, fixmedins_code=inst, opter=opter, **options)
    if sign_in:
        c.sign_in()
    return c


def registered(server: LocalServer, inst: str, opter: str) -> bool:
    """Whether `opter` is in `inst`'s registry with a password already (read from the file:
    registering again would set a new password, which ends the operator's open sign-ins)."""
    conn = sqlite3.connect(server.db)
    try:
        row = conn.execute(
            "SELECT 1 FROM operators WHERE fixmedins_code = ? AND opter = ? AND password <> ''",
            (inst, opter),
        ).fetchone()
    finally:
        conn.close()
    return row is not None


def register(
    server: LocalServer, inst: str, opter: str, *held: str, password: str = PASSWORD
) -> None:
    """Register `opter` with the roles `held` and `password` at `inst`, as its security
    officer does."""
    sec = client(server, inst, opter=SECURITY)
    with sec:
        sec.put_operators(
            [catalog_pb2.Operator(opter=opter, opter_name=opter, roles=held, password=password)]
        )


def lines(
    n: int, *, seed: int = 1, inst: str = INST_A, day: int = DAY
) -> list[settlement_pb2.FeeLine]:
    return fee_lines(inst, n, seed=seed, begndate=day)


def total(ls: list[settlement_pb2.FeeLine]) -> int:
    return sum(ln.det_item_fee_sumamt for ln in ls)


def admit(
    c: MedsettleClient,
    psn: Any = RETIRED,
    *,
    n_lines: int = 50,
    seed: int = 1,
    med_type: int = 21,
    day: int = DAY,
) -> tuple[str, list[settlement_pb2.FeeLine]]:
    """Register a visit (inpatient by default) and upload its lines; returns the mdtrt_id."""
    v = c.register(
        psn.psn_no,
        insutype=psn.insutype,
        med_type=med_type,
        begndate=day,
        ipt_otp_no=f"NO{seed:06d}",
        dise_codg=["I21.9"],
    )
    ls = lines(n_lines, seed=seed, inst=c.fixmedins_code, day=day)
    c.upload_fees(v.mdtrt_id, ls)
    return v.mdtrt_id, ls


# What a refused call may write: its audit record, and for a refused sign-in the bounded
# refusal count (server/frontend/operators.py) that makes every refusal cost one commit.
AUDIT_TABLES = ("audit", "audit_anchor", "signin_refusals")


def snapshot(db: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit trail's, in a stable order (for "nothing was
    written": a refused call's audit record is the one row it may add, see `audit_rows`)."""
    conn = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
            if r[0] not in AUDIT_TABLES
        ]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def audit_rows(db: str | Path) -> list[tuple[Any, ...]]:
    """The audit records, oldest first: (fixmedins_code, opter, rpc, outcome)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT fixmedins_code, opter, rpc, outcome FROM audit ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def accumulators(db: str | Path, psn_no: str) -> dict[tuple[int, str], tuple[int, ...]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT year, pool, inpatient_count, dedc_paid, hifp_paid, hifp_base, critical_base,"
            " critical_paid, cvlserv_paid, maf_paid FROM accumulators"
            " WHERE psn_no = ? AND opening = 0",
            (psn_no,),
        ).fetchall()
        return {(r[0], r[1]): tuple(r[2:]) for r in rows}
    finally:
        conn.close()
