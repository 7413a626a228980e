"""Bad requests against a real front-end: a table of refused calls across the Settlement,
Catalog and Reconciliation services (missing header fields, unknown or expired sign_no,
another institution's ids, bad fee lines, wrong totals, wrong states, reused msgids, bad
reference data, malformed protobuf bytes).

Each case first builds the valid state it needs through the SDK, then takes a row snapshot
of the database, sends the one bad request and checks three things: the precise gRPC status
(never INTERNAL or UNKNOWN), for INVALID_ARGUMENT the field the violation names, and that
every row of every table is as it was before the call.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import (
    catalog_pb2,
    common_pb2,
    settlement_pb2,
)
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from tests.harness import (
    CHILD,
    DAY,
    EMPLOYEE,
    INST_A,
    INST_B,
    RETIRED,
    audit_rows,
    client,
    lines,
    snapshot,
    total,
)

Code = grpc.StatusCode
Send = Callable[[], object]

MALFORMED = b"\xff\xff\xff"  # a field tag whose varint never ends


@dataclass
class World:
    """One server with a signed-in client per institution, and a counter for unique ids."""

    server: LocalServer
    a: MedsettleClient
    b: MedsettleClient
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    extra: list[MedsettleClient] = field(default_factory=list)

    def client(self, inst: str = INST_A, *, sign_in: bool = True) -> MedsettleClient:
        """Another client of the same server (the SDK keeps msgids of two clients apart)."""
        c = client(self.server, inst, sign_in=False)
        if sign_in:
            c.sign_in()
        self.extra.append(c)
        return c

    def close(self) -> None:
        for c in (self.a, self.b, *self.extra):
            c.close()


def _world(tmp: Path, env: dict[str, str] | None = None) -> Iterator[World]:
    server = LocalServer(tmp / "frontend.db", log=tmp / "server.log", env=env)
    server.start()
    w = World(server, client(server, INST_A), client(server, INST_B))
    try:
        yield w
    finally:
        w.close()
        server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def short_ttl_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server whose sign_no lasts one second."""
    yield from _world(tmp_path_factory.mktemp("ttl"), {"MEDSETTLE_SIGN_TTL_S": "1"})


# ---------------------------------------------------------------------------- helpers
def raw(fn: Callable[..., object], request: object) -> Send:
    """Send `request` through a raw stub method; a refusal becomes a MedsettleError."""

    def send() -> object:
        try:
            return fn(request, timeout=5)
        except grpc.RpcError as err:
            raise MedsettleError.from_rpc(err) from None

    return send


def header(c: MedsettleClient, msgid: str = "", **changes: str) -> common_pb2.RequestHeader:
    h = c.header(msgid)
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def register_request(
    w: World, c: MedsettleClient, msgid: str, **header_changes: str
) -> settlement_pb2.RegisterRequest:
    return settlement_pb2.RegisterRequest(
        header=header(c, msgid, **header_changes),
        psn_no=EMPLOYEE.psn_no,
        insutype=EMPLOYEE.insutype,
        med_type=11,
        begndate=DAY,
        ipt_otp_no=f"MZ{next(w.seq):06d}",
    )


def register(w: World, c: MedsettleClient | None = None) -> str:
    """An outpatient visit of EMPLOYEE (outpatient visits of one person may overlap)."""
    c = c or w.a
    return c.register(
        EMPLOYEE.psn_no,
        insutype=EMPLOYEE.insutype,
        med_type=11,
        begndate=DAY,
        ipt_otp_no=f"MZ{next(w.seq):06d}",
    ).mdtrt_id


def visit(
    w: World, c: MedsettleClient | None = None, n: int = 5
) -> tuple[str, list[settlement_pb2.FeeLine]]:
    """A registered outpatient visit of EMPLOYEE with n uploaded lines."""
    c = c or w.a
    mdtrt_id = register(w, c)
    ls = lines(n, seed=next(w.seq), inst=c.fixmedins_code)
    c.upload_fees(mdtrt_id, ls)
    return mdtrt_id, ls


def settled(w: World, c: MedsettleClient | None = None) -> tuple[str, str]:
    """A settled visit: (mdtrt_id, setl_id)."""
    c = c or w.a
    mdtrt_id, ls = visit(w, c)
    setl = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
    return mdtrt_id, setl.setl_id


def one_line(w: World, **changes: object) -> settlement_pb2.FeeLine:
    ln = lines(1, seed=next(w.seq))[0]
    for k, v in changes.items():
        setattr(ln, k, v)
    return ln


def upload_one(w: World, **changes: object) -> Send:
    mdtrt_id = register(w)
    ln = one_line(w, **changes)
    return lambda: w.a.upload_fees(mdtrt_id, [ln])


# ---------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    prepare: Callable[[World], Send]
    code: grpc.StatusCode
    field: str | None = None  # the violation's field, for INVALID_ARGUMENT
    # the violation's field only has to contain `field` (a policy document's errors name the
    # field inside the document, e.g. `text:rules[0].basic.bands[0].ratio_bp`)
    within: bool = False
    server: str = "world"


CASES: list[Case] = []


def case(
    id: str,
    code: grpc.StatusCode,
    field: str | None = None,
    *,
    within: bool = False,
    server: str = "world",
) -> Callable[[Callable[[World], Send]], Callable[[World], Send]]:
    """Add the decorated preparation to the table."""

    def add(prepare: Callable[[World], Send]) -> Callable[[World], Send]:
        CASES.append(Case(id, prepare, code, field, within, server))
        return prepare

    return add


# -- header and identity
@case("register-missing-msgid", Code.INVALID_ARGUMENT, "header.msgid")
def _(w: World) -> Send:
    return raw(w.a.settlement.Register, register_request(w, w.a, ""))


@case("register-msgid-too-long", Code.INVALID_ARGUMENT, "header.msgid")
def _(w: World) -> Send:
    return raw(w.a.settlement.Register, register_request(w, w.a, "M" * 65))


@case("register-missing-fixmedins-code", Code.INVALID_ARGUMENT, "header.fixmedins_code")
def _(w: World) -> Send:
    req = register_request(w, w.a, w.a.new_msgid(), fixmedins_code="")
    return raw(w.a.settlement.Register, req)


@case("register-missing-opter", Code.INVALID_ARGUMENT, "header.opter")
def _(w: World) -> Send:
    return raw(w.a.settlement.Register, register_request(w, w.a, w.a.new_msgid(), opter=""))


@case("register-missing-sign-no", Code.INVALID_ARGUMENT, "header.sign_no")
def _(w: World) -> Send:
    return raw(w.a.settlement.Register, register_request(w, w.a, w.a.new_msgid(), sign_no=""))


@case("register-unknown-sign-no", Code.UNAUTHENTICATED)
def _(w: World) -> Send:
    req = register_request(w, w.a, w.a.new_msgid(), sign_no="0" * 32)
    return raw(w.a.settlement.Register, req)


@case("register-sign-no-of-another-institution", Code.UNAUTHENTICATED)
def _(w: World) -> Send:
    req = register_request(w, w.a, w.a.new_msgid(), sign_no=w.b.sign_no)
    return raw(w.a.settlement.Register, req)


@case("register-signed-out-sign-no", Code.UNAUTHENTICATED)
def _(w: World) -> Send:
    c = w.client()
    c.sign_out()
    return lambda: register(w, c)


@case("register-expired-sign-no", Code.UNAUTHENTICATED, server="short_ttl_world")
def _(w: World) -> Send:
    c = w.client()
    expires = c.sign_in().expires_at.ToMilliseconds() / 1000
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    return lambda: register(w, c)


@case("read-expired-sign-no", Code.UNAUTHENTICATED, server="short_ttl_world")
def _(w: World) -> Send:
    c = w.client()
    expires = c.sign_in().expires_at.ToMilliseconds() / 1000
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    return lambda: c.get_person("02", EMPLOYEE.psn_cert_no)


@case("register-foreign-mdtrtarea-admvs", Code.INVALID_ARGUMENT, "header.mdtrtarea_admvs")
def _(w: World) -> Send:
    req = register_request(w, w.a, w.a.new_msgid(), mdtrtarea_admvs="440300")
    return raw(w.a.settlement.Register, req)


@case("sign-in-unknown-institution", Code.UNAUTHENTICATED)
def _(w: World) -> Send:
    c = w.client("H99999999999", sign_in=False)
    return lambda: c.sign_in()


# -- persons and registration
@case("get-person-bad-cert-type", Code.INVALID_ARGUMENT, "mdtrt_cert_type")
def _(w: World) -> Send:
    return lambda: w.a.get_person("09", EMPLOYEE.psn_cert_no)


@case("get-person-unknown-cert", Code.NOT_FOUND)
def _(w: World) -> Send:
    return lambda: w.a.get_person("02", "440106000000000000")


@case("register-unknown-psn-no", Code.NOT_FOUND)
def _(w: World) -> Send:
    return lambda: w.a.register(
        "99999999999999", insutype=310, med_type=11, begndate=DAY, ipt_otp_no="MZ-X"
    )


@case("register-wrong-insutype", Code.INVALID_ARGUMENT, "insutype")
def _(w: World) -> Send:
    return lambda: w.a.register(
        EMPLOYEE.psn_no, insutype=390, med_type=11, begndate=DAY, ipt_otp_no="MZ-X"
    )


@case("register-unknown-med-type", Code.INVALID_ARGUMENT, "med_type")
def _(w: World) -> Send:
    return lambda: w.a.register(
        EMPLOYEE.psn_no, insutype=310, med_type=99, begndate=DAY, ipt_otp_no="MZ-X"
    )


@case("register-bad-begndate", Code.INVALID_ARGUMENT, "begndate")
def _(w: World) -> Send:
    return lambda: w.a.register(
        EMPLOYEE.psn_no, insutype=310, med_type=11, begndate=20260231, ipt_otp_no="MZ-X"
    )


@case("admission-without-diagnosis", Code.INVALID_ARGUMENT, "dise_codg")
def _(w: World) -> Send:
    return lambda: w.a.register(
        CHILD.psn_no, insutype=CHILD.insutype, med_type=21, begndate=DAY, ipt_otp_no="ZY-X"
    )


@case("register-same-msgid-other-payload", Code.ALREADY_EXISTS)
def _(w: World) -> Send:
    msgid = w.a.new_msgid()
    w.a.register(
        EMPLOYEE.psn_no, insutype=310, med_type=11, begndate=DAY, ipt_otp_no="MZ-2", msgid=msgid
    )
    return lambda: w.a.register(
        EMPLOYEE.psn_no, insutype=310, med_type=11, begndate=DAY, ipt_otp_no="MZ-3", msgid=msgid
    )


@case("cancel-registration-of-settled-visit", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id, _ = settled(w)
    return lambda: w.a.cancel_registration(mdtrt_id)


# -- fee lines
@case("upload-unknown-mdtrt-id", Code.NOT_FOUND)
def _(w: World) -> Send:
    return lambda: w.a.upload_fees("M01999999999999", [one_line(w)])


@case("upload-to-another-institutions-visit", Code.NOT_FOUND)
def _(w: World) -> Send:
    mdtrt_id = register(w, w.b)
    return lambda: w.a.upload_fees(mdtrt_id, [one_line(w)])


@case("upload-negative-cnt", Code.INVALID_ARGUMENT, "lines[0].cnt")
def _(w: World) -> Send:
    return upload_one(w, cnt=-10_000)


@case("upload-negative-pric", Code.INVALID_ARGUMENT, "lines[0].pric")
def _(w: World) -> Send:
    return upload_one(w, pric=-100)


@case("upload-negative-amount", Code.INVALID_ARGUMENT, "lines[0].det_item_fee_sumamt")
def _(w: World) -> Send:
    return upload_one(w, det_item_fee_sumamt=-1)


@case("upload-amount-beyond-tolerance", Code.INVALID_ARGUMENT, "lines[2].det_item_fee_sumamt")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    ls = lines(3, seed=next(w.seq))
    ls[2].det_item_fee_sumamt += 2  # the demo policy tolerates 1 fen
    return lambda: w.a.upload_fees(mdtrt_id, ls)


@case("upload-empty-feedetl-sn", Code.INVALID_ARGUMENT, "lines[0].feedetl_sn")
def _(w: World) -> Send:
    return upload_one(w, feedetl_sn="")


@case("upload-missing-medins-list-codg", Code.INVALID_ARGUMENT, "lines[0].medins_list_codg")
def _(w: World) -> Send:
    return upload_one(w, medins_list_codg="")


@case("upload-bad-fee-ocur-date", Code.INVALID_ARGUMENT, "lines[0].fee_ocur_date")
def _(w: World) -> Send:
    return upload_one(w, fee_ocur_date=20261345)


@case("upload-bad-hosp-appr-flag", Code.INVALID_ARGUMENT, "lines[0].hosp_appr_flag")
def _(w: World) -> Send:
    return upload_one(w, hosp_appr_flag=3)


@case("upload-duplicate-feedetl-sn", Code.INVALID_ARGUMENT, "lines[1].feedetl_sn")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    ls = lines(2, seed=next(w.seq))
    ls[1].feedetl_sn = ls[0].feedetl_sn
    return lambda: w.a.upload_fees(mdtrt_id, ls)


@case("upload-feedetl-sn-already-uploaded", Code.ALREADY_EXISTS)
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w, n=3)
    again = lines(1, seed=next(w.seq))
    again[0].feedetl_sn = ls[1].feedetl_sn
    return lambda: w.a.upload_fees(mdtrt_id, again)


@case("upload-unknown-med-list-codg", Code.INVALID_ARGUMENT, "lines[0].med_list_codg")
def _(w: World) -> Send:
    return upload_one(w, med_list_codg="XNOSUCHCODE000000001")


@case("upload-oversize-batch", Code.INVALID_ARGUMENT, "lines")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    ls = lines(10_001, seed=next(w.seq))
    return lambda: w.a.upload_fees(mdtrt_id, ls)


@case("upload-no-lines", Code.INVALID_ARGUMENT, "lines")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    return lambda: w.a.upload_fees(mdtrt_id, [])


@case("upload-to-settled-visit", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id, _ = settled(w)
    return lambda: w.a.upload_fees(mdtrt_id, [one_line(w, feedetl_sn="NEW001")])


@case("stream-fees-second-message-other-visit", Code.INVALID_ARGUMENT, "messages[1].mdtrt_id")
def _(w: World) -> Send:
    first, other = register(w), register(w)
    ls = lines(2, seed=next(w.seq))
    msgs = [
        settlement_pb2.UploadFeesRequest(
            header=w.a.header(w.a.new_msgid()), mdtrt_id=first, lines=ls[:1]
        ),
        settlement_pb2.UploadFeesRequest(mdtrt_id=other, lines=ls[1:]),
    ]
    return raw(lambda it, timeout: w.a.settlement.StreamFees(iter(it), timeout=timeout), msgs)


@case("delete-fees-unknown-feedetl-sn", Code.NOT_FOUND)
def _(w: World) -> Send:
    mdtrt_id, _ = visit(w)
    return lambda: w.a.delete_fees(mdtrt_id, ["NOSUCHSN"])


@case("upload-feedetl-sn-too-long", Code.INVALID_ARGUMENT, "lines[0].feedetl_sn")
def _(w: World) -> Send:
    return upload_one(w, feedetl_sn="S" * 65)


@case("upload-visit-total-overflows", Code.INVALID_ARGUMENT, "lines[0].det_item_fee_sumamt")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    big = 5 * 10**18  # each line fits an int64 (their sum does not), none the per-line bound
    ls = [
        one_line(w, feedetl_sn=f"B{i}", cnt=10_000, pric=big, det_item_fee_sumamt=big)
        for i in (1, 2)
    ]
    return lambda: w.a.upload_fees(mdtrt_id, ls)


@case("stream-fees-no-message", Code.INVALID_ARGUMENT, "messages")
def _(w: World) -> Send:
    msgs: list[settlement_pb2.UploadFeesRequest] = []
    return raw(lambda it, timeout: w.a.settlement.StreamFees(iter(it), timeout=timeout), msgs)


@case("stream-fees-oversize-message", Code.INVALID_ARGUMENT, "messages[0].lines")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    ls = lines(10_001, seed=next(w.seq))
    return lambda: w.a.stream_fees(mdtrt_id, ls, chunk=10_001)


@case("stream-fees-missing-msgid", Code.INVALID_ARGUMENT, "header.msgid")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    msg = settlement_pb2.UploadFeesRequest(
        header=w.a.header(""), mdtrt_id=mdtrt_id, lines=lines(2, seed=next(w.seq))
    )
    return raw(lambda it, timeout: w.a.settlement.StreamFees(iter(it), timeout=timeout), [msg])


@case("delete-fees-another-institutions-visit", Code.NOT_FOUND)
def _(w: World) -> Send:
    mdtrt_id, _ = visit(w, w.b)
    return lambda: w.a.delete_fees(mdtrt_id)


@case("cancel-registration-twice", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id = register(w)
    w.a.cancel_registration(mdtrt_id)
    return lambda: w.a.cancel_registration(mdtrt_id)


@case("cancel-registration-psn-no-mismatch", Code.INVALID_ARGUMENT, "psn_no")
def _(w: World) -> Send:
    mdtrt_id = register(w)
    return lambda: w.a.cancel_registration(mdtrt_id, RETIRED.psn_no)


@case("second-open-admission", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    def admit(no: str) -> object:
        return w.b.register(
            CHILD.psn_no,
            insutype=390,
            med_type=21,
            begndate=DAY,
            ipt_otp_no=no,
            dise_codg=["J18.9"],
        )

    admit("ZY-1")
    return lambda: admit("ZY-2")


@case("register-diagnosis-with-comma", Code.INVALID_ARGUMENT, "dise_codg[0]")
def _(w: World) -> Send:
    return lambda: w.a.register(
        EMPLOYEE.psn_no,
        insutype=310,
        med_type=11,
        begndate=DAY,
        ipt_otp_no="MZ-X",
        dise_codg=["I21.9,J18.9"],
    )


@case("get-person-missing-cert-no", Code.INVALID_ARGUMENT, "mdtrt_cert_no")
def _(w: World) -> Send:
    return lambda: w.a.get_person("02", "")


@case("sign-in-foreign-mdtrtarea-admvs", Code.INVALID_ARGUMENT, "header.mdtrtarea_admvs")
def _(w: World) -> Send:
    req = settlement_pb2.SignInRequest(
        header=header(w.a, w.a.new_msgid(), sign_no="", mdtrtarea_admvs="440300"),
        password=w.a.password,
    )
    return raw(w.a.settlement.SignIn, req)


# -- settlement
@case("settle-total-mismatch", Code.INVALID_ARGUMENT, "medfee_sumamt")
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w)
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls) + 1)


@case("pre-settle-total-mismatch", Code.INVALID_ARGUMENT, "medfee_sumamt")
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w)
    return lambda: w.a.pre_settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls) - 1)


@case("settle-negative-medfee-sumamt", Code.INVALID_ARGUMENT, "medfee_sumamt")
def _(w: World) -> Send:
    mdtrt_id, _ = visit(w)
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=-1)


@case("settle-psn-no-not-the-visits", Code.INVALID_ARGUMENT, "psn_no")
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w)
    return lambda: w.a.settle(mdtrt_id, RETIRED.psn_no, medfee_sumamt=total(ls))


@case("settle-missing-psn-no", Code.INVALID_ARGUMENT, "psn_no")
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w)
    return lambda: w.a.settle(mdtrt_id, "", medfee_sumamt=total(ls))


@case("settle-another-institutions-visit", Code.NOT_FOUND)
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w, w.b)
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))


@case("settle-visit-without-lines", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id = register(w)
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=0)


@case("settle-already-settled", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w)
    w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))


@case("settle-cancelled-registration", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w)
    w.a.cancel_registration(mdtrt_id)
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))


@case("settle-same-msgid-other-payload", Code.ALREADY_EXISTS)
def _(w: World) -> Send:
    msgid = w.a.new_msgid()
    first, ls1 = visit(w)
    w.a.settle(first, EMPLOYEE.psn_no, medfee_sumamt=total(ls1), msgid=msgid)
    second, ls2 = visit(w)
    return lambda: w.a.settle(second, EMPLOYEE.psn_no, medfee_sumamt=total(ls2), msgid=msgid)


@case("settle-with-reversed-msgid", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    msgid = w.a.new_msgid()
    w.a.reverse(msgid)  # it "never arrived": the msgid is burnt
    mdtrt_id, ls = visit(w)
    return lambda: w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls), msgid=msgid)


@case("cancel-already-cancelled", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    _, setl_id = settled(w)
    w.a.cancel_settlement(setl_id)
    return lambda: w.a.cancel_settlement(setl_id)


@case("cancel-with-other-visits-mdtrt-id", Code.INVALID_ARGUMENT, "mdtrt_id")
def _(w: World) -> Send:
    _, setl_id = settled(w)
    other = register(w)
    return lambda: w.a.cancel_settlement(setl_id, mdtrt_id=other)


@case("cancel-another-institutions-setl-id", Code.NOT_FOUND)
def _(w: World) -> Send:
    _, setl_id = settled(w, w.b)
    return lambda: w.a.cancel_settlement(setl_id)


@case("get-another-institutions-setl-id", Code.NOT_FOUND)
def _(w: World) -> Send:
    _, setl_id = settled(w, w.b)
    return lambda: w.a.get_settlement(setl_id)


@case("get-unknown-setl-id", Code.NOT_FOUND)
def _(w: World) -> Send:
    return lambda: w.a.get_settlement("S01999999999999")


@case("reverse-own-msgid", Code.INVALID_ARGUMENT, "omsgid")
def _(w: World) -> Send:
    msgid = w.a.new_msgid()
    req = settlement_pb2.ReverseRequest(header=w.a.header(msgid), omsgid=msgid)
    return raw(w.a.settlement.Reverse, req)


@case("reverse-wrong-oinfno", Code.INVALID_ARGUMENT, "oinfno")
def _(w: World) -> Send:
    msgid = w.a.new_msgid()
    w.a.register(
        EMPLOYEE.psn_no, insutype=310, med_type=11, begndate=DAY, ipt_otp_no="MZ-R", msgid=msgid
    )
    return lambda: w.a.reverse(msgid, oinfno="Settle")


@case("query-settlements-no-selector", Code.INVALID_ARGUMENT, "by")
def _(w: World) -> Send:
    return lambda: w.a.query_settlements()


@case("query-settlements-limit-too-large", Code.INVALID_ARGUMENT, "limit")
def _(w: World) -> Send:
    mdtrt_id, _ = settled(w)
    return lambda: w.a.query_settlements(mdtrt_id=mdtrt_id, limit=10_001)


@case("query-settlements-another-institutions-visit", Code.NOT_FOUND)
def _(w: World) -> Send:
    mdtrt_id, _ = settled(w, w.b)
    return lambda: w.a.query_settlements(mdtrt_id=mdtrt_id)


@case("pre-settle-another-institutions-visit", Code.NOT_FOUND)
def _(w: World) -> Send:
    mdtrt_id, ls = visit(w, w.b)
    return lambda: w.a.pre_settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))


@case("reverse-missing-omsgid", Code.INVALID_ARGUMENT, "omsgid")
def _(w: World) -> Send:
    return lambda: w.a.reverse("")


@case("reverse-a-sign-in", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    c = w.client()
    msgid = c.new_msgid()
    c.call(
        c.settlement.SignIn,
        settlement_pb2.SignInRequest(header=header(c, msgid, sign_no=""), password=c.password),
    )
    return lambda: w.a.reverse(msgid)


@case("reverse-upload-of-settled-visit", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    mdtrt_id = register(w)
    ls = lines(3, seed=next(w.seq))
    msgid = w.a.new_msgid()
    w.a.upload_fees(mdtrt_id, ls, msgid=msgid)
    w.a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls))
    return lambda: w.a.reverse(msgid)


@case("query-settlements-empty-time-range", Code.INVALID_ARGUMENT, "time_range.end")
def _(w: World) -> Send:
    tr = settlement_pb2.TimeRange()
    tr.begin.FromMilliseconds(2_000_000)
    tr.end.FromMilliseconds(1_000_000)
    return lambda: w.a.query_settlements(time_range=tr)


# -- reconciliation
@case("totals-end-before-begin", Code.INVALID_ARGUMENT, "end_date")
def _(w: World) -> Send:
    settled(w)
    return lambda: w.a.totals(DAY, DAY - 1)


@case("details-bad-date", Code.INVALID_ARGUMENT, "begin_date")
def _(w: World) -> Send:
    return lambda: w.a.details(20260631, DAY + 1)


# -- reference data
def _policy(version: str, *replace: tuple[str, str]) -> str:
    text = demo_data.policy_text().replace("version = 2026_01", f"version = {version}")
    for old, new in replace:
        text = text.replace(old, new, 1)
    return text


@case(
    "put-policy-malformed",
    Code.INVALID_ARGUMENT,
    "rules[0].basic.bands[0].ratio_bp",
    within=True,
)
def _(w: World) -> Send:
    text = _policy("2026_02", ("ratio_bp = 8500", "ratio_bp = 20000"))
    return lambda: w.a.put_policy(text)


@case("put-policy-older-version", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    text = _policy("2025_01")
    return lambda: w.a.put_policy(text)


@case("put-policy-unknown-format", Code.INVALID_ARGUMENT, "format")
def _(w: World) -> Send:
    text = _policy("2026_02")
    return lambda: w.a.put_policy(text, fmt="yaml")


@case("get-policy-unknown-version", Code.NOT_FOUND)
def _(w: World) -> Send:
    return lambda: w.a.get_policy(1999)


@case("put-mappings-unknown-insurance-code", Code.INVALID_ARGUMENT, "mappings[0].med_list_codg")
def _(w: World) -> Send:
    m = catalog_pb2.Mapping(medins_list_codg="00001-NEW", med_list_codg="XNOSUCHCODE")
    return lambda: w.a.put_mappings([m])


@case("put-mappings-same-msgid-other-payload", Code.ALREADY_EXISTS)
def _(w: World) -> Send:
    code = next(h.mapped_to for h in demo_data.his_items(INST_A) if h.mapped_to)
    msgid = w.a.new_msgid()

    def put(hosp_code: str) -> Send:
        m = catalog_pb2.Mapping(medins_list_codg=hosp_code, med_list_codg=code)
        req = catalog_pb2.PutMappingsRequest(header=w.a.header(msgid), mappings=[m])
        return raw(w.a.catalog.PutMappings, req)

    put(f"00001-EXTRA{next(w.seq)}")()
    return put(f"00001-EXTRA{next(w.seq)}")


@case("put-mappings-empty", Code.INVALID_ARGUMENT, "mappings")
def _(w: World) -> Send:
    return lambda: w.a.put_mappings([])


@case("import-catalog-version-not-newer", Code.FAILED_PRECONDITION)
def _(w: World) -> Send:
    items = demo_data.catalog_items()
    return lambda: w.a.import_catalog(demo_data.CATALOG_VERSION, items)


@case("import-catalog-bad-item", Code.INVALID_ARGUMENT, "items[1].chrgitm_lv")
def _(w: World) -> Send:
    items = demo_data.catalog_items()
    items[1].chrgitm_lv = 4
    return lambda: w.a.import_catalog(demo_data.CATALOG_VERSION + 1, items)


@case("download-catalog-negative-since", Code.INVALID_ARGUMENT, "since_version")
def _(w: World) -> Send:
    return lambda: w.a.download_catalog(-1)


@case("match-items-k-too-large", Code.INVALID_ARGUMENT, "k")
def _(w: World) -> Send:
    return lambda: w.a.match_items([catalog_pb2.HospitalItem(name="阿莫西林胶囊")], k=51)


@case("put-persons-bad-gend", Code.INVALID_ARGUMENT, "persons[0].gend")
def _(w: World) -> Send:
    p = catalog_pb2.PersonRecord()
    p.CopyFrom(EMPLOYEE)
    p.gend = 3
    return lambda: w.a.put_persons([p])


@case("put-institutions-bad-hosp-lv", Code.INVALID_ARGUMENT, "institutions[0].hosp_lv")
def _(w: World) -> Send:
    inst = catalog_pb2.Institution()
    inst.CopyFrom(demo_data.INSTITUTIONS[0])
    inst.hosp_lv = 4
    req = catalog_pb2.PutInstitutionsRequest(
        header=w.a.header(w.a.new_msgid()), institutions=[inst]
    )
    return raw(w.a.catalog.PutInstitutions, req)


@case("put-policy-not-json", Code.INVALID_ARGUMENT, "text", within=True)
def _(w: World) -> Send:
    return lambda: w.a.put_policy("{not json", fmt="json")


@case("put-mappings-empty-insurance-code", Code.INVALID_ARGUMENT, "mappings[0].med_list_codg")
def _(w: World) -> Send:
    m = catalog_pb2.Mapping(medins_list_codg="00001-NEW", med_list_codg="")
    return lambda: w.a.put_mappings([m])


@case("import-catalog-duplicate-code", Code.INVALID_ARGUMENT, "items[2].med_list_codg")
def _(w: World) -> Send:
    items = demo_data.catalog_items()
    items[2].med_list_codg = items[0].med_list_codg
    return lambda: w.a.import_catalog(demo_data.CATALOG_VERSION + 1, items)


@case("import-catalog-chunks-disagree-on-version", Code.INVALID_ARGUMENT, "messages[1].version")
def _(w: World) -> Send:
    items = demo_data.catalog_items()
    msgs = [
        catalog_pb2.CatalogChunk(header=w.a.header(w.a.new_msgid()), version=2, items=items[:1500]),
        catalog_pb2.CatalogChunk(version=3, items=items[1500:]),
    ]
    return raw(lambda it, timeout: w.a.catalog.ImportCatalog(iter(it), timeout=timeout), msgs)


@case("download-catalog-chunk-too-large", Code.INVALID_ARGUMENT, "chunk_size")
def _(w: World) -> Send:
    req = catalog_pb2.DownloadCatalogRequest(header=w.a.header(), chunk_size=10_001)
    return raw(lambda r, timeout: list(w.a.catalog.DownloadCatalog(r, timeout=timeout)), req)


@case("match-items-none", Code.INVALID_ARGUMENT, "items")
def _(w: World) -> Send:
    return lambda: w.a.match_items([])


# -- bytes that are not the request message
@case("malformed-bytes-settle", Code.INVALID_ARGUMENT)
def _(w: World) -> Send:
    visit(w)
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = w.a.channel.unary_unary(
        "/medsettle.v1.Settlement/Settle"
    )
    return raw(call, MALFORMED)


@case("malformed-bytes-get-settlement", Code.INVALID_ARGUMENT)
def _(w: World) -> Send:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = w.a.channel.unary_unary(
        "/medsettle.v1.Settlement/GetSettlement"
    )
    return raw(call, MALFORMED)


@case("malformed-bytes-import-catalog", Code.INVALID_ARGUMENT)
def _(w: World) -> Send:
    call: grpc.StreamUnaryMultiCallable[bytes, bytes] = w.a.channel.stream_unary(
        "/medsettle.v1.Catalog/ImportCatalog"
    )
    return raw(lambda req, timeout: call(iter([req]), timeout=timeout), MALFORMED)


@case("malformed-bytes-in-second-stream-message", Code.INVALID_ARGUMENT)
def _(w: World) -> Send:
    mdtrt_id = register(w)
    first = settlement_pb2.UploadFeesRequest(
        header=w.a.header(w.a.new_msgid()), mdtrt_id=mdtrt_id, lines=lines(2, seed=next(w.seq))
    )
    call: grpc.StreamUnaryMultiCallable[bytes, bytes] = w.a.channel.stream_unary(
        "/medsettle.v1.Settlement/StreamFees"
    )
    msgs = [first.SerializeToString(), MALFORMED]
    return raw(lambda it, timeout: call(iter(it), timeout=timeout), msgs)


@case("malformed-bytes-download-catalog", Code.INVALID_ARGUMENT)
def _(w: World) -> Send:
    call: grpc.UnaryStreamMultiCallable[bytes, bytes] = w.a.channel.unary_stream(
        "/medsettle.v1.Catalog/DownloadCatalog"
    )
    return raw(lambda req, timeout: list(call(req, timeout=timeout)), MALFORMED)


# ---------------------------------------------------------------------------- the test
def test_table_is_large_and_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 35
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_request(bad: Case, request: pytest.FixtureRequest) -> None:
    w: World = request.getfixturevalue(bad.server)
    send = bad.prepare(w)
    before = snapshot(w.server.db)
    trail = len(audit_rows(w.server.db))

    with pytest.raises(MedsettleError) as caught:
        send()

    err = caught.value
    assert err.code not in (Code.INTERNAL, Code.UNKNOWN), err.message
    assert err.code == bad.code, err.message
    if bad.field is not None:
        names = [f for f, _ in err.violations]
        if bad.within:
            assert any(bad.field in f for f in names), names
        else:
            assert bad.field in names, names
    assert snapshot(w.server.db) == before
    # At most the refusal's own audit record, naming its code.
    added = audit_rows(w.server.db)[trail:]
    assert len(added) <= 1
    assert all(r[3].startswith(f"{bad.code.name}: ") for r in added), added
