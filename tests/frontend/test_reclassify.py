"""A cashier cannot re-classify items, on a real front-end: the institution's mapping (its
admin's) decides what an item is. A fee line whose HIS-supplied `med_list_codg` disagrees
with the mapping of its `medins_list_codg` (a self-paid class C item sent with a class A
code), or names a code for an item the institution has not mapped, is INVALID_ARGUMENT on
`lines[i].med_list_codg` and writes nothing; a line whose code agrees is accepted and
classified by the mapping. Fee lines stored before with a HIS code lose it on upgrade."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import settlement_pb2
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from server.frontend.store import migrations
from tests.harness import DAY, EMPLOYEE, INST_A, client, snapshot

CATALOG = {it.med_list_codg: it for it in demo_data.catalog_items()}
HIS = demo_data.his_items(INST_A)
# A hospital item its institution maps to a class C (self-paid) insurance item ...
CLASS_C = next(h for h in HIS if h.mapped_to and CATALOG[h.mapped_to].chrgitm_lv == 3)
# ... a class A item without restrictions, the code a cashier would rather it had ...
CLASS_A = next(
    it
    for it in CATALOG.values()
    if it.chrgitm_lv == 1 and not (it.inpatient_only or it.diagnoses or it.sex or it.age_min)
)
# ... and an item the institution has not mapped.
UNMAPPED = next(h for h in HIS if not h.mapped_to)


def line(item: demo_data.HisItem, sn: str, med_list_codg: str = "") -> settlement_pb2.FeeLine:
    return settlement_pb2.FeeLine(
        feedetl_sn=sn,
        medins_list_codg=item.code,
        med_list_codg=med_list_codg,
        cnt=10_000,
        pric=item.price,
        det_item_fee_sumamt=item.price,
        fee_ocur_date=DAY,
    )


def outpatient(c: MedsettleClient) -> str:
    v = c.register(
        EMPLOYEE.psn_no, insutype=EMPLOYEE.insutype, med_type=11, begndate=DAY, ipt_otp_no="RC1"
    )
    return v.mdtrt_id


def refused(frontend: LocalServer, send: Callable[[], object], field: str) -> str:
    """The reason of the one violation of a refused upload; nothing was written."""
    before = snapshot(frontend.db)
    with pytest.raises(MedsettleError) as err:
        send()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.value.violations] == [field]
    assert snapshot(frontend.db) == before
    return err.value.violations[0][1]


def test_a_class_c_item_sent_as_class_a_is_refused(frontend: LocalServer) -> None:
    c = client(frontend)
    mdtrt_id = outpatient(c)
    ok = line(CLASS_C, "000001")
    forged = line(CLASS_C, "000002", CLASS_A.med_list_codg)
    why = refused(frontend, lambda: c.upload_fees(mdtrt_id, [ok, forged]), "lines[1].med_list_codg")
    assert CLASS_C.mapped_to in why and CLASS_A.med_list_codg in why
    # Streamed the same: the second message's line is the stream's line 1.
    refused(
        frontend, lambda: c.stream_fees(mdtrt_id, [ok, forged], chunk=1), "lines[1].med_list_codg"
    )


def test_a_code_for_an_unmapped_item_is_refused(frontend: LocalServer) -> None:
    c = client(frontend)
    mdtrt_id = outpatient(c)
    forged = line(UNMAPPED, "000001", CLASS_A.med_list_codg)
    why = refused(frontend, lambda: c.upload_fees(mdtrt_id, [forged]), "lines[0].med_list_codg")
    assert "not mapped" in why
    # Sent without a code, the unmapped item is accepted, and paid by the patient.
    up = c.upload_fees(mdtrt_id, [line(UNMAPPED, "000001")])
    assert (up.results[0].chrgitm_lv, up.results[0].med_list_codg) == (0, "")


def test_a_code_that_agrees_is_accepted_and_the_mapping_classifies(
    frontend: LocalServer,
) -> None:
    c = client(frontend)
    mdtrt_id = outpatient(c)
    agreed = line(CLASS_C, "000001", CLASS_C.mapped_to)
    up = c.upload_fees(mdtrt_id, [agreed])
    r = up.results[0]
    assert (r.med_list_codg, r.chrgitm_lv) == (CLASS_C.mapped_to, 3)
    info = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=CLASS_C.price).setlinfo
    assert info.fulamt_ownpay_amt == CLASS_C.price  # class C: the patient pays it all
    assert info.fund_pay_sumamt == 0


def test_the_upgrade_drops_codes_stored_with_fee_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    full = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", [m for m in full if m[0] < 9])
    assert migrations.migrate(conn) == 8
    conn.execute(
        "INSERT INTO fee_lines VALUES (1, '000001', 1, ?, ?, 10000, 100, 100, 0, '', 0, 'M1')",
        (CLASS_C.code, CLASS_A.med_list_codg),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", full)
    migrations.migrate(conn)
    assert conn.execute("SELECT medins_list_codg, med_list_codg FROM fee_lines").fetchall() == [
        (CLASS_C.code, "")
    ]
    conn.close()
