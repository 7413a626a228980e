"""SignIn proves who the operator is, on real servers: the password is checked against its
salted scrypt hash; wrong passwords are counted and lock the operator out; every refusal is
one answer (unknown operator or institution, disabled, locked, wrong password) and is
audited with what it really was; a refused sign-in issues nothing; a retry of a sign-in
needs the password again; no password is ever in the database file or the audit trail."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import catalog_pb2, settlement_pb2
from server.demo.localserver import LocalServer
from server.errors import ResourceExhausted
from server.frontend.services.signin import REFUSED
from server.security import passwords
from tests.harness import (
    CASHIER,
    INST_A,
    PASSWORD,
    SECURITY,
    audit_rows,
    client,
    register,
    snapshot,
)
from tests.security.test_pii import raw_bytes

MAX_FAILURES = 3


@pytest.fixture
def front(tmp_path: Path) -> Iterator[LocalServer]:
    """A demo front-end that locks an operator out after three wrong passwords in a row,
    for a minute (longer than any test waits: a lock lifts by a new password here)."""
    server = LocalServer(
        tmp_path / "front.db",
        env={
            "MEDSETTLE_SIGNIN_MAX_FAILURES": str(MAX_FAILURES),
            "MEDSETTLE_SIGNIN_LOCKOUT_S": "60",
        },
        log=tmp_path / "front.log",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def attempt(server: LocalServer, opter: str, password: str, inst: str = INST_A) -> Any:
    """A sign-in's outcome: the SignInResponse, or (code, message, violations)."""
    c = MedsettleClient(
        server.target, fixmedins_code=inst, opter=opter, retries=0, password=password
    )
    with c:
        try:
            return c.sign_in()
        except MedsettleError as err:
            return (err.code, err.message, err.violations)


def standing(db: str, opter: str) -> tuple[int, int]:
    """An operator's failure count and lock-out (unix ms, 0 = none)."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT failures, locked_until FROM operators WHERE fixmedins_code = ? AND opter = ?",
            (INST_A, opter),
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def sign_ins(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM signins").fetchone()[0])
    finally:
        conn.close()


ONE_ANSWER: tuple[grpc.StatusCode, str, list[tuple[str, str]]] = (
    grpc.StatusCode.UNAUTHENTICATED,
    REFUSED,
    [],
)


def test_the_password_proves_the_operator(front: LocalServer) -> None:
    good = front.demo_password()
    issued = sign_ins(front.db)
    for first, second in (("", "x"), (good + "x", good.upper())):
        assert attempt(front, CASHIER, first) == ONE_ANSWER
        assert standing(front.db, CASHIER) == (1, 0)  # counted: its own write survives
        assert attempt(front, CASHIER, second) == ONE_ANSWER
        assert standing(front.db, CASHIER) == (2, 0)
        assert attempt(front, CASHIER, good).roles == ["cashier"]  # a right one clears it
        assert standing(front.db, CASHIER) == (0, 0)
    assert sign_ins(front.db) == issued + 2  # the refused sign-ins issued nothing


def test_one_answer_for_every_refusal_and_each_audited(front: LocalServer) -> None:
    good = front.demo_password()
    register(front, INST_A, "gone01", "cashier")
    sec = client(front, opter=SECURITY)
    sec.put_operators([catalog_pb2.Operator(opter="gone01", roles=["cashier"], disabled=True)])
    before = len(audit_rows(front.db))
    issued = sign_ins(front.db)
    answers = {
        "unknown operator": attempt(front, "nobody01", good),
        "unknown institution": attempt(front, CASHIER, good, inst="H99999999999"),
        "disabled": attempt(front, "gone01", PASSWORD),
        "wrong password": attempt(front, "admin01", "wrong-password"),
        "empty password": attempt(front, "admin01", ""),
    }
    for _ in range(MAX_FAILURES - 2):  # the third wrong one in a row locks admin01 out
        attempt(front, "admin01", "wrong-password")
    answers["locked out, right password"] = attempt(front, "admin01", good)
    assert answers == dict.fromkeys(answers, ONE_ANSWER), answers
    assert sign_ins(front.db) == issued
    trail = [r for r in audit_rows(front.db)[before:] if r[2].endswith("/SignIn")]
    outcomes = [(r[1], r[3]) for r in trail]
    refused = f"UNAUTHENTICATED: {REFUSED}"
    assert outcomes == [
        ("nobody01", f"{refused} (unknown operator)"),
        (CASHIER, f"{refused} (unknown operator)"),  # at an institution that does not exist
        ("gone01", f"{refused} (disabled)"),
        ("admin01", f"{refused} (wrong password (1 in a row))"),
        ("admin01", f"{refused} (wrong password (2 in a row))"),
        ("admin01", f"{refused} (wrong password (3 in a row): locked for 60 s)"),
        ("admin01", f"{refused} (locked out)"),
    ]


def test_every_refusal_costs_one_write(front: LocalServer) -> None:
    """A wrong password writes the operator's count; a refusal of an operator who is not
    there writes a bounded refusal count instead, so both cost one commit and the answer's
    time does not tell the two apart."""

    def refusals() -> int:
        conn = sqlite3.connect(front.db)
        try:
            return int(
                conn.execute("SELECT COALESCE(SUM(n), 0) FROM signin_refusals").fetchone()[0]
            )
        finally:
            conn.close()

    assert attempt(front, "nobody01", "whatever-password") == ONE_ANSWER
    assert refusals() == 1
    assert attempt(front, CASHIER, "wrong-password") == ONE_ANSWER
    assert (refusals(), standing(front.db, CASHIER)) == (1, (1, 0))
    for i in range(3):
        attempt(front, f"nobody{i:03d}", "x")
    conn = sqlite3.connect(front.db)
    try:  # bounded whatever names are tried: a row per bucket, 256 buckets
        buckets = [b for (b,) in conn.execute("SELECT bucket FROM signin_refusals")]
    finally:
        conn.close()
    assert refusals() == 4 and all(0 <= b < 256 for b in buckets)


def test_lock_out_holds_until_a_new_password(front: LocalServer) -> None:
    for _ in range(MAX_FAILURES):
        assert attempt(front, CASHIER, "wrong-password") == ONE_ANSWER
    failures, locked_until = standing(front.db, CASHIER)
    assert failures == 0 and locked_until > 0
    assert attempt(front, CASHIER, front.demo_password()) == ONE_ANSWER  # locked: refused
    assert standing(front.db, CASHIER) == (0, locked_until)  # and not counted again
    # The security officer sets a new password: the lock lifts.
    sec = client(front, opter=SECURITY)
    sec.put_operators(
        [catalog_pb2.Operator(opter=CASHIER, roles=["cashier"], password="a-new-password")]
    )
    assert standing(front.db, CASHIER) == (0, 0)
    assert attempt(front, CASHIER, front.demo_password()) == ONE_ANSWER  # the old one is gone
    assert attempt(front, CASHIER, "a-new-password").roles == ["cashier"]


def test_a_lock_out_ends_by_itself(tmp_path: Path) -> None:
    server = LocalServer(
        tmp_path / "short.db",
        env={"MEDSETTLE_SIGNIN_MAX_FAILURES": "1", "MEDSETTLE_SIGNIN_LOCKOUT_S": "1"},
        log=tmp_path / "short.log",
    ).start()
    try:
        assert attempt(server, CASHIER, "wrong-password") == ONE_ANSWER
        assert attempt(server, CASHIER, server.demo_password()) == ONE_ANSWER
        locked_until = standing(server.db, CASHIER)[1]
        threading.Event().wait(1.2)  # past signin_lockout_s
        assert standing(server.db, CASHIER)[1] == locked_until
        assert attempt(server, CASHIER, server.demo_password()).roles == ["cashier"]
    finally:
        server.stop()


def test_a_retry_of_a_sign_in_needs_the_password_again(front: LocalServer) -> None:
    c = client(front, opter=CASHIER, sign_in=False)
    req = settlement_pb2.SignInRequest(header=c.header("RETRY-SIGN-IN"), password=c.password)
    first = c.settlement.SignIn(req, timeout=5)
    after = snapshot(front.db)
    assert c.settlement.SignIn(req, timeout=5) == first  # the same answer, nothing new
    assert snapshot(front.db) == after
    for wrong in ("", "wrong-password"):  # the msgid alone gets nobody the sign_no
        stolen = settlement_pb2.SignInRequest(header=c.header("RETRY-SIGN-IN"), password=wrong)
        with pytest.raises(grpc.RpcError) as err:
            c.settlement.SignIn(stolen, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == REFUSED


def test_put_operators_sets_passwords_and_a_change_ends_sign_ins(front: LocalServer) -> None:
    sec = client(front, opter=SECURITY)
    for op, field, reason in (
        (catalog_pb2.Operator(opter="new01", roles=["cashier"]), "password", "a new operator"),
        (
            catalog_pb2.Operator(opter="new01", roles=["cashier"], password="short"),
            "password",
            "at least 8 characters",
        ),
    ):
        before = snapshot(front.db)
        with pytest.raises(MedsettleError) as err:
            sec.put_operators([op])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [(f, r[: len(reason)]) for f, r in err.value.violations] == [
            (f"operators[0].{field}", reason)
        ]
        assert snapshot(front.db) == before
    register(front, INST_A, "new01", "cashier", password="first-password")
    c = client(front, opter="new01", password="first-password")
    register(front, INST_A, "new01", "cashier", password="second-password")
    with pytest.raises(MedsettleError) as err:  # the sign-in made with the old one ended
        c.get_settlement("S-none")
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert attempt(front, "new01", "first-password") == ONE_ANSWER
    assert attempt(front, "new01", "second-password").roles == ["cashier"]
    # Roles changed without a password keep the one it has.
    register(front, INST_A, "new01", "finance", password="")
    assert attempt(front, "new01", "second-password").roles == ["finance"]


def test_no_password_in_the_database_or_the_trail(front: LocalServer) -> None:
    tried = ["wrong-password-1", "another-wrong-one"]
    for pw in tried:
        attempt(front, CASHIER, pw)
    register(front, INST_A, "new01", "cashier", password="the-new-operators-password")
    attempt(front, "new01", "the-new-operators-password")
    c = client(front)  # the test operator, registered with its password, signed in
    c.sign_out()
    data = raw_bytes(front.db)
    for pw in (front.demo_password(), PASSWORD, "the-new-operators-password", *tried):
        assert pw.encode() not in data, pw
    conn = sqlite3.connect(front.db)
    try:
        stored = [r[0] for r in conn.execute("SELECT password FROM operators")]
        trail = [" ".join(map(str, r)) for r in conn.execute("SELECT * FROM audit")]
    finally:
        conn.close()
    assert stored and all(s.startswith("scrypt$14$8$1$") for s in stored)
    assert len(set(stored)) > 2  # salted: the demo operators share one, the others differ
    for pw in (front.demo_password(), *tried):
        assert not any(pw in line for line in trail)


def test_equal_work_for_an_unknown_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown operator's password is put through the KDF like a known one's, with the
    same cost (what an answer's time could otherwise tell)."""
    calls: list[tuple[int, int, int]] = []
    real = hashlib.scrypt

    def counted(password: bytes, **kw: Any) -> bytes:
        calls.append((kw["n"], kw["r"], kw["p"]))
        return real(password, **kw)

    stored = passwords.make("right-password")
    monkeypatch.setattr(hashlib, "scrypt", counted)
    assert passwords.check(stored, "right-password")
    assert not passwords.check(stored, "wrong-password")
    assert not passwords.check(None, "right-password")  # unknown operator
    assert not passwords.check("", "right-password")  # no password set
    assert not passwords.check(stored, "")
    assert calls == [(2**14, 8, 1)] * 5


def test_the_kdf_queue_is_bounded() -> None:
    """Sign-ins beyond what may wait for the KDF are RESOURCE_EXHAUSTED, not a queue an
    anonymous caller could grow without end."""
    kdf = passwords.Kdf(threads=1, queue=2)
    gate = threading.Event()

    async def main() -> list[BaseException | bool]:
        waiting = [asyncio.ensure_future(kdf.run(gate.wait)) for _ in range(2)]
        await asyncio.sleep(0)
        outcomes: list[BaseException | bool] = []
        try:
            await kdf.check(None, "x")
        except ResourceExhausted as exc:
            outcomes.append(exc)
        gate.set()
        outcomes += await asyncio.gather(*waiting)
        outcomes.append(await kdf.check(None, "x"))  # room again
        return outcomes

    got = asyncio.run(main())
    assert isinstance(got[0], ResourceExhausted) and got[1:] == [True, True, False]
