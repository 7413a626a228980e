"""Sign in/out (9001/9002), person lookup (1101), registration and admission (2201/2401)
with their cancel, and fee lines: upload (2204/2301, also streamed) and delete (2205/2302).
Uploaded lines are preprocessed at once (their 2204 results are the answer) and rejected as
a batch when any line is bad."""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

import engine_rs
from medsettle.v1 import common_pb2, settlement_pb2
from server import metrics
from server.codes import (
    CERT_TYPES,
    INPATIENT_MED_TYPES,
    MED_TYPES,
    age_on,
    treatment_of,
    valid_date,
)
from server.common import Caller, Env, issue_id, require_fresh_refdata
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Violations,
    field_error,
    refuse_fields,
)
from server.frontend.store.sqlite import ledger_of
from server.limits import joined, split_sum
from server.persons import INDEX_OF, READ_COLUMNS, PersonRow, open_person
from server.security import roles
from server.security.pii import Vault


# ---------------------------------------------------------------------------- sign in/out
def sign_in(
    conn: sqlite3.Connection,
    env: Env,
    header: common_pb2.RequestHeader,
    held: frozenset[str],
    now: int,
) -> tuple[bytes, str]:
    """A sign_no for an operator whose password was proven (server/frontend/services/signin.py),
    bound to the roles `held` they hold now."""
    snap = env.refdata.current(conn)
    inst = snap.institutions.get(header.fixmedins_code)
    if inst is None:  # pragma: no cover - its operators were found; the institution removed
        raise Unauthenticated("header.fixmedins_code: unknown institution")
    if header.mdtrtarea_admvs and header.mdtrtarea_admvs != inst.admdvs:
        raise field_error("header.mdtrtarea_admvs", f"is not {inst.admdvs}, the institution's")
    sign_no = secrets.token_hex(16)
    expires = now + env.sign_ttl_s * 1000
    conn.execute(
        "INSERT INTO signins VALUES (?, ?, ?, ?, ?, NULL, ?)",
        (sign_no, header.fixmedins_code, header.opter, now, expires, roles.render(held)),
    )
    resp = settlement_pb2.SignInResponse(sign_no=sign_no, roles=sorted(held))
    resp.sign_time.FromMilliseconds(now)
    resp.expires_at.FromMilliseconds(expires)
    return resp.SerializeToString(), sign_no


def sign_out(conn: sqlite3.Connection, caller_sign_no: str, now: int) -> tuple[bytes, str]:
    conn.execute("UPDATE signins SET sign_out_time = ? WHERE sign_no = ?", (now, caller_sign_no))
    resp = settlement_pb2.SignOutResponse()
    resp.sign_out_time.FromMilliseconds(now)
    return resp.SerializeToString(), caller_sign_no


# ---------------------------------------------------------------------------- persons
def load_person(conn: sqlite3.Connection, vault: Vault, psn_no: str) -> PersonRow | None:
    row = conn.execute(f"SELECT {READ_COLUMNS} FROM persons WHERE psn_no = ?", (psn_no,)).fetchone()
    return _person(vault, row) if row else None


def _person(vault: Vault, r: tuple[Any, ...]) -> PersonRow:
    a = open_person(vault, r)
    return PersonRow(
        a[0],
        a[1],
        a[2],
        a[3],
        a[4],
        a[5],
        a[6],
        a[7],
        bool(a[8]),
        bool(a[9]),
        bool(a[10]),
        a[11],
        a[12],
    )


def get_person(
    conn: sqlite3.Connection, vault: Vault, req: settlement_pb2.GetPersonRequest
) -> settlement_pb2.Person:
    """A person by a certificate number, found by its keyed hash (the numbers are sealed)."""
    field = CERT_TYPES.get(req.mdtrt_cert_type)
    v = Violations()
    v.require(field is not None, "mdtrt_cert_type", "must be 01, 02 or 03")
    v.require(bool(req.mdtrt_cert_no), "mdtrt_cert_no", "is required")
    v.raise_if_any()
    assert field is not None
    row = conn.execute(
        f"SELECT {READ_COLUMNS} FROM persons WHERE {INDEX_OF[field]} = ?",
        (vault.index(field, req.mdtrt_cert_no),),
    ).fetchone()
    if row is None:
        raise NotFound("mdtrt_cert_no: no insured person with this certificate")
    p = _person(vault, row)
    return person_message(p)


def person_message(p: PersonRow) -> settlement_pb2.Person:
    cert = p.psn_cert_no
    masked = cert[:6] + "*" * max(0, len(cert) - 10) + cert[-4:] if len(cert) > 10 else "****"
    return settlement_pb2.Person(
        psn_no=p.psn_no,
        psn_name=p.psn_name,
        gend=p.gend,
        brdy=p.brdy,
        psn_type=p.psn_type,
        insutype=p.insutype,
        insuplc_admdvs=p.insuplc_admdvs,
        cvlserv_flag=p.cvlserv_flag,
        maf_flag=p.maf_flag,
        retired=p.retired,
        cross_region=p.cross_region,
        balc=p.balc,
        psn_cert_no_masked=masked,
    )


# ---------------------------------------------------------------------------- visits
@dataclass
class VisitRow:
    id: int
    mdtrt_id: str
    fixmedins_code: str
    psn_no: str
    insutype: int
    med_type: int
    treatment: int
    begndate: int
    dise_codg: list[str]  # ICD-10 codes, opened (sealed at rest)
    state: str


def load_visit(conn: sqlite3.Connection, caller: Caller, mdtrt_id: str) -> VisitRow:
    """The caller's visit, or NOT_FOUND (another institution's visit is not found either)."""
    if not mdtrt_id:
        raise field_error("mdtrt_id", "is required")
    row = conn.execute(
        "SELECT id, mdtrt_id, fixmedins_code, psn_no, insutype, med_type, treatment, begndate,"
        " dise_codg, state FROM visits WHERE mdtrt_id = ?",
        (mdtrt_id,),
    ).fetchone()
    if row is None or row[2] != caller.inst.fixmedins_code:
        raise NotFound(f"mdtrt_id: no visit {mdtrt_id} at this institution")
    i, mdtrt, code, psn_no, insutype, med_type, treatment, begndate, sealed, state = row
    diagnoses = caller.pii.open_diagnoses(mdtrt, bytes(sealed))
    return VisitRow(
        i, mdtrt, code, psn_no, insutype, med_type, treatment, begndate, diagnoses, state
    )


def register(
    conn: sqlite3.Connection,
    env: Env,
    caller: Caller,
    req: settlement_pb2.RegisterRequest,
    now: int,
) -> tuple[bytes, str]:
    v = Violations()
    v.require(bool(req.psn_no), "psn_no", "is required")
    v.require(req.med_type in MED_TYPES, "med_type", f"{req.med_type} is not a known med_type")
    v.require(valid_date(req.begndate), "begndate", f"{req.begndate} is not a yyyymmdd date")
    v.require(bool(req.ipt_otp_no), "ipt_otp_no", "is required")
    inpatient = req.med_type in INPATIENT_MED_TYPES
    if inpatient:
        v.require(len(req.dise_codg) > 0, "dise_codg", "an admission needs a diagnosis")
    for i, d in enumerate(req.dise_codg):
        v.require(0 < len(d) <= 16 and "," not in d, f"dise_codg[{i}]", "not an ICD-10 code")
    v.raise_if_any()
    person = load_person(conn, caller.pii, req.psn_no)
    if person is None:
        raise NotFound(f"psn_no: no insured person {req.psn_no}")
    if req.insutype != person.insutype:
        raise field_error("insutype", f"the person is insured under {person.insutype}")
    if inpatient:
        open_stay = conn.execute(
            "SELECT mdtrt_id FROM visits WHERE psn_no = ? AND fixmedins_code = ?"
            " AND treatment = 2 AND state = 'registered'",
            (req.psn_no, caller.inst.fixmedins_code),
        ).fetchone()
        if open_stay is not None:
            raise FailedPrecondition(
                f"psn_no: already admitted here as {open_stay[0]}; discharge or cancel it first"
            )
    rowid = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM visits").fetchone()[0]
    mdtrt_id = issue_id(env, "M", caller.inst.fixmedins_code, rowid)
    conn.execute(
        "INSERT INTO visits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'registered', ?, ?)",
        (
            rowid,
            mdtrt_id,
            caller.inst.fixmedins_code,
            req.psn_no,
            req.insutype,
            req.med_type,
            treatment_of(req.med_type),
            req.begndate,
            req.ipt_otp_no,
            caller.pii.seal_diagnoses(mdtrt_id, req.dise_codg),
            req.dept_codg,
            req.atddr_no,
            req.header.msgid,
            now,
        ),
    )
    resp = settlement_pb2.RegisterResponse(
        mdtrt_id=mdtrt_id, psn_no=req.psn_no, ipt_otp_no=req.ipt_otp_no
    )
    return resp.SerializeToString(), mdtrt_id


def cancel_registration(
    conn: sqlite3.Connection, caller: Caller, mdtrt_id: str, psn_no: str
) -> tuple[bytes, str]:
    visit = load_visit(conn, caller, mdtrt_id)
    if psn_no and psn_no != visit.psn_no:
        raise field_error("psn_no", "does not match the visit")
    if visit.state == "settled":
        raise FailedPrecondition(f"mdtrt_id: {mdtrt_id} is settled; cancel the settlement first")
    if visit.state == "cancelled":
        raise FailedPrecondition(f"mdtrt_id: {mdtrt_id} is already cancelled")
    conn.execute("UPDATE visits SET state = 'cancelled' WHERE id = ?", (visit.id,))
    conn.execute("DELETE FROM fee_lines WHERE visit_id = ?", (visit.id,))
    return settlement_pb2.CancelRegistrationResponse(
        mdtrt_id=mdtrt_id
    ).SerializeToString(), mdtrt_id


# ---------------------------------------------------------------------------- fee lines
def engine_visit(visit: VisitRow, person: PersonRow) -> engine_rs.Visit:
    return engine_rs.Visit(
        treatment=visit.treatment,
        date=visit.begndate,
        psn_type=person.psn_type,
        sex=person.gend,
        age=age_on(person.brdy, visit.begndate),
        diagnoses=visit.dise_codg,
    )


def upload_fees(
    conn: sqlite3.Connection,
    env: Env,
    caller: Caller,
    mdtrt_id: str,
    upload: engine_rs.FeeUpload,
    msgid: str,
) -> tuple[bytes, str]:
    """The upload's lines (read by the engine as they arrived: their checks and columns)
    onto the visit, preprocessed; the answer with each line's result."""
    require_fresh_refdata(caller)
    visit = load_visit(conn, caller, mdtrt_id)
    if visit.state != "registered":
        raise FailedPrecondition(f"mdtrt_id: {mdtrt_id} is {visit.state}; fees cannot change")
    n = len(upload)
    if not n:
        raise field_error("lines", "at least one fee line is required")
    have = conn.execute(
        "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM fee_lines WHERE visit_id = ?", (visit.id,)
    ).fetchone()
    if have[0] + n > env.max_lines_per_visit:
        raise InvalidArgument(
            f"lines: the visit would have {have[0] + n} lines, more than {env.max_lines_per_visit}",
            [("lines", f"at most {env.max_lines_per_visit} lines per visit")],
        )
    refuse_fields(upload.line_violations)
    sns = upload.feedetl_sn
    dup = _existing_sns(conn, visit.id, sns)
    if dup:
        raise AlreadyExists(
            f"lines: feedetl_sn {', '.join(sorted(dup)[:5])} already uploaded for this visit;"
            " delete them first to resend"
        )
    person = load_person(conn, caller.pii, visit.psn_no)
    assert person is not None  # registration checked it; persons are never deleted
    catalog = caller.snap.catalog(conn, caller.inst.fixmedins_code)
    assert caller.snap.policy is not None
    # The institution's mapping (its admin's) classifies every line: a code the HIS sends
    # is only checked against it (`classified_by_mapping`), never used, and not stored.
    cols = upload.columns
    ev = engine_visit(visit, person)
    try:
        with metrics.PREPROCESS.time():
            results, _ = engine_rs.preprocess(catalog, caller.snap.policy, cols, ev)
    except engine_rs.LineError as exc:
        raise field_error(f"lines[{exc.line}].{exc.field}", exc.reason) from None
    supplied = upload.med_list_codg
    if any(supplied):
        mapped = catalog.codes(results.item)
        classified_by_mapping(upload.medins_list_codg, supplied, mapped)
    ledger_of(conn).insert_fee_lines(visit.id, int(have[1]) + 1, msgid, upload)
    amounts = cols["det_item_fee_sumamt"]
    resp = settlement_pb2.UploadFeesResponse(
        mdtrt_id=mdtrt_id,
        line_count=n,
        visit_line_count=int(have[0]) + n,
        det_item_fee_sumamt=int(amounts.sum()),
    )
    # The per-line results are encoded in Rust (field 5, the message's last: appended, the
    # bytes are those protobuf writes for the whole message).
    results_bytes = engine_rs.fee_line_results(catalog, results, sns, amounts)
    return resp.SerializeToString() + results_bytes, mdtrt_id


def classified_by_mapping(hosp: list[str], supplied: list[str], mapped: list[str]) -> None:
    """INVALID_ARGUMENT for every line whose HIS-supplied `med_list_codg` (`supplied[i]`)
    is not the code the institution's mapping gives its `medins_list_codg` (`hosp[i]`;
    `mapped[i]`, "" when unmapped): a cashier's system cannot re-classify an item (say a
    self-paid class C item as class A). An unmapped item with a supplied code is refused
    too: only the institution's admin maps items (PutMappings); until then the item is
    settled as unmapped, self-paid."""
    v = Violations()
    for i, code in enumerate(supplied):
        if code and code != mapped[i]:
            v.add(
                f"lines[{i}].med_list_codg",
                f"{code} is not the institution's mapping of {hosp[i]} ({mapped[i]}); send it"
                " empty or as mapped"
                if mapped[i]
                else f"{hosp[i]} is not mapped at this institution (its admin maps items);"
                " send it empty",
            )
            if len(v.items) >= 20:
                break
    v.raise_if_any()


def _existing_sns(conn: sqlite3.Connection, visit_id: int, sns: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(sns), 500):
        part = sns[start : start + 500]
        marks = ",".join("?" * len(part))
        found.update(
            r[0]
            for r in conn.execute(
                f"SELECT feedetl_sn FROM fee_lines WHERE visit_id = ? AND feedetl_sn IN ({marks})",
                (visit_id, *part),
            )
        )
    return found


def delete_fees(
    conn: sqlite3.Connection, caller: Caller, req: settlement_pb2.DeleteFeesRequest
) -> tuple[bytes, str]:
    visit = load_visit(conn, caller, req.mdtrt_id)
    if visit.state != "registered":
        raise FailedPrecondition(f"mdtrt_id: {req.mdtrt_id} is {visit.state}; fees cannot change")
    if req.feedetl_sn:
        missing = set(req.feedetl_sn) - _existing_sns(conn, visit.id, list(req.feedetl_sn))
        if missing:
            raise NotFound(f"feedetl_sn: {', '.join(sorted(missing)[:5])} not on this visit")
        deleted = 0
        for sn in set(req.feedetl_sn):
            deleted += conn.execute(
                "DELETE FROM fee_lines WHERE visit_id = ? AND feedetl_sn = ?", (visit.id, sn)
            ).rowcount
    else:
        deleted = conn.execute("DELETE FROM fee_lines WHERE visit_id = ?", (visit.id,)).rowcount
    left = conn.execute("SELECT COUNT(*) FROM fee_lines WHERE visit_id = ?", (visit.id,)).fetchone()
    resp = settlement_pb2.DeleteFeesResponse(deleted=deleted, visit_line_count=left[0])
    return resp.SerializeToString(), req.mdtrt_id


def check_visit_total(
    conn: sqlite3.Connection,
    caller: Caller,
    mdtrt_id: str,
    upload: engine_rs.FeeUpload,
    max_visit_fen: int,
) -> None:
    """INVALID_ARGUMENT naming the first line with which the visit's fees (those stored and
    these) would be more than the per-visit maximum."""
    visit = load_visit(conn, caller, mdtrt_id)
    hi, lo = conn.execute(
        f"SELECT {split_sum('det_item_fee_sumamt')} FROM fee_lines WHERE visit_id = ?",
        (visit.id,),
    ).fetchone()
    running = joined(hi, lo)
    for i, amount in enumerate(upload.nums[:, 2].tolist()):
        running += amount
        if running > max_visit_fen:
            raise field_error(
                f"lines[{i}].det_item_fee_sumamt",
                f"the visit's fees would be {running} fen, more than the {max_visit_fen}"
                " one visit may be",
            )
