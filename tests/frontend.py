"""Helpers for the front-end tests: a real server on loopback over a real SQLite file, signed-in
SDK clients, the demo persons and fee lines, and a row-level snapshot of the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from clients.demo import fee_lines
from clients.localserver import LocalServer
from clients.pb.medsettle.v1 import settlement_pb2
from clients.sdk import MedsettleClient
from server import demo_data
from server.store import ACC_FIELDS

__all__ = ["ACC_FIELDS"]

INST_A = "H44010100001"  # tertiary, 440100
INST_B = "H44010100002"  # secondary, 440100
INST_FAR = "H44030100001"  # tertiary, 440300 (cross-region for 440100 persons)
DAY = 20260615

# The amounts of a settlement (SetlInfo) that add up over settlements.
SETL_AMOUNTS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "cvlserv_pay",
    "hifob_pay",
    "hifmi_pay",
    "maf_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
)

PERSONS = {p.psn_no: p for p in demo_data.persons()}
RETIRED = demo_data.persons()[0]  # employee, retired, account 3650.00
EMPLOYEE = demo_data.persons()[1]  # employee in service
CIVIL = demo_data.persons()[2]  # civil servant
CHILD = demo_data.persons()[3]  # resident, minor
ASSISTED = demo_data.persons()[4]  # resident on medical assistance
SECOND_STAY = demo_data.persons()[5]  # employee with one admission already this year
FILED = demo_data.persons()[6]  # cross-region filed


def client(server: LocalServer, inst: str = INST_A, *, sign_in: bool = True) -> MedsettleClient:
    c = MedsettleClient(server.target, fixmedins_code=inst, opter="cashier01", retries=0)
    if sign_in:
        c.sign_in()
    return c


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


def snapshot(db: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order (for "nothing was written")."""
    conn = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
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
