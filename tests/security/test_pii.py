"""Personal identifiers at rest: sealed in the persons table (AES-256-GCM, or SM4-GCM by
setting), found by keyed hash, never in the database file in clear; a database of the
layout before is sealed by its migration; a sealed value moved to another person or field
does not open. The diagnoses of each visit are sealed the same way, bound to the visit, and
still decide what the engine covers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from medsettle.v1 import settlement_pb2
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from server.frontend.store import migrations
from server.persons import PERSON_COLUMNS
from server.security.datakeys import DataKeys
from server.security.pii import AES_256_GCM, SM4_GCM, PiiError, Vault
from tests.harness import DAY, EMPLOYEE, INST_A, admit, client, total

KEYS = DataKeys.derive(bytes(range(32)))


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_sealed_values_open_only_where_they_belong(cipher: str) -> None:
    v = Vault(KEYS, cipher)
    sealed = v.seal("psn_name", "P1", "张建国")
    assert sealed[0] == (AES_256_GCM if cipher == "aes-256-gcm" else SM4_GCM)
    assert "张建国".encode() not in sealed
    assert v.open("psn_name", "P1", sealed) == "张建国"
    assert v.seal("psn_name", "P1", "张建国") != sealed  # a fresh nonce each time
    # Either cipher opens what the other sealed (a deployment may switch).
    other = Vault(KEYS, "sm4-gcm" if cipher == "aes-256-gcm" else "aes-256-gcm")
    assert other.open("psn_name", "P1", sealed) == "张建国"
    for field, owner, blob in (
        ("psn_name", "P2", sealed),  # onto another person
        ("psn_cert_no", "P1", sealed),  # into another field
        ("psn_name", "P1", sealed[:-1] + bytes([sealed[-1] ^ 1])),  # damaged
    ):
        with pytest.raises(PiiError):
            v.open(field, owner, blob)
    with pytest.raises(PiiError):
        Vault(DataKeys.derive(bytes(32)), cipher).open("psn_name", "P1", sealed)
    # The lookup hash is keyed: equal values meet, another key gives another hash.
    assert v.index("psn_cert_no", "440106") == v.index("psn_cert_no", "440106")
    assert v.index("psn_cert_no", "440106") != Vault(DataKeys.derive(bytes(32))).index(
        "psn_cert_no", "440106"
    )
    assert v.index("card_no", "") is None


def raw_bytes(db: str) -> bytes:
    out = Path(db).read_bytes()
    wal = Path(db + "-wal")
    return out + (wal.read_bytes() if wal.exists() else b"")


def test_no_identifier_in_clear_in_the_database_file(frontend: LocalServer) -> None:
    c = client(frontend)
    # A settlement and its cancel: the stored records and answers name the person.
    mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=5, seed=51, med_type=11)
    info = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
    assert info.psn_name == EMPLOYEE.psn_name
    assert c.get_settlement(info.setl_id).setlinfo.psn_name == EMPLOYEE.psn_name
    c.cancel_settlement(info.setl_id)
    # Found by each kind of certificate, through the keyed hashes.
    for kind, value in (
        ("02", EMPLOYEE.psn_cert_no),
        ("03", EMPLOYEE.card_no),
        ("01", EMPLOYEE.voucher),
    ):
        assert c.get_person(kind, value).psn_no == EMPLOYEE.psn_no
    data = raw_bytes(frontend.db)
    for p in demo_data.persons():
        for value in (p.psn_cert_no, p.card_no, p.voucher):
            if value:
                assert value.encode() not in data, value
    conn = sqlite3.connect(frontend.db)
    try:
        names = conn.execute("SELECT psn_no, psn_name FROM persons").fetchall()
    finally:
        conn.close()
    by_no = {p.psn_no: p.psn_name for p in demo_data.persons()}
    assert names and all(isinstance(n, bytes) and n[0] == AES_256_GCM for _, n in names)
    assert all(by_no[no].encode() not in n for no, n in names)
    assert EMPLOYEE.psn_name.encode() not in data


def test_sm4_gcm_by_setting(tmp_path: Path) -> None:
    server = LocalServer(
        tmp_path / "sm4.db", env={"MEDSETTLE_PII_CIPHER": "sm4-gcm"}, log=tmp_path / "s.log"
    ).start()
    try:
        c = client(server)
        assert c.get_person("02", EMPLOYEE.psn_cert_no).psn_name == EMPLOYEE.psn_name
    finally:
        server.stop()
    conn = sqlite3.connect(tmp_path / "sm4.db")
    try:
        kinds = {r[0][0] for r in conn.execute("SELECT psn_cert_no FROM persons")}
    finally:
        conn.close()
    assert kinds == {SM4_GCM}


def test_the_migration_seals_a_database_of_the_layout_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    full = list(migrations.MIGRATIONS)
    before = [m for m in full if m[0] < 5]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    assert migrations.migrate(conn) == 4
    p = EMPLOYEE
    row = {c: getattr(p, c, 0) for c in PERSON_COLUMNS}
    row.update(cvlserv_flag=0, maf_flag=0, retired=0, balc=100, opening_balc=100)
    conn.execute(
        f"INSERT INTO persons ({', '.join(PERSON_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(PERSON_COLUMNS))})",
        [row[c] for c in PERSON_COLUMNS],
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", full)
    with pytest.raises(RuntimeError, match="needs the data key"):
        migrations.migrate(conn)  # rolled back: the clear rows stay as they were
    assert conn.execute("SELECT psn_name FROM persons").fetchone()[0] == p.psn_name
    assert migrations.migrate(conn, KEYS) == max(v for v, _, _ in full)
    got = conn.execute("SELECT psn_no, psn_name, cert_idx FROM persons").fetchone()
    vault = Vault(KEYS)
    assert vault.open("psn_name", p.psn_no, got[1]) == p.psn_name
    assert got[2] == vault.index("psn_cert_no", p.psn_cert_no)
    conn.close()
    assert p.psn_cert_no.encode() not in raw_bytes(str(db))


# Diagnoses no catalog restriction spells out (the catalog holds prefixes such as "I10"),
# so their bytes in the file could only be the visits'.
MATCHING = "I10.9X7"  # within a restricted item's "I10"
OTHER = "Z99.8Y2"


def test_diagnoses_sealed_and_still_deciding(frontend: LocalServer) -> None:
    items = {it.med_list_codg: it for it in demo_data.catalog_items()}
    restricted = next(
        h
        for h in demo_data.his_items(INST_A)
        if h.mapped_to
        and "I10" in items[h.mapped_to].diagnoses.split(",")
        and not items[h.mapped_to].inpatient_only
    )
    c = client(frontend)
    results = {}
    for n, diagnosis in enumerate((MATCHING, OTHER)):
        v = c.register(
            EMPLOYEE.psn_no,
            insutype=EMPLOYEE.insutype,
            med_type=11,
            begndate=DAY,
            ipt_otp_no=f"DX{n}",
            dise_codg=[diagnosis],
        )
        ln = settlement_pb2.FeeLine(
            feedetl_sn="000001",
            medins_list_codg=restricted.code,
            cnt=10_000,
            pric=restricted.price,
            det_item_fee_sumamt=restricted.price,
        )
        results[diagnosis] = c.upload_fees(v.mdtrt_id, [ln]).results[0]
    # The opened diagnoses reached the engine: the matching one is covered, the other not.
    assert results[MATCHING].inscp_scp_amt > 0
    assert results[OTHER].inscp_scp_amt == 0 and results[OTHER].flags != results[MATCHING].flags
    data = raw_bytes(frontend.db)
    for diagnosis in (MATCHING, OTHER):
        assert diagnosis.encode() not in data
    conn = sqlite3.connect(frontend.db)
    try:
        stored = [r[0] for r in conn.execute("SELECT dise_codg FROM visits")]
    finally:
        conn.close()
    assert stored and all(isinstance(d, bytes) and d[0] == AES_256_GCM for d in stored)


def test_a_sealed_diagnosis_opens_only_for_its_visit() -> None:
    v = Vault(KEYS)
    sealed = v.seal_diagnoses("M1", [MATCHING, OTHER])
    assert v.open_diagnoses("M1", sealed) == [MATCHING, OTHER]
    assert v.open_diagnoses("M1", v.seal_diagnoses("M1", [])) == []
    with pytest.raises(PiiError):
        v.open_diagnoses("M2", sealed)  # copied onto another visit
    with pytest.raises(PiiError):
        v.open("psn_name", "M1", sealed)  # read as another field


def test_the_migration_seals_the_diagnoses_of_a_database_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    full = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", [m for m in full if m[0] < 8])
    assert migrations.migrate(conn) == 7
    conn.execute(
        "INSERT INTO visits VALUES (1, 'M1', ?, 'P1', 310, 21, 2, ?, 'ZY1', ?, '', '',"
        " 'registered', 'MSG1', 0)",
        (INST_A, DAY, f"{MATCHING},{OTHER}"),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", full)
    with pytest.raises(RuntimeError, match="needs the data key"):
        migrations.migrate(conn)  # rolled back: the clear row stays as it was
    assert conn.execute("SELECT dise_codg FROM visits").fetchone()[0] == f"{MATCHING},{OTHER}"
    assert migrations.migrate(conn, KEYS) == max(v for v, _, _ in full)
    sealed = conn.execute("SELECT dise_codg FROM visits").fetchone()[0]
    assert Vault(KEYS).open_diagnoses("M1", sealed) == [MATCHING, OTHER]
    conn.close()
    assert MATCHING.encode() not in raw_bytes(str(db))
