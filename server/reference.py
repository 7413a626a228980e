"""Reference-data operations: catalog versions (import, download since a version), mappings,
matching, policy versions, institutions and persons with their opening accumulators.

Every change bumps `meta.refdata_gen` in its own transaction, so each process rebuilds its
engine objects before its next call (server/refdata.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import engine_rs
from medsettle.v1 import catalog_pb2
from server import persons
from server.codes import valid_date
from server.columns import pack_strings
from server.common import Caller
from server.errors import FailedPrecondition, InvalidArgument, NotFound, Violations, field_error
from server.persons import ACC_FIELDS
from server.refdata import bump
from server.security.pii import Vault

_ITEM_COLS = (
    "med_list_codg, name, spec, dosage_form, manufacturer, kind, chrgitm_lv, med_chrgitm_type,"
    " price_cap, selfpay, inpatient_only, sex, age_min, age_max, diagnoses, begndate, enddate"
)


def _item_row(i: int, it: catalog_pb2.CatalogItem, v: Violations) -> tuple[Any, ...]:
    p = f"items[{i}]"
    v.require(0 < len(it.med_list_codg) <= 64, f"{p}.med_list_codg", "is required")
    v.require(bool(it.name), f"{p}.name", "is required")
    v.require(1 <= it.kind <= 6, f"{p}.kind", "must be 1..6")
    v.require(1 <= it.chrgitm_lv <= 3, f"{p}.chrgitm_lv", "must be 1, 2 or 3")
    v.require(1 <= it.med_chrgitm_type <= 14, f"{p}.med_chrgitm_type", "must be 1..14")
    v.require(it.hilist_pric_uplmt_amt >= 0, f"{p}.hilist_pric_uplmt_amt", "must be >= 0")
    v.require(it.sex in (0, 1, 2), f"{p}.sex", "must be 0, 1 or 2")
    v.require(0 <= it.age_min <= 255 and 0 <= it.age_max <= 255, f"{p}.age_min", "0..255")
    for j, r in enumerate(it.selfpay_prop):
        v.require(0 <= r.ratio_bp <= 10000, f"{p}.selfpay_prop[{j}].ratio_bp", "must be 0..10000")
    for name, d in (("begndate", it.begndate), ("enddate", it.enddate)):
        v.require(d == 0 or valid_date(d), f"{p}.{name}", f"{d} is not a yyyymmdd date")
    selfpay = json.dumps(sorted([r.psn_type, r.ratio_bp] for r in it.selfpay_prop))
    return (
        it.med_list_codg,
        it.name,
        it.spec,
        it.dosage_form,
        it.manufacturer,
        it.kind,
        it.chrgitm_lv,
        it.med_chrgitm_type,
        it.hilist_pric_uplmt_amt,
        selfpay,
        int(it.inpatient_only),
        it.sex,
        it.age_min,
        it.age_max,
        it.diagnoses,
        it.begndate,
        it.enddate,
    )


def catalog_row(it: catalog_pb2.CatalogItem) -> tuple[Any, ...]:
    """The catalog_items columns of an item (checked by `_item_row` where it comes from a
    caller)."""
    v = Violations()
    row = _item_row(0, it, v)
    v.raise_if_any()
    return row


def import_catalog(
    conn: sqlite3.Connection, version: int, items: list[catalog_pb2.CatalogItem], now: int
) -> tuple[bytes, str]:
    """A whole catalog version: changed items take `version`, absent ones are retired."""
    if version <= 0:
        raise field_error("version", "must be positive")
    latest = conn.execute("SELECT COALESCE(MAX(version), 0) FROM catalog_versions").fetchone()[0]
    if version <= latest:
        raise FailedPrecondition(f"version: {version} is not newer than the current {latest}")
    if not items:
        raise field_error("items", "a catalog version needs at least one item")
    v = Violations()
    rows = []
    seen: set[str] = set()
    for i, it in enumerate(items):
        rows.append(_item_row(i, it, v))
        if it.med_list_codg in seen:
            v.add(f"items[{i}].med_list_codg", f"{it.med_list_codg} appears twice")
        seen.add(it.med_list_codg)
        if len(v.items) >= 20:
            break
    v.raise_if_any()
    old = {
        r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT {_ITEM_COLS}, retired FROM catalog_items")
    }
    changed = 0
    for r in rows:
        prev = old.pop(r[0], None)
        if prev is not None and prev[:-1] == r[1:] and prev[-1] == 0:
            continue
        changed += 1
        conn.execute(
            f"INSERT OR REPLACE INTO catalog_items ({_ITEM_COLS}, ver, retired)"
            f" VALUES ({', '.join('?' * 17)}, ?, 0)",
            (*r, version),
        )
    retired = [code for code, prev in old.items() if prev[-1] == 0]
    conn.executemany(
        "UPDATE catalog_items SET retired = 1, ver = ? WHERE med_list_codg = ?",
        [(version, c) for c in retired],
    )
    conn.execute("INSERT INTO catalog_versions VALUES (?, ?, ?)", (version, now, len(rows)))
    bump(conn)
    resp = catalog_pb2.ImportCatalogResponse(
        version=version, item_count=len(rows), changed=changed, retired=len(retired)
    )
    return resp.SerializeToString(), str(version)


CATALOG_SINCE_SQL = (
    f"SELECT {_ITEM_COLS}, ver, retired FROM catalog_items WHERE ver > ?"
    " ORDER BY ver, med_list_codg"
)
LATEST_CATALOG_SQL = "SELECT COALESCE(MAX(version), 0) FROM catalog_versions"


def catalog_chunks(
    fetch: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], since: int, chunk: int
) -> list[catalog_pb2.CatalogChunk]:
    """Items changed or retired after `since`, in chunks, each stamped with the latest
    version; the same queries serve a front-end's SQLite and the center's PostgreSQL."""
    if since < 0:
        raise field_error("since_version", "must be >= 0")
    if not 0 <= chunk <= 10_000:
        raise field_error("chunk_size", "must be 0..10000")
    size = chunk or 1000
    latest = int(fetch(LATEST_CATALOG_SQL, ())[0][0])
    rows = fetch(CATALOG_SINCE_SQL, (since,))
    return [
        catalog_pb2.CatalogChunk(
            version=latest, items=[_item_message(r) for r in rows[i : i + size]]
        )
        for i in range(0, len(rows), size)
    ]


def _item_message(r: Sequence[Any]) -> catalog_pb2.CatalogItem:
    return catalog_pb2.CatalogItem(
        med_list_codg=r[0],
        name=r[1],
        spec=r[2],
        dosage_form=r[3],
        manufacturer=r[4],
        kind=r[5],
        chrgitm_lv=r[6],
        med_chrgitm_type=r[7],
        hilist_pric_uplmt_amt=r[8],
        selfpay_prop=[
            catalog_pb2.SelfpayRatio(psn_type=p, ratio_bp=b) for p, b in json.loads(r[9])
        ],
        inpatient_only=bool(r[10]),
        sex=r[11],
        age_min=r[12],
        age_max=r[13],
        diagnoses=r[14],
        begndate=r[15],
        enddate=r[16],
        ver=r[17],
        retired=bool(r[18]),
    )


def apply_catalog_increment(
    conn: sqlite3.Connection, version: int, items: Sequence[catalog_pb2.CatalogItem], now: int
) -> int:
    """Apply items pulled from the center (each with the version that changed it) and record
    `version`; returns how many changed. Processes reload their catalog on the next call."""
    latest = conn.execute(LATEST_CATALOG_SQL).fetchone()[0]
    if version <= latest:
        return 0
    v = Violations()
    for i, it in enumerate(items):
        row = _item_row(i, it, v)
        v.raise_if_any()
        if it.retired:
            conn.execute(
                "UPDATE catalog_items SET retired = 1, ver = ? WHERE med_list_codg = ?",
                (it.ver, it.med_list_codg),
            )
        else:
            conn.execute(
                f"INSERT OR REPLACE INTO catalog_items ({_ITEM_COLS}, ver, retired)"
                f" VALUES ({', '.join('?' * 17)}, ?, 0)",
                (*row, it.ver),
            )
    active = conn.execute("SELECT COUNT(*) FROM catalog_items WHERE retired = 0").fetchone()[0]
    conn.execute("INSERT INTO catalog_versions VALUES (?, ?, ?)", (version, now, active))
    bump(conn)
    return len(items)


def apply_policy_version(conn: sqlite3.Connection, pv: catalog_pb2.PolicyVersion, now: int) -> bool:
    """Keep a policy version pulled from the center (the engine checks it on the way in)."""
    have = conn.execute("SELECT 1 FROM policies WHERE version = ?", (pv.version,)).fetchone()
    if have is not None:
        return False
    policy = engine_rs.Policy.from_json(pv.canonical_json)
    conn.execute(
        "INSERT INTO policies VALUES (?, ?, ?, ?, ?)",
        (policy.version, policy.id, policy.name, policy.to_json(), now),
    )
    bump(conn)
    return True


def put_mappings(
    conn: sqlite3.Connection, caller: Caller, req: catalog_pb2.PutMappingsRequest
) -> tuple[bytes, str]:
    if not req.mappings:
        raise field_error("mappings", "at least one mapping is required")
    v = Violations()
    known = {
        r[0] for r in conn.execute("SELECT med_list_codg FROM catalog_items WHERE retired = 0")
    }
    for i, m in enumerate(req.mappings):
        v.require(bool(m.medins_list_codg), f"mappings[{i}].medins_list_codg", "is required")
        if not m.delete:
            v.require(
                m.med_list_codg in known,
                f"mappings[{i}].med_list_codg",
                f"{m.med_list_codg!r} is not in the catalog",
            )
        if len(v.items) >= 20:
            break
    v.raise_if_any()
    code = caller.inst.fixmedins_code
    for m in req.mappings:
        if m.delete:
            conn.execute(
                "DELETE FROM mappings WHERE fixmedins_code = ? AND medins_list_codg = ?",
                (code, m.medins_list_codg),
            )
        else:
            conn.execute(
                "INSERT OR REPLACE INTO mappings VALUES (?, ?, ?, ?)",
                (code, m.medins_list_codg, m.med_list_codg, m.medins_list_name),
            )
    bump(conn)
    count = conn.execute(
        "SELECT COUNT(*) FROM mappings WHERE fixmedins_code = ?", (code,)
    ).fetchone()[0]
    resp = catalog_pb2.PutMappingsResponse(applied=len(req.mappings), mapping_count=count)
    return resp.SerializeToString(), code


def match_items(
    conn: sqlite3.Connection, caller: Caller, req: catalog_pb2.MatchItemsRequest
) -> catalog_pb2.MatchItemsResponse:
    if not req.items:
        raise field_error("items", "at least one item is required")
    if len(req.items) > 10_000:
        raise field_error("items", "at most 10000 items per call")
    k = req.k or 5
    if not 1 <= k <= 50:
        raise field_error("k", "must be 1..50")
    if caller.snap.items is None:
        raise FailedPrecondition("no catalog is loaded on this front-end (ImportCatalog)")
    matcher = caller.snap.matcher(conn)
    items = req.items
    idx, scores = matcher.match_many(
        pack_strings([i.name for i in items]),
        pack_strings([i.spec for i in items]),
        pack_strings([i.dosage_form for i in items]),
        pack_strings([i.manufacturer for i in items]),
        k,
    )
    base = caller.snap.catalog(conn, caller.inst.fixmedins_code)
    resp = catalog_pb2.MatchItemsResponse()
    for row in range(len(items)):
        result = resp.results.add()
        for j in range(k):
            pos = int(idx[row, j])
            if pos < 0:
                continue
            it = base.item(pos)
            result.candidates.add(
                med_list_codg=it["code"],
                name=it["name"],
                spec=it.get("spec", ""),
                manufacturer=it.get("manufacturer", ""),
                score=float(scores[row, j]),
            )
    return resp


def put_policy(
    conn: sqlite3.Connection, req: catalog_pb2.PutPolicyRequest, now: int
) -> tuple[bytes, str]:
    try:
        if req.format == "toml":
            policy = engine_rs.Policy.from_toml(req.text)
        elif req.format == "json":
            policy = engine_rs.Policy.from_json(req.text)
        else:
            raise field_error("format", "must be toml or json")
    except engine_rs.PolicyError as exc:
        raise InvalidArgument(
            f"text: policy field {exc.path}: {exc.reason}", [(f"text:{exc.path}", exc.reason)]
        ) from None
    latest = conn.execute("SELECT COALESCE(MAX(version), 0) FROM policies").fetchone()[0]
    if policy.version <= latest:
        raise FailedPrecondition(
            f"text: policy version {policy.version} is not newer than the current {latest}"
        )
    canonical = policy.to_json()
    conn.execute(
        "INSERT INTO policies VALUES (?, ?, ?, ?, ?)",
        (policy.version, policy.id, policy.name, canonical, now),
    )
    bump(conn)
    resp = catalog_pb2.PolicyVersion(
        policy_id=policy.id, version=policy.version, name=policy.name, canonical_json=canonical
    )
    return resp.SerializeToString(), str(policy.version)


def get_policy(conn: sqlite3.Connection, version: int) -> catalog_pb2.PolicyVersion:
    if version:
        row = conn.execute(
            "SELECT policy_id, version, name, canonical_json FROM policies WHERE version = ?",
            (version,),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT policy_id, version, name, canonical_json FROM policies"
            " ORDER BY version DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise NotFound(f"version: no policy version {version or '(any)'}")
    return catalog_pb2.PolicyVersion(
        policy_id=row[0], version=row[1], name=row[2], canonical_json=row[3]
    )


def put_institutions(
    conn: sqlite3.Connection, req: catalog_pb2.PutInstitutionsRequest
) -> tuple[bytes, str]:
    if not req.institutions:
        raise field_error("institutions", "at least one is required")
    v = Violations()
    for i, ins in enumerate(req.institutions):
        v.require(
            0 < len(ins.fixmedins_code) <= 32, f"institutions[{i}].fixmedins_code", "is required"
        )
        v.require(bool(ins.fixmedins_name), f"institutions[{i}].fixmedins_name", "is required")
        v.require(ins.hosp_lv in (1, 2, 3), f"institutions[{i}].hosp_lv", "must be 1, 2 or 3")
        v.require(ins.admdvs.isdigit(), f"institutions[{i}].admdvs", "must be a region code")
    v.raise_if_any()
    conn.executemany(
        "INSERT OR REPLACE INTO institutions VALUES (?, ?, ?, ?)",
        [(i.fixmedins_code, i.fixmedins_name, i.hosp_lv, i.admdvs) for i in req.institutions],
    )
    bump(conn)
    return catalog_pb2.PutCountResponse(count=len(req.institutions)).SerializeToString(), ""


def put_persons(
    conn: sqlite3.Connection, vault: Vault, req: catalog_pb2.PutPersonsRequest
) -> tuple[bytes, str]:
    """Upsert persons; given accumulators become the opening row, and the current row is
    recomputed as opening + the deltas of the person's active settlements."""
    if not req.persons:
        raise field_error("persons", "at least one is required")
    v = Violations()
    for i, p in enumerate(req.persons):
        q = f"persons[{i}]"
        v.require(0 < len(p.psn_no) <= 32, f"{q}.psn_no", "is required")
        v.require(bool(p.psn_name), f"{q}.psn_name", "is required")
        v.require(p.gend in (1, 2), f"{q}.gend", "must be 1 or 2")
        v.require(valid_date(p.brdy), f"{q}.brdy", "is not a yyyymmdd date")
        v.require(p.insutype > 0, f"{q}.insutype", "is required")
        v.require(p.cross_region in (0, 1, 2), f"{q}.cross_region", "must be 0, 1 or 2")
        v.require(p.balc >= 0, f"{q}.balc", "must be >= 0")
        for j, a in enumerate(p.accumulators):
            v.require(
                bool(a.pool) and 1900 < a.year < 3000,
                f"{q}.accumulators[{j}]",
                "needs year and pool",
            )
            for f in ACC_FIELDS:
                v.require(getattr(a, f) >= 0, f"{q}.accumulators[{j}].{f}", "must be >= 0")
        if len(v.items) >= 20:
            break
    v.raise_if_any()
    for p in req.persons:
        spent = conn.execute(
            "SELECT COALESCE(SUM(acct_pay), 0) FROM settlements WHERE psn_no = ? AND state = 1",
            (p.psn_no,),
        ).fetchone()[0]
        conn.execute(
            persons.insert_sql("?", "INSERT OR REPLACE"),
            persons.record_row(vault, p, p.balc - spent),
        )
        for a in p.accumulators:
            opening = {f: getattr(a, f) for f in ACC_FIELDS}
            cols = ", ".join(ACC_FIELDS)
            marks = ", ".join("?" * len(ACC_FIELDS))
            conn.execute(
                f"INSERT OR REPLACE INTO accumulators (psn_no, year, pool, opening, {cols})"
                f" VALUES (?, ?, ?, 1, {marks})",
                (p.psn_no, a.year, a.pool, *opening.values()),
            )
            current = dict(opening)
            for (delta,) in conn.execute(
                "SELECT acc_delta FROM settlements WHERE psn_no = ? AND acc_year = ?"
                " AND acc_pool = ? AND state = 1",
                (p.psn_no, a.year, a.pool),
            ):
                for f, d in json.loads(delta).items():
                    current[f] += d
            conn.execute(
                f"INSERT OR REPLACE INTO accumulators (psn_no, year, pool, opening, {cols})"
                f" VALUES (?, ?, ?, 0, {marks})",
                (p.psn_no, a.year, a.pool, *current.values()),
            )
    return catalog_pb2.PutCountResponse(count=len(req.persons)).SerializeToString(), ""
