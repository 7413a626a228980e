"""Mutated and random protobuf messages to every RPC of a running front-end and of a running
center: never a crash, never INTERNAL or UNKNOWN, and a refused call writes nothing (but its
audit record).

Each method gets a template request that gets far into its handler (a signed-in header, a
fresh msgid, the ids of a real visit and settlement), then mutations of its bytes: bit
flips, truncations, insertions, appended fields of random numbers and wire types, and plain
random bytes. The count per method is bounded here (`FUZZ_PER_METHOD`, default 12); a longer
run by hand: `FUZZ_PER_METHOD=2000 .venv/bin/pytest tests/frontend/test_fuzz.py`."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import message_factory

from medsettle.v1 import common_pb2, settlement_pb2, settlement_pb2_grpc
from server.center.assembly import SERVICES as CENTER_SERVICES
from server.demo.localserver import LocalServer
from server.frontend.assembly import SERVICES
from tests.harness import AUDIT_TABLES, CASHIER, EMPLOYEE, INST_A, admit, client, total
from tests.pg import center_server

PER_METHOD = int(os.environ.get("FUZZ_PER_METHOD", "12"))
REFUSED_OK = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Plausible values for the scalar fields the templates fill by name.
VALUES: dict[str, Any] = {
    "begin_date": 20260615,
    "end_date": 20260615,
    "begndate": 20260615,
    "insutype": 310,
    "med_type": 11,
    "ipt_otp_no": "FZ1",
    "mdtrt_cert_type": "02",
}


def counts(db: str) -> dict[str, int]:
    """Rows per table, but the audit trail's (a refusal's record is the one row it adds)."""
    conn = sqlite3.connect(db)
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if r[0] not in AUDIT_TABLES
        ]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in names}
    finally:
        conn.close()


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 1 and b:  # truncate
        del b[rng.randrange(len(b)) :]
    elif how == 2:  # insert random bytes
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 8))
    elif how == 3:  # append a field of a random number and wire type
        field, wire = rng.randint(1, 40), rng.choice([0, 1, 2, 5])
        tag = (field << 3) | wire
        b += bytes([tag & 0x7F | 0x80, tag >> 7]) if tag > 127 else bytes([tag])
        if wire == 0:
            b += bytes([rng.randrange(128)])
        elif wire == 1:
            b += rng.randbytes(8)
        elif wire == 2:
            n = rng.randint(0, 20)
            b += bytes([n]) + rng.randbytes(n)
        else:
            b += rng.randbytes(4)
    elif how == 4:  # random bytes
        b = bytearray(rng.randbytes(rng.randint(0, 64)))
    else:  # a varint field set to a huge value
        b += b"\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    return bytes(b)


def template(method: Any, ids: dict[str, str], c: Any, n: int) -> bytes:
    msg: Any = message_factory.GetMessageClass(method.input_type)()
    fields = msg.DESCRIPTOR.fields_by_name
    if "header" in fields:
        h = msg.header
        for k, v in c.header(f"FZ{method.name}{n}").ListFields():
            setattr(h, k.name, v)
    for name, value in ids.items():
        if name in fields and fields[name].type == fields[name].TYPE_STRING:
            setattr(msg, name, value)
    for name, value in VALUES.items():
        if name in fields and not fields[name].is_repeated:
            setattr(msg, name, value)
    if "password" in fields:  # SignIn: the operator's credentials
        msg.password = getattr(c, "password", "")
    return bytes(msg.SerializeToString())


def call(ch: grpc.Channel, method: Any, service: str, data: bytes) -> grpc.StatusCode:
    path = f"/{service}/{method.name}"
    raw: Any = ch  # bytes in, bytes out: no serializers
    try:
        if method.client_streaming:
            raw.stream_unary(path)(iter([data]), timeout=10)
        elif method.server_streaming:
            for _ in raw.unary_stream(path)(data, timeout=10):
                pass
        else:
            raw.unary_unary(path)(data, timeout=10)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        return code
    return grpc.StatusCode.OK


def real_ids(c: Any, seed: int) -> dict[str, str]:
    """Ids the templates fill in: a settled visit's settlement, another visit still open,
    the person and their ID number (so a template gets past the lookups)."""
    mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=5, seed=seed, med_type=11)
    setl = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
    other, _ = admit(c, EMPLOYEE, n_lines=3, seed=seed + 1, med_type=11)
    return {
        "mdtrt_id": other,
        "psn_no": EMPLOYEE.psn_no,
        "setl_id": setl.setl_id,
        "mdtrt_cert_no": EMPLOYEE.psn_cert_no,
    }


def test_mutated_messages_to_every_rpc(frontend: LocalServer) -> None:
    c = client(frontend)
    # SignIn is sent as the cashier: mutated passwords may lock its operator out, and the
    # session the other calls use must survive that.
    signing_in = client(frontend, opter=CASHIER, sign_in=False)
    ids = real_ids(c, 77)
    rng = random.Random(20261201)
    seen: dict[str, set[str]] = {}
    bad: list[str] = []
    with grpc.insecure_channel(frontend.target) as ch:
        for service, desc in SERVICES.items():
            for method in desc.methods:
                for n in range(PER_METHOD):
                    who = signing_in if method.name == "SignIn" else c
                    data = template(method, ids, who, n)
                    if n:  # the first is the template itself
                        data = mutate(data, rng)
                    before = counts(frontend.db)
                    code = call(ch, method, service, data)
                    seen.setdefault(method.name, set()).add(code.name)
                    if code in REFUSED_OK:
                        bad.append(f"{method.name} {code.name} for {data.hex()}")
                    elif code != grpc.StatusCode.OK and counts(frontend.db) != before:
                        bad.append(f"{method.name} {code.name} wrote rows for {data.hex()}")
                    if method.name == "SignOut":  # it may have ended the session: a new one
                        c.sign_in()
        pong = settlement_pb2_grpc.SettlementStub(ch).Ping(settlement_pb2.PingRequest(), timeout=5)
        assert pong is not None  # still serving
    assert not bad, bad[:10]
    # The templates got past authentication into every handler's own checks.
    deep = {m for m, codes in seen.items() if codes - {"UNAUTHENTICATED", "INVALID_ARGUMENT"}}
    assert {"Register", "UploadFees", "Settle", "GetSettlement", "Totals"} <= deep, seen
    assert len(seen) == sum(len(d.methods) for d in SERVICES.values())
    log = frontend.log_path.read_text() if frontend.log_path else ""
    assert "unexpected error" not in log


def pg_counts(dsn: str) -> dict[str, int]:
    """Rows per table of the center, but the audit trail's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            if r[0] not in AUDIT_TABLES
        ]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in names}  # type: ignore[index]


class _FrontEnd:
    """The header a front-end puts on its calls to the center."""

    def header(self, msgid: str) -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(msgid=msgid, fixmedins_code=INST_A, opter="front-end")


@pytest.mark.pg
def test_mutated_messages_to_every_center_rpc(pg_dsn: str, tmp_path: Path) -> None:
    center = center_server(pg_dsn, tmp_path).start()
    ids = {"psn_no": EMPLOYEE.psn_no, "mdtrt_id": "M01000000000001", "setl_id": "S01X"}
    rng = random.Random(20261202)
    bad: list[str] = []
    seen: dict[str, set[str]] = {}
    try:
        with grpc.insecure_channel(center.target) as ch:
            for service, desc in CENTER_SERVICES.items():
                for method in desc.methods:
                    for n in range(PER_METHOD):
                        data = template(method, ids, _FrontEnd(), n)
                        if n:
                            data = mutate(data, rng)
                        before = pg_counts(pg_dsn)
                        code = call(ch, method, service, data)
                        seen.setdefault(method.name, set()).add(code.name)
                        if code in REFUSED_OK:
                            bad.append(f"{method.name} {code.name} for {data.hex()}")
                        elif code != grpc.StatusCode.OK and pg_counts(pg_dsn) != before:
                            bad.append(f"{method.name} {code.name} wrote rows for {data.hex()}")
    finally:
        center.stop()
    assert not bad, bad[:10]
    assert len(seen) == sum(len(d.methods) for d in CENTER_SERVICES.values())
    log = center.log_path.read_text() if center.log_path else ""
    assert "unexpected error" not in log
