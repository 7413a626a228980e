"""Shared fixtures: policy documents built from rule bodies, and small catalogs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engine_rs
from server.columns import pack_strings
from server.demo.localserver import LocalServer

DATA = Path(__file__).parent / "data"


def policy_from_rules(
    *rules: dict[str, Any], rounding: dict[str, str] | None = None, tolerance: int = 1
) -> engine_rs.Policy:
    """A one-off policy document around the given rule bodies (ids added when missing)."""
    doc: dict[str, Any] = {
        "schema": "medsettle.policy/1",
        "id": "test",
        "version": 1,
        "preprocess": {"line_tolerance_fen": tolerance},
        "rounding": rounding or {"mode": "half_up", "fund_legs": "per_leg"},
        "rules": [{"id": f"r{i}", **r} for i, r in enumerate(rules)],
    }
    return engine_rs.Policy.from_json(json.dumps(doc))


def catalog_from_rows(
    rows: list[dict[str, Any]],
    mappings: dict[str, str] | None = None,
    selfpay_psn_types: list[int] | None = None,
) -> engine_rs.Catalog:
    """A catalog from a few item dicts (missing fields take neutral defaults)."""
    psn = selfpay_psn_types or []
    n = len(rows)

    def col(key: str, dtype: Any, default: Any) -> Any:
        return np.array([r.get(key, default) for r in rows], dtype=dtype)

    sp = np.zeros((n, len(psn) + 1), dtype=np.int32)
    for i, r in enumerate(rows):
        ratios = r.get("selfpay_prop_bp", [0])
        sp[i, : len(ratios)] = ratios
        sp[i, len(ratios) :] = ratios[0]
    items: engine_rs.CatalogItems = {
        "code": pack_strings([r["code"] for r in rows]),
        "name": pack_strings([r.get("name", r["code"]) for r in rows]),
        "kind": col("kind", np.uint8, 1),
        "chrgitm_lv": col("chrgitm_lv", np.uint8, 1),
        "fee_category": col("fee_category", np.uint8, 9),
        "price_cap": col("price_cap", np.int64, 0),
        "selfpay_prop_bp": sp,
        "inpatient_only": col("inpatient_only", np.bool_, False),
        "sex": col("sex", np.uint8, 0),
        "age_min": col("age_min", np.uint8, 0),
        "age_max": col("age_max", np.uint8, 255),
        "diagnoses": pack_strings([r.get("diagnoses", "") for r in rows]),
        "valid_from": col("valid_from", np.int32, 0),
        "valid_to": col("valid_to", np.int32, 0),
    }
    maps = mappings if mappings is not None else {f"H-{r['code']}": r["code"] for r in rows}
    m: engine_rs.CatalogMappings = {
        "hosp_code": pack_strings(list(maps)),
        "ins_code": pack_strings(list(maps.values())),
    }
    return engine_rs.Catalog.load(items, m, version=1, selfpay_psn_types=psn)


def lines_from_rows(rows: list[dict[str, Any]]) -> engine_rs.FeeLines:
    """Fee-line columns from dicts with medins_list_codg/med_list_codg/cnt/pric/amount."""
    return {
        "medins_list_codg": pack_strings([r.get("medins_list_codg", "") for r in rows]),
        "med_list_codg": pack_strings([r.get("med_list_codg", "") for r in rows]),
        "cnt": np.array([r["cnt"] for r in rows], dtype=np.int64),
        "pric": np.array([r["pric"] for r in rows], dtype=np.int64),
        "det_item_fee_sumamt": np.array([r["amount"] for r in rows], dtype=np.int64),
        "hosp_appr_flag": np.array([r.get("hosp_appr_flag", 0) for r in rows], dtype=np.int64),
        "fee_date": np.array([r.get("fee_date", 0) for r in rows], dtype=np.int64),
    }


def dense_by_category(sums: dict[str, Any], visit: int) -> list[list[int]]:
    """One visit's category sums from `preprocess_batch`'s long form, as `Summary.by_category`
    lays them out (15 categories x [total, fulamt, overlmt, preselfpay, inscp])."""
    dense = [[0] * 5 for _ in range(15)]
    rows = np.flatnonzero(sums["category_visit"] == visit)
    for r in rows:
        dense[int(sums["category"][r])] = [int(x) for x in sums["category_sums"][r]]
    return dense


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[LocalServer]:
    """A front-end server on loopback over a fresh SQLite file with the demo data set."""
    server = LocalServer(tmp_path / "frontend.db", log=tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
