"""`make demo`: a front-end on a fresh SQLite file with the demo data set, and a scripted
HIS visit over gRPC: sign in, identify the person, admit, stream 500 fee lines, pre-settle,
settle, query, cancel, settle again (same result), reconcile the day; then the slip, and the
server is stopped."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from clients.sdk import MedsettleClient
from clients.slip import render, yuan
from medsettle.v1 import settlement_pb2
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer

INSTITUTION = "H44010100001"
LINES = 500


def fee_lines(
    fixmedins_code: str,
    n: int,
    seed: int,
    begndate: int,
    items: tuple[demo_data.HisItem, ...] | None = None,
) -> list[settlement_pb2.FeeLine]:
    """n fee lines a HIS would send for a stay, from the hospital's own item master (its
    demo one unless `items` is given)."""
    items = items or demo_data.his_items(fixmedins_code)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        it = items[int(rng.integers(len(items)))]
        units = int(rng.choice([1, 1, 1, 2, 3, 5]))
        cnt = units * 10_000
        out.append(
            settlement_pb2.FeeLine(
                feedetl_sn=f"{i + 1:06d}",
                medins_list_codg=it.code,
                cnt=cnt,
                pric=it.price,
                det_item_fee_sumamt=it.price * units,
                fee_ocur_date=begndate,
                bilg_dr_codg="D0012",
            )
        )
    return out


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


def run_visit(target: str, password: str) -> int:
    """The scripted visit, as the demo operators (who share the demo database's generated
    `password`, server/demo/dataset.py)."""
    c = MedsettleClient(
        target,
        fixmedins_code=INSTITUTION,
        opter="cashier01",
        opter_name="收费员甲",
        password=password,
    )
    # The duties are separated: the supervisor cancels, the finance clerk reconciles.
    boss = MedsettleClient(target, fixmedins_code=INSTITUTION, opter="super01", password=password)
    fin = MedsettleClient(target, fixmedins_code=INSTITUTION, opter="finance01", password=password)
    with c, boss, fin:
        step(f"sign in (9001) as {INSTITUTION}: cashier, supervisor, finance clerk")
        me = c.sign_in()
        print(f"   sign_no {me.sign_no} ({', '.join(me.roles)})")
        boss.sign_in()
        fin.sign_in()
        person_rec = demo_data.persons()[0]
        step(f"person (1101) by ID card {person_rec.psn_cert_no[:6]}...")
        person = c.get_person("02", person_rec.psn_cert_no)
        print(
            f"   {person.psn_no} {person.psn_name} insutype {person.insutype} psn_type"
            f" {person.psn_type} retired {person.retired} account {yuan(person.balc)}"
        )
        begndate = (
            int(time.strftime("%Y%m%d")) if time.strftime("%Y") == str(demo_data.YEAR) else 20260615
        )
        step("inpatient admission (2401)")
        visit = c.register(
            person.psn_no,
            insutype=person.insutype,
            med_type=21,
            begndate=begndate,
            ipt_otp_no="ZY2026000123",
            dise_codg=["I21.9"],
            dept_codg="0301",
            atddr_no="D0012",
        )
        print(f"   mdtrt_id {visit.mdtrt_id}")
        lines = fee_lines(INSTITUTION, LINES, seed=5, begndate=begndate)
        total = sum(ln.det_item_fee_sumamt for ln in lines)
        step(f"stream {len(lines)} fee lines (2301)")
        up = c.stream_fees(visit.mdtrt_id, lines, chunk=100)
        unmapped = sum(1 for r in up.results if r.chrgitm_lv == 0)
        print(f"   {up.line_count} lines, {yuan(up.det_item_fee_sumamt)} yuan, {unmapped} unmapped")
        step("pre-settlement (2303)")
        pre = c.pre_settle(
            visit.mdtrt_id, person.psn_no, medfee_sumamt=total, acct_used=True
        ).setlinfo
        print(
            f"   fund {yuan(pre.fund_pay_sumamt)}  account {yuan(pre.acct_pay)}"
            f"  cash {yuan(pre.psn_cash_pay)}"
        )
        step("settlement (2304)")
        first = c.settle(
            visit.mdtrt_id, person.psn_no, medfee_sumamt=total, acct_used=True, invono="FP0000001"
        ).setlinfo
        print(f"   setl_id {first.setl_id}")
        step("query by visit (supervisor)")
        found = boss.query_settlements(mdtrt_id=visit.mdtrt_id).settlements
        print(
            f"   {len(found)} settlement(s): "
            + ", ".join(f"{s.setl_id} state {s.state}" for s in found)
        )
        step("cancel the settlement (2305, supervisor)")
        cancelled = boss.cancel_settlement(first.setl_id, mdtrt_id=visit.mdtrt_id).setlinfo
        restored = c.get_person("02", person_rec.psn_cert_no)
        print(f"   {cancelled.cancel_id}; account back to {yuan(restored.balc)}")
        step("settle again")
        again = c.settle(
            visit.mdtrt_id, person.psn_no, medfee_sumamt=total, acct_used=True, invono="FP0000002"
        ).setlinfo
        same = all(
            getattr(again, k) == getattr(first, k)
            for k in (
                "medfee_sumamt",
                "act_pay_dedc",
                "hifp_pay",
                "fund_pay_sumamt",
                "acct_pay",
                "psn_cash_pay",
            )
        )
        print(f"   setl_id {again.setl_id}; same amounts as the first: {same}")
        step("reconcile the day (3201, finance clerk)")
        day = int(time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600)))
        tot = fin.totals(day, day)
        for r in tot.rows:
            print(
                f"   {r.setl_date} insutype {r.insutype} clr_type {r.clr_type}:"
                f" {r.setl_count} settled,"
                f" {r.cancel_count} cancelled, net medfee {yuan(r.medfee_sumamt)},"
                f" fund {yuan(r.fund_pay_sumamt)}"
            )
        print()
        print(render(again))
        if not same:
            print("demo: the second settlement differs from the first", flush=True)
            return 1
    return 0


def main(keep_db: str | None = None, port: int = 0) -> int:
    with tempfile.TemporaryDirectory(prefix="medsettle-demo-") as tmp:
        db = Path(keep_db) if keep_db else Path(tmp) / "frontend.db"
        server = LocalServer(db, port=port, log=Path(tmp) / "server.log")
        step(f"start a front-end (local mode, SQLite {db})")
        server.start()
        try:
            code = run_visit(server.target, server.demo_password())
        finally:
            stopped = server.stop()
            step(f"server stopped (exit {stopped})")
        return code if stopped == 0 else 1
