"""The operator commands as an operator meets them, against real servers: `slip` and
`reconcile` reach a front-end (and a center) over mutual TLS with the SDK's connection
options and the operator's password from a file; their exit codes tell "not balanced" (1)
from "could not connect" (3) and "refused" (4); `keys init` makes a center's data key;
`operators` refuses a database that does not exist instead of making an empty one; every
expected failure is one line on stderr, never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer, free_port
from tests.harness import CASHIER, EMPLOYEE, INST_A, admit, client, total
from tests.pg import center_server
from tests.security.test_tls import files, pki, tls_flags

__all__ = ["pki"]  # the module-scoped certificates fixture of test_tls

ROOT = Path(__file__).resolve().parents[2]
OK, NOT_BALANCED, USAGE, UNREACHABLE, REFUSED = 0, 1, 2, 3, 4


def medsettle(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        input=stdin,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: exactly one line on stderr, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def mtls_front(pki: Path, tmp_path: Path) -> Iterator[LocalServer]:
    """A demo front-end that serves only callers with a certificate of the CA."""
    server = LocalServer(
        tmp_path / "front.db",
        extra=tls_flags(pki, INST_A),
        log=tmp_path / "front.log",
        credentials=files(pki, INST_A).channel_credentials(),
    ).start()
    try:
        yield server
    finally:
        server.stop()


def reach(server: LocalServer, pki: Path, stem: str | None, *more: str) -> list[str]:
    """The connection flags of an operator command: the target, the institution, mutual
    TLS with the certificate `stem` (None: plaintext), and the demo password from its
    file."""
    tls: tuple[str, ...] = ()
    if stem is not None:
        f = files(pki, stem)
        tls = ("--tls-ca", f.ca, "--tls-cert", f.cert, "--tls-key", f.key)
    return [
        *("--target", f"localhost:{server.port}", "--institution", INST_A, *tls),
        *("--password-file", str(demo_data.password_file(server.db))),
        *more,
    ]


@pytest.mark.pg
def test_reconcile_over_mutual_tls_and_its_exit_codes(
    mtls_front: LocalServer, pki: Path, pg_dsn: str, tmp_path: Path
) -> None:
    # The center's data key, made by `keys init` and given as data_key_file.
    key = tmp_path / "center.key"
    made = medsettle("keys", "init", "--out", str(key))
    assert made.returncode == OK, made.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    center = center_server(pg_dsn, tmp_path)
    center.env = {"MEDSETTLE_DATA_KEY_FILE": str(key)}
    center.extra += tls_flags(pki, "center-gz")
    center.credentials = files(pki, f"frontend-{INST_A}").channel_credentials()
    center.start()
    try:
        # A settlement the center never hears of (this front-end has no link to it).
        his = files(pki, INST_A).channel_credentials()
        c = client(mtls_front, opter=CASHIER, credentials=his)
        mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=5, seed=71, med_type=11)
        info = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
        c.close()
        # The front-end machine's certificate: the front-end serves it as its institution's,
        # and the center answers only front-end machines.
        finance = ("--opter", "finance01")
        with_center = (*finance, "--center", f"localhost:{center.port}")
        r = medsettle("reconcile", *reach(mtls_front, pki, f"frontend-{INST_A}", *with_center))
        assert r.returncode == NOT_BALANCED, r.stdout + r.stderr
        assert "NOT BALANCED" in r.stdout and info.setl_id in r.stdout
        day_before = ("--date", "20260101")
        r = medsettle(
            "reconcile", *reach(mtls_front, pki, f"frontend-{INST_A}", *with_center, *day_before)
        )
        assert r.returncode == OK, r.stdout + r.stderr
        assert "balanced: 0 settlements agree" in r.stdout
        # The HIS's own certificate prints the slip.
        r = medsettle("slip", *reach(mtls_front, pki, INST_A, "--opter", "cashier01", info.setl_id))
        assert r.returncode == OK, r.stderr
        assert info.setl_id in r.stdout
        # Could not connect: the center is not there, or the front-end is not.
        nowhere = f"localhost:{free_port()}"
        r = medsettle(
            "reconcile",
            *reach(mtls_front, pki, f"frontend-{INST_A}", *finance, "--center", nowhere),
        )
        assert r.returncode == UNREACHABLE and "UNAVAILABLE" in r.stderr, r.stderr
        args = reach(mtls_front, pki, f"frontend-{INST_A}", *finance)
        args[args.index("--target") + 1] = nowhere
        r = medsettle("reconcile", *args)
        assert r.returncode == UNREACHABLE and "UNAVAILABLE" in r.stderr, r.stderr
        # Without a certificate the mutual-TLS front-end does not even shake hands.
        r = medsettle("reconcile", *reach(mtls_front, pki, None, *finance))
        assert r.returncode == UNREACHABLE, r.stderr
        # Refused: the wrong password, or a cashier reconciling.
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password\n")
        args = reach(mtls_front, pki, INST_A, *finance)
        args[args.index("--password-file") + 1] = str(wrong)
        r = medsettle("reconcile", *args)
        assert r.returncode == REFUSED and "UNAUTHENTICATED" in r.stderr, r.stderr
        r = medsettle("reconcile", *reach(mtls_front, pki, INST_A, "--opter", "cashier01"))
        assert r.returncode == REFUSED and "PERMISSION_DENIED" in r.stderr, r.stderr
    finally:
        center.stop()


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    target = ("--target", f"127.0.0.1:{free_port()}", "--institution", INST_A)
    r = medsettle("slip", *target, "--opter", "x", "--password-file", str(tmp_path / "no"), "S1")
    assert r.returncode == USAGE and str(tmp_path / "no") in one_line(r)
    r = medsettle("reconcile", *target, "--opter", "x", "--tls-cert", "c.pem")
    assert r.returncode == USAGE and "--tls-cert, --tls-key" in one_line(r)
    r = medsettle("slip", *target, "--opter", "x", "--password-stdin", "S1", stdin="pw\n")
    assert r.returncode == UNREACHABLE and "UNAVAILABLE" in r.stderr


def test_keys_init_makes_a_data_key_and_never_replaces_one(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    r = medsettle("keys", "init", "--out", str(key))
    assert r.returncode == OK and str(key) in r.stdout
    made = key.read_text()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    r = medsettle("keys", "init", "--out", str(key))
    assert r.returncode == USAGE and "never replaced" in one_line(r)
    assert key.read_text() == made
    r = medsettle("keys", "init", "--out", str(tmp_path / "no" / "node.key"))
    assert r.returncode == USAGE and "no such directory" in one_line(r)


def test_operators_refuses_a_database_that_does_not_exist(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    who = ("--db", str(typo), "--institution", INST_A)
    r = medsettle("operators", "list", *who)
    assert r.returncode == USAGE and "no such database" in one_line(r)
    r = medsettle("operators", "put", *who, "--opter", "sec1", "--roles", "security")
    assert r.returncode == USAGE and "--create" in one_line(r)
    r = medsettle("operators", "put", *who, "--opter", "sec1", "--roles", "security", "--create")
    assert r.returncode == USAGE and "needs a password" in one_line(r)
    short = ("--password-stdin", "--create")
    r = medsettle(
        "operators", "put", *who, "--opter", "sec1", "--roles", "security", *short, stdin="x\n"
    )
    assert r.returncode == USAGE and "at least 8 characters" in one_line(r)
    assert not typo.exists() and list(tmp_path.iterdir()) == []  # nothing was made


def test_operators_put_resets_a_password_on_the_database(frontend: LocalServer) -> None:
    """Whoever runs the machine resets a forgotten password with the database itself; the
    operator signs in with the new one, and the old one no longer works."""
    new = frontend.db + ".new-password"
    Path(new).write_text("a-reset-password\n")
    who = ("--db", frontend.db, "--institution", INST_A, "--opter", "finance01")
    r = medsettle("operators", "put", *who, "--roles", "finance", "--password-file", new)
    assert r.returncode == OK, r.stderr
    assert f"{INST_A}\tfinance01\t" in r.stdout
    c = client(frontend, opter="finance01", sign_in=False, password="a-reset-password")
    assert list(c.sign_in().roles) == ["finance"]
    c.password = frontend.demo_password()
    with pytest.raises(Exception, match="operator or password wrong"):
        c.sign_in()
