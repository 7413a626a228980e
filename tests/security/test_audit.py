"""The audit trail on real servers: what leaves a record (settle, cancel, reads of personal
data, refusals, authentication and authorisation failures), written with the change it
records; `medsettle audit verify` passes an intact chain and names the first bad record of
a changed, removed or reordered one; retention prunes from the start and keeps the chain
verifiable; the center keeps one chain per institution."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from server.common import now_ms
from server.demo.localserver import LocalServer
from server.security import audit
from tests.harness import (
    CASHIER,
    EMPLOYEE,
    INST_A,
    RETIRED,
    SUPERVISOR,
    admit,
    client,
    total,
)
from tests.pg import center_server

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


def verify(db: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "audit", "verify", "--db", db, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def records(db: str) -> list[tuple[str, str, str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT opter, roles, rpc, objects, outcome FROM audit ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_what_leaves_a_record_and_verify(frontend: LocalServer, tmp_path: Path) -> None:
    c = client(frontend, opter=CASHIER)
    mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=5, seed=61, med_type=11)
    setl = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
    c.get_person("02", EMPLOYEE.psn_cert_no)
    with pytest.raises(MedsettleError):  # a cashier may not cancel
        c.cancel_settlement(setl.setl_id)
    boss = client(frontend, opter=SUPERVISOR)
    boss.cancel_settlement(setl.setl_id)
    with pytest.raises(MedsettleError):  # nobody of that name
        MedsettleClient(
            frontend.target, fixmedins_code=INST_A, opter="ghost", retries=0, password="x" * 8
        ).sign_in()
    other, _ = admit(c, RETIRED, n_lines=3, seed=62, med_type=11)
    with pytest.raises(MedsettleError):  # refused for what it says: recorded, nothing settled
        c.settle(other, RETIRED.psn_no, medfee_sumamt=1)

    rows = records(frontend.db)
    by_rpc = [(r[0], r[2].rsplit("/", 1)[1], r[4].split(":")[0]) for r in rows]
    assert ("cashier01", "SignIn", "OK") in by_rpc
    assert ("cashier01", "Settle", "OK") in by_rpc
    assert ("cashier01", "GetPerson", "OK") in by_rpc
    assert ("cashier01", "CancelSettlement", "PERMISSION_DENIED") in by_rpc
    assert ("super01", "CancelSettlement", "OK") in by_rpc
    assert ("ghost", "SignIn", "UNAUTHENTICATED") in by_rpc
    assert by_rpc[-1] == ("cashier01", "Settle", "INVALID_ARGUMENT")
    settle = next(r for r in rows if r[2].endswith("/Settle") and r[4] == "OK")
    assert settle[1] == "cashier"
    assert f"mdtrt_id={mdtrt_id}" in settle[3] and f"ref={setl.setl_id}" in settle[3]
    person = next(r for r in rows if r[2].endswith("/GetPerson"))
    assert EMPLOYEE.psn_cert_no not in person[3]  # the id number is masked in the trail
    # A retry of the settle with its msgid is a replay, recorded as one.
    assert all("sign_no" not in r[3] for r in rows)

    ok = verify(frontend.db)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(rows)} records intact" in ok.stdout
    head = ok.stdout.split("head seq ")[1].split()
    head_arg = f"{head[0]}:{head[2]}"

    def tampered(sql: str) -> subprocess.CompletedProcess[str]:
        copy = tmp_path / f"t{abs(hash(sql))}.db"
        src, conn = sqlite3.connect(frontend.db), sqlite3.connect(copy)
        src.backup(conn)  # the WAL's pages too
        src.close()
        shutil.copy(frontend.db + ".key", str(copy) + ".key")
        conn.executescript(sql)
        conn.close()
        return verify(str(copy), "--head", head_arg)

    changed = tampered("UPDATE audit SET opter = 'someone else' WHERE seq = 5")
    assert changed.returncode == 1
    assert "seq 5: hash does not match" in changed.stdout
    removed = tampered("DELETE FROM audit WHERE seq = 4")
    assert removed.returncode == 1 and "seq 5: expected seq 4" in removed.stdout
    swapped = tampered(
        "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;"
        " UPDATE audit SET seq = 3 WHERE seq = -1"
    )
    assert swapped.returncode == 1 and "seq 2: hash does not match" in swapped.stdout
    cut = tampered("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    assert cut.returncode == 1 and f"the head {head_arg}" in cut.stdout
    assert verify(frontend.db, "--head", head_arg).returncode == 0


def test_records_are_in_the_transaction_of_the_change(frontend: LocalServer) -> None:
    c = client(frontend)
    done = []
    for seed in range(3):
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=3, seed=70 + seed, med_type=11)
        done.append(c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo.setl_id)
    conn = sqlite3.connect(frontend.db)
    try:
        settled = {r[0] for r in conn.execute("SELECT setl_id FROM settlements")}
        audited = {
            o.split("ref=")[1]
            for (o,) in conn.execute(
                "SELECT objects FROM audit WHERE rpc LIKE '%/Settle' AND outcome = 'OK'"
            )
        }
    finally:
        conn.close()
    assert settled == audited and set(done) <= settled


def test_retention_prunes_from_the_start_and_keeps_an_anchor(tmp_path: Path) -> None:
    from server.frontend.store.sqlite import init_db

    db = str(tmp_path / "a.db")
    init_db(db)
    now = now_ms()
    day = audit.DAY_MS
    conn = sqlite3.connect(db, isolation_level=None)
    for i, age in enumerate([400, 300, 200, 10, 1]):
        rec = audit.Record(now - age * day, INST_A, "op", "cashier", "/x/Y", f"n={i}", "OK")
        audit.append(conn, KEY, rec)
    assert audit.prune(conn, KEY, now, 180) == 3
    assert [r[0] for r in conn.execute("SELECT seq FROM audit")] == [4, 5]
    assert audit.verify_sqlite(conn, KEY, now, 180).ok
    audit.append(conn, KEY, audit.Record(now, INST_A, "op", "", "/x/Z", "", "OK"))
    v = audit.verify_sqlite(conn, KEY, now, 180)
    assert v.ok and v.records == 3 and v.heads[""][0] == 6
    # An anchor moved by hand, or the first remaining record removed, shows.
    conn.execute("SAVEPOINT t")
    conn.execute("UPDATE audit_anchor SET pruned_before = ?", (now,))
    assert "not the audit key's" in audit.verify_sqlite(conn, KEY, now, 180).bad
    conn.execute("ROLLBACK TO t")
    conn.execute("DELETE FROM audit WHERE seq = 4")
    assert "seq 5: expected seq 4" in audit.verify_sqlite(conn, KEY, now, 180).bad
    conn.execute("ROLLBACK TO t")
    # With another key nothing verifies.
    assert "not the audit key's" in audit.verify_sqlite(conn, bytes(32), now, 180).bad
    conn.close()


@pytest.mark.pg
def test_center_keeps_a_chain_per_institution(pg_dsn: str, tmp_path: Path) -> None:
    center = center_server(pg_dsn, tmp_path).start()
    try:
        front = LocalServer(
            tmp_path / "front.db",
            extra=["--mode", "center", "--center-target", center.target],
            log=tmp_path / "front.log",
        ).start()
        try:
            c = client(front)
            mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=4, seed=81, med_type=11)
            setl = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
            client(front, opter=SUPERVISOR).cancel_settlement(setl.setl_id)
        finally:
            front.stop()
    finally:
        center.stop()
    key_file = str(center.center_key_file())
    ok = verify(pg_dsn, "--key-file", key_file)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"chain '{INST_A}' head seq 2" in ok.stdout
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT rpc, outcome, roles FROM audit ORDER BY seq").fetchall()
        assert rows == [
            ("/medsettle.v1.Center/SettleSummary", "OK", "center_service"),
            ("/medsettle.v1.Center/CancelSettlement", "OK", "center_service"),
        ]
        conn.execute("UPDATE audit SET objects = 'x' WHERE seq = 1")
    bad = verify(pg_dsn, "--key-file", key_file)
    assert bad.returncode == 1 and f"chain '{INST_A}' seq 1: hash does not match" in bad.stdout
