"""Least privilege on real servers: every RPC of a front-end against every operator role,
and every RPC of a center against every kind of certificate. A refused call is
PERMISSION_DENIED and writes nothing; an allowed one gets past the role check (the minimal
requests may still be refused for what they say). Plus the registry: unregistered and
disabled operators, a role change ending the sign-in, the last security officer."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import catalog_pb2
from server.center.assembly import SERVICES as CENTER_SERVICES
from server.demo.localserver import LocalServer
from server.frontend.assembly import SERVICES
from server.frontend.services.signin import REFUSED
from server.security import certs, roles
from tests.frontend.test_fuzz import _FrontEnd, call, counts, real_ids, template
from tests.harness import (
    CASHIER,
    INST_A,
    INST_B,
    OPERATOR_OF,
    PASSWORD,
    audit_rows,
    client,
    register,
)
from tests.pg import center_server
from tests.security.test_tls import files, tls_flags

ROOT = Path(__file__).resolve().parents[2]
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def last_audit(db: str) -> tuple[str, str, str]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT opter, rpc, outcome FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (str(row[0]), str(row[1]), str(row[2]))
    finally:
        conn.close()


def test_every_rpc_has_a_rule() -> None:
    served = {f"/{s}/{m.name}" for s, d in SERVICES.items() for m in d.methods}
    assert served == set(roles.FRONTEND_RULES)
    center = {f"/{s}/{m.name}" for s, d in CENTER_SERVICES.items() for m in d.methods}
    assert center - roles.FRONTEND_ONLY == set(roles.CENTER_RULES)
    for rule in roles.CENTER_RULES.values():
        assert rule == {roles.CENTER_SERVICE}


@pytest.fixture
def every_refusal_recorded(tmp_path: Path) -> Iterator[LocalServer]:
    """A demo front-end that records every refusal one by one (the matrix below sends more
    than the default budget of refusal records a second, which would be summarised)."""
    env = {"MEDSETTLE_MAX_REFUSAL_AUDITS_PER_S": "1000000"}
    with LocalServer(tmp_path / "roles.db", env=env, log=tmp_path / "roles.log") as server:
        yield server


def test_every_front_end_rpc_against_every_role(every_refusal_recorded: LocalServer) -> None:
    frontend = every_refusal_recorded
    ids = real_ids(client(frontend), 91)
    matrix: dict[tuple[str, str], str] = {}
    wrong: list[str] = []
    with grpc.insecure_channel(frontend.target) as ch:
        for role in roles.OPERATOR_ROLES:
            who = client(frontend, opter=OPERATOR_OF[role])
            for service, desc in SERVICES.items():
                for n, method in enumerate(desc.methods):
                    path = f"/{service}/{method.name}"
                    need = roles.FRONTEND_RULES[path]
                    before = counts(frontend.db)
                    trail = len(audit_rows(frontend.db))
                    code = call(ch, method, service, template(method, ids, who, n))
                    matrix[(role, method.name)] = code.name
                    if need and role not in need:
                        after = counts(frontend.db)
                        added = audit_rows(frontend.db)[trail:]
                        if code != DENIED:
                            wrong.append(f"{role} {method.name}: {code.name}, not denied")
                        elif after != before:
                            wrong.append(f"{role} {method.name}: denied but wrote rows")
                        elif [r[1:3] for r in added] != [(OPERATOR_OF[role], path)]:
                            wrong.append(f"{role} {method.name}: audit records {added}")
                    elif code == DENIED:
                        wrong.append(f"{role} {method.name}: denied, though allowed")
                    if method.name == "SignOut" and code == grpc.StatusCode.OK:
                        who.sign_in()
    assert not wrong, wrong
    # The separation of duties the rules are for, seen in the answers.
    assert matrix[("cashier", "Settle")] != "PERMISSION_DENIED"
    assert matrix[("cashier", "CancelSettlement")] == "PERMISSION_DENIED"
    assert matrix[("supervisor", "CancelSettlement")] != "PERMISSION_DENIED"
    assert matrix[("finance", "Totals")] == "OK"
    assert matrix[("admin", "PutOperators")] == "PERMISSION_DENIED"
    assert matrix[("security", "Settle")] == "PERMISSION_DENIED"
    assert last_audit(frontend.db)[2].startswith("PERMISSION_DENIED: ")


def test_the_registry_gives_and_takes_rights(frontend: LocalServer) -> None:
    # Nobody outside the registry signs in; a header naming another operator than the
    # sign_no's is refused.
    stranger = MedsettleClient(
        frontend.target, fixmedins_code=INST_A, opter="nobody", retries=0, password=PASSWORD
    )
    with pytest.raises(MedsettleError) as err:
        stranger.sign_in()
    assert err.value.code == UNAUTHENTICATED and err.value.message == REFUSED
    c = client(frontend, opter=CASHIER)
    c.opter = "super01"
    with pytest.raises(MedsettleError) as err:
        c.query_settlements(mdtrt_id="M-none")
    assert err.value.code == DENIED and "not the operator this sign_no" in str(err.value)

    # A new operator, then a change of role: the open sign-in ends at once.
    register(frontend, INST_A, "night01", roles.CASHIER)
    night = client(frontend, opter="night01")
    assert list(night.sign_in().roles) == ["cashier"]
    register(frontend, INST_A, "night01", roles.SUPERVISOR, password="")  # roles only
    with pytest.raises(MedsettleError) as err:
        night.get_settlement("S-none")
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert list(night.sign_in().roles) == ["supervisor"]

    # Registered at A only: the same operator id at B is a stranger.
    with pytest.raises(MedsettleError) as err:
        client(frontend, INST_B, opter="night01")
    assert err.value.code == UNAUTHENTICATED and err.value.message == REFUSED

    sec = client(frontend, opter="security01")
    sec.put_operators([catalog_pb2.Operator(opter="night01", disabled=True)])
    with pytest.raises(MedsettleError) as err:
        night.sign_in()
    assert err.value.code == UNAUTHENTICATED and err.value.message == REFUSED

    # The last security officer cannot take away the institution's own administration.
    bad = catalog_pb2.Operator(opter="security01", opter_name="x", roles=["cashier"])
    with pytest.raises(MedsettleError) as err:
        sec.put_operators([bad])
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(MedsettleError) as err:
        sec.put_operators([catalog_pb2.Operator(opter="x1", roles=["root"], password=PASSWORD)])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.violations == [
        (
            "operators[0].roles",
            "unknown role root (roles: cashier, supervisor, finance, admin, security)",
        )
    ]


def test_operators_command_bootstraps_a_front_end(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    cmd = [sys.executable, "-m", "server.cli", "operators"]
    args = ["--db", str(db), "--institution", INST_A]
    new_db = ("--create", "--password-stdin")  # a new front-end's database, its officer's password
    put = subprocess.run(
        [*cmd, "put", *args, "--opter", "sec1", "--name", "信息科", "--roles", "security", *new_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        input=PASSWORD + "\n",
    )
    assert put.stdout.split("\n")[0] == f"{INST_A}\tsec1\t信息科\tsecurity"
    bad = subprocess.run(
        [*cmd, "put", *args, "--opter", "x", "--roles", "root"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown role root" in bad.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT opter, roles FROM operators").fetchall() == [("sec1", "security")]


@pytest.mark.pg
def test_every_center_rpc_against_every_certificate(
    pg_dsn: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pki = tmp_path_factory.mktemp("pki-roles")
    certs.init(pki, [INST_A], ["gz"])
    center = center_server(pg_dsn, tmp_path)
    center.extra += tls_flags(pki, "center-gz")
    center.credentials = files(pki, f"frontend-{INST_A}").channel_credentials()
    center.start()
    callers = {
        "front-end": files(pki, f"frontend-{INST_A}").channel_credentials(),
        "HIS": files(pki, INST_A).channel_credentials(),
        "center": files(pki, "center-gz").channel_credentials(),
        "none": grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes()),
    }
    wrong: list[str] = []
    try:
        me = _FrontEnd()
        for who, creds in callers.items():
            with grpc.secure_channel(f"localhost:{center.port}", creds) as ch:
                for service, desc in CENTER_SERVICES.items():
                    for n, method in enumerate(desc.methods):
                        if f"/{service}/{method.name}" in roles.FRONTEND_ONLY:
                            continue
                        code = call(ch, method, service, template(method, {}, me, n))
                        if who == "none":  # mutual TLS: not even a connection
                            if code != grpc.StatusCode.UNAVAILABLE:
                                wrong.append(f"{who} {method.name}: {code.name}")
                        elif (who == "front-end") == (code == DENIED):
                            wrong.append(f"{who} {method.name}: {code.name}")
    finally:
        center.stop()
    assert not wrong, wrong
