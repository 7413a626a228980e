"""The reference data a process settles from, held in the engine's form: the policy in force,
the catalog with each institution's mappings, and a matcher.

The database is the truth; this is a cache keyed by `meta.refdata_gen`, which every change
to catalog, mappings or policy bumps in its own transaction. Each operation first calls
`current(conn)`: when another process (or this one) changed the reference data, the cache is
rebuilt from the database before the operation goes on. A call holds on to the snapshot it
started with, so a swap never fails or mixes a call in flight.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

import engine_rs
from server import metrics
from server.columns import pack_strings


@dataclass
class Institution:
    fixmedins_code: str
    fixmedins_name: str
    hosp_lv: int
    admdvs: str


@dataclass
class Snapshot:
    gen: int
    policy: engine_rs.Policy | None
    policy_version: int
    catalog_version: int
    items: engine_rs.CatalogItems | None
    selfpay_psn_types: list[int]
    institutions: dict[str, Institution]
    _catalogs: dict[str, engine_rs.Catalog] = field(default_factory=dict)
    _matcher: engine_rs.Matcher | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def catalog(self, conn: sqlite3.Connection, fixmedins_code: str) -> engine_rs.Catalog:
        """The catalog with this institution's mappings (built on first use)."""
        with self._lock:
            cat = self._catalogs.get(fixmedins_code)
            if cat is None:
                rows = conn.execute(
                    "SELECT medins_list_codg, med_list_codg FROM mappings WHERE fixmedins_code = ?",
                    (fixmedins_code,),
                ).fetchall()
                cat = engine_rs.Catalog.load(
                    self._items(),
                    {
                        "hosp_code": pack_strings([r[0] for r in rows]),
                        "ins_code": pack_strings([r[1] for r in rows]),
                    },
                    version=self.catalog_version,
                    selfpay_psn_types=self.selfpay_psn_types,
                )
                self._catalogs[fixmedins_code] = cat
            return cat

    def matcher(self, conn: sqlite3.Connection) -> engine_rs.Matcher:
        with self._lock:
            if self._matcher is None:
                base = engine_rs.Catalog.load(
                    self._items(),
                    None,
                    version=self.catalog_version,
                    selfpay_psn_types=self.selfpay_psn_types,
                )
                self._matcher = engine_rs.Matcher(base)
            return self._matcher

    def _items(self) -> engine_rs.CatalogItems:
        if self.items is None:
            raise LookupError("no catalog has been imported")
        return self.items


class RefData:
    """Per-process cache of the reference data, refreshed by generation."""

    def __init__(self) -> None:
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()

    def current(self, conn: sqlite3.Connection) -> Snapshot:
        gen = conn.execute("SELECT value FROM meta WHERE key = 'refdata_gen'").fetchone()[0]
        snap = self._snap
        if snap is not None and snap.gen == gen:
            return snap
        with self._lock:
            if self._snap is None or self._snap.gen != gen:
                self._snap = load_snapshot(conn, gen)
                metrics.REFDATA_VERSION.labels("policy").set(self._snap.policy_version)
                metrics.REFDATA_VERSION.labels("catalog").set(self._snap.catalog_version)
            return self._snap


def bump(conn: sqlite3.Connection) -> None:
    """Mark the reference data changed (inside the changing transaction)."""
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'refdata_gen'")


def load_snapshot(conn: sqlite3.Connection, gen: int) -> Snapshot:
    institutions = {
        r[0]: Institution(r[0], r[1], int(r[2]), r[3])
        for r in conn.execute(
            "SELECT fixmedins_code, fixmedins_name, hosp_lv, admdvs FROM institutions"
        )
    }
    prow = conn.execute(
        "SELECT version, canonical_json FROM policies ORDER BY version DESC LIMIT 1"
    ).fetchone()
    policy = engine_rs.Policy.from_json(prow[1]) if prow else None
    cver = conn.execute("SELECT COALESCE(MAX(version), 0) FROM catalog_versions").fetchone()[0]
    items, psn_types = _catalog_columns(conn)
    return Snapshot(
        gen=gen,
        policy=policy,
        policy_version=int(prow[0]) if prow else 0,
        catalog_version=int(cver),
        items=items,
        selfpay_psn_types=psn_types,
        institutions=institutions,
    )


def _catalog_columns(
    conn: sqlite3.Connection,
) -> tuple[engine_rs.CatalogItems | None, list[int]]:
    rows = conn.execute(
        "SELECT med_list_codg, name, spec, dosage_form, manufacturer, kind, chrgitm_lv,"
        " med_chrgitm_type, price_cap, selfpay, inpatient_only, sex, age_min, age_max,"
        " diagnoses, begndate, enddate FROM catalog_items WHERE retired = 0"
        " ORDER BY med_list_codg"
    ).fetchall()
    if not rows:
        return None, []
    ratios = [dict(json.loads(r[9])) for r in rows]
    psn_types = sorted({int(p) for d in ratios for p in d if int(p) != 0})
    sp = np.zeros((len(rows), len(psn_types) + 1), dtype=np.int32)
    for i, d in enumerate(ratios):
        default = int(d.get(0, 0))
        sp[i, 0] = default
        for j, p in enumerate(psn_types, start=1):
            sp[i, j] = int(d.get(p, default))

    def ints(col: int, dtype: type) -> npt.NDArray[Any]:
        return np.array([r[col] for r in rows], dtype=dtype)

    items: engine_rs.CatalogItems = {
        "code": pack_strings([r[0] for r in rows]),
        "name": pack_strings([r[1] for r in rows]),
        "spec": pack_strings([r[2] for r in rows]),
        "dosage_form": pack_strings([r[3] for r in rows]),
        "manufacturer": pack_strings([r[4] for r in rows]),
        "kind": ints(5, np.uint8),
        "chrgitm_lv": ints(6, np.uint8),
        "fee_category": ints(7, np.uint8),
        "price_cap": ints(8, np.int64),
        "selfpay_prop_bp": sp,
        "inpatient_only": ints(10, np.bool_),
        "sex": ints(11, np.uint8),
        "age_min": ints(12, np.uint8),
        "age_max": np.array([r[13] if r[13] else 255 for r in rows], dtype=np.uint8),
        "diagnoses": pack_strings([r[14] for r in rows]),
        "valid_from": ints(15, np.int32),
        "valid_to": ints(16, np.int32),
    }
    return items, psn_types
