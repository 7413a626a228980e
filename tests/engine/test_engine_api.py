"""The engine's Python surface: typed errors naming the field, catalog loading and swapping,
batch entry points agreeing with single calls, and the shipped example policy."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import engine_rs
from server.columns import pack_strings, unpack_strings
from tests.conftest import (
    catalog_from_rows,
    dense_by_category,
    lines_from_rows,
    policy_from_rules,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_POLICY = ROOT / "server" / "demo" / "demo_city_policy.toml"

FLAT: dict[str, Any] = {
    "deductible": {"kind": "per_visit", "by_admission_fen": [100_000]},
    "basic": {"band_basis": "fee", "bands": [{"from_fen": 0, "ratio_bp": 8000}]},
}
VISIT = engine_rs.Visit(treatment=2, date=20260601, age=40, sex=1)


def test_demo_policy_parses_and_round_trips() -> None:
    p = engine_rs.Policy.from_toml(DEMO_POLICY.read_text(encoding="utf-8"))
    assert p.id == "demo-city" and len(p) == 5
    again = engine_rs.Policy.from_json(p.to_json())
    assert again.to_json() == p.to_json()
    sel = engine_rs.Selection(treatment=2, date=20260310, region=440100, insutype=390)
    idx = p.select(sel)
    assert idx is not None and p.rule_id(idx) == "res-inpatient"
    assert p.rule_accumulator(idx) == "inpatient"
    assert p.select(engine_rs.Selection(treatment=2, date=20270101, region=440100)) is None


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (("ratio_bp = 8500", "ratio_bp = 18500"), "rules[0].basic.bands[0].ratio_bp"),
        (("ratio_bp = 8500", 'ratio_bp = "85%"'), "rules[0].basic.bands[0].ratio_bp"),
        (('hosp_lvs = ["3"]', 'hosp_lvs = ["III"]'), "rules[0].hosp_lvs[0]"),
        (('effective_to = "2026-12-31"', 'effective_to = "2025-12-31"'), "rules[0].effective_to"),
        (("annual_max_fen = 200000", "annual_max_fen = -1"), "rules[0].deductible.annual_max_fen"),
        (('covers = "in_scope"', 'covers = "everything"'), "rules[0].account.covers"),
        (("line_tolerance_fen = 1 ", "line_tolarence_fen = 1 "), "preprocess.line_tolarence_fen"),
    ],
)
def test_bad_policy_names_the_field(edit: tuple[str, str], path: str) -> None:
    text = DEMO_POLICY.read_text(encoding="utf-8")
    assert edit[0] in text
    with pytest.raises(engine_rs.PolicyError) as e:
        engine_rs.Policy.from_toml(text.replace(edit[0], edit[1], 1))
    assert e.value.path == path
    assert e.value.reason


def test_policy_that_is_not_toml() -> None:
    with pytest.raises(engine_rs.PolicyError) as e:
        engine_rs.Policy.from_toml("schema = [")
    assert e.value.path == "$"


def test_catalog_lookup_mapping_and_items() -> None:
    cat = catalog_from_rows(
        [{"code": "X1", "price_cap": 500}, {"code": "X2", "chrgitm_lv": 2}],
        mappings={"H1": "X1", "H2": "GONE"},
    )
    assert len(cat) == 2 and cat.mapping_count == 2 and cat.stale_mappings == 1
    assert cat.lookup("X2") == 1 and cat.lookup("X9") is None
    assert cat.map_hosp_code("H1") == 0
    assert cat.map_hosp_code("H2") is None
    assert cat.item(0)["price_cap"] == 500
    assert cat.codes(np.array([1, -1, 0], dtype=np.int64)) == ["X2", "", "X1"]


def test_catalog_rejects_bad_columns() -> None:
    good: engine_rs.CatalogItems = {
        "code": pack_strings(["A", "B"]),
        "chrgitm_lv": np.array([1, 2], dtype=np.uint8),
        "fee_category": np.array([9, 9], dtype=np.uint8),
    }
    engine_rs.Catalog.load(good)
    with pytest.raises(engine_rs.ColumnError) as e:
        engine_rs.Catalog.load({**good, "code": pack_strings(["A", "A"])})
    assert e.value.field == "code"
    with pytest.raises(engine_rs.ColumnError) as e:
        engine_rs.Catalog.load({**good, "chrgitm_lv": np.array([1, 7], dtype=np.uint8)})
    assert e.value.field == "chrgitm_lv"
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.Catalog.load(
            cast(Any, {**good, "chrgitm_lv": np.array([1, 2], dtype=np.float64)})
        )
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.Catalog.load({**good, "fee_category": np.array([9], dtype=np.uint8)})
    bad_utf8 = (np.frombuffer(b"\xff\xfe", dtype=np.uint8), np.array([0, 1, 2], dtype=np.int64))
    with pytest.raises(engine_rs.ColumnError) as e:
        engine_rs.Catalog.load({**good, "code": bad_utf8})
    assert "UTF-8" in str(e.value)
    bad_offsets = (pack_strings(["AB"])[0], np.array([0, 2, 1], dtype=np.int64))
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.Catalog.load({**good, "code": bad_offsets})
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.Catalog.load(cast(Any, {"chrgitm_lv": good["chrgitm_lv"]}))


def test_pack_strings_round_trip() -> None:
    vals = ["阿莫西林胶囊", "", "0.25g×24粒"]
    assert unpack_strings(pack_strings(vals)) == vals


def _preprocess(rows: list[dict[str, Any]]) -> tuple[engine_rs.LineResults, engine_rs.Summary]:
    cat = catalog_from_rows([{"code": "A1"}, {"code": "B1", "chrgitm_lv": 2}])
    return engine_rs.preprocess(cat, policy_from_rules(FLAT), lines_from_rows(rows), VISIT)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"medins_list_codg": "H-A1", "cnt": -10_000, "pric": 100, "amount": -100}, "cnt"),
        ({"medins_list_codg": "H-A1", "cnt": 10_000, "pric": -100, "amount": 100}, "pric"),
        (
            {"medins_list_codg": "H-A1", "cnt": 10_000, "pric": 100, "amount": 102},
            "det_item_fee_sumamt",
        ),
        ({"med_list_codg": "NOPE", "cnt": 10_000, "pric": 100, "amount": 100}, "med_list_codg"),
        (
            {
                "medins_list_codg": "H-A1",
                "cnt": 10_000,
                "pric": 100,
                "amount": 100,
                "hosp_appr_flag": 5,
            },
            "hosp_appr_flag",
        ),
    ],
)
def test_bad_line_names_line_and_field(row: dict[str, Any], field: str) -> None:
    ok = {"medins_list_codg": "H-A1", "cnt": 10_000, "pric": 100, "amount": 100}
    with pytest.raises(engine_rs.LineError) as e:
        _preprocess([ok, row])
    assert (e.value.line, e.value.field) == (1, field)


def test_overflowing_visit_total_is_a_line_error() -> None:
    big = 2**62
    row = {"med_list_codg": "A1", "cnt": 10_000, "pric": big, "amount": big}
    with pytest.raises(engine_rs.LineError) as e:
        _preprocess([row, row])
    assert e.value.line == 1
    # prices whose product with the quantity exceeds i64 are checked in 128 bits, not wrapped
    with pytest.raises(engine_rs.LineError):
        _preprocess([{"med_list_codg": "A1", "cnt": 2**62, "pric": 2**62, "amount": 1}])


def test_malformed_line_columns() -> None:
    cols = lines_from_rows(
        [{"medins_list_codg": "H-A1", "cnt": 10_000, "pric": 100, "amount": 100}]
    )
    cat = catalog_from_rows([{"code": "A1"}])
    policy = policy_from_rules(FLAT)
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.preprocess(cat, policy, {**cols, "cnt": np.array([1, 2], dtype=np.int64)}, VISIT)
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.preprocess(cat, policy, {**cols, "cnt": np.array([1], dtype=np.int32)}, VISIT)
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.preprocess(cat, policy, cast(Any, {**cols, "medins_list_codg": ("x", 1)}), VISIT)
    missing = {k: v for k, v in cols.items() if k != "pric"}
    with pytest.raises(engine_rs.ColumnError):
        engine_rs.preprocess(cat, policy, cast(Any, missing), VISIT)


def test_split_input_errors() -> None:
    policy = policy_from_rules(FLAT)
    sel = engine_rs.Selection(treatment=2, date=20260601)
    with pytest.raises(engine_rs.InputError) as e:
        engine_rs.split(
            policy,
            engine_rs.Summary(medfee_sumamt=100, inscp_scp_amt=99),
            sel,
            engine_rs.Person(),
            engine_rs.Accumulators(),
        )
    assert e.value.field == "medfee_sumamt"
    with pytest.raises(engine_rs.InputError) as e:
        engine_rs.split(
            policy,
            engine_rs.Summary(medfee_sumamt=100, inscp_scp_amt=100),
            sel,
            engine_rs.Person(),
            engine_rs.Accumulators(hifp_paid=-1),
        )
    assert e.value.field == "hifp_paid"
    with pytest.raises(engine_rs.InputError):
        engine_rs.split(
            policy,
            engine_rs.Summary(medfee_sumamt=100, inscp_scp_amt=100),
            sel,
            engine_rs.Person(),
            engine_rs.Accumulators(dedc_paid=2**63 - 1),
        )
    restricted = policy_from_rules({**FLAT, "insutypes": ["390"]})
    with pytest.raises(engine_rs.NoRuleError):
        engine_rs.split(
            restricted,
            engine_rs.Summary(medfee_sumamt=100, inscp_scp_amt=100),
            engine_rs.Selection(treatment=2, date=20260601, insutype=310),
            engine_rs.Person(),
            engine_rs.Accumulators(),
        )


def test_restrictions_and_flags() -> None:
    cat = catalog_from_rows(
        [
            {"code": "INP", "inpatient_only": True},
            {"code": "F", "sex": 2},
            {"code": "KID", "age_max": 14},
            {"code": "DX", "diagnoses": "K25,K26"},
            {"code": "OLD", "valid_to": 20251231},
            {"code": "OK"},
        ]
    )
    rows = [
        {"medins_list_codg": f"H-{c}", "cnt": 10_000, "pric": 100, "amount": 100}
        for c in ("INP", "F", "KID", "DX", "OLD", "OK")
    ]
    rows.append(
        {"medins_list_codg": "H-DX", "cnt": 10_000, "pric": 100, "amount": 100, "hosp_appr_flag": 1}
    )
    rows.append(
        {"medins_list_codg": "H-OK", "cnt": 10_000, "pric": 100, "amount": 100, "hosp_appr_flag": 2}
    )
    visit = engine_rs.Visit(treatment=1, date=20260601, sex=1, age=40, diagnoses=["J18.9"])
    res, s = engine_rs.preprocess(cat, policy_from_rules(FLAT), lines_from_rows(rows), visit)
    assert list(res.flags) == [4, 8, 16, 32, 64, 0, 1024, 128]
    assert list(res.fulamt_ownpay_amt) == [100, 100, 100, 100, 100, 0, 0, 100]
    assert s.inscp_scp_amt == 200
    visit2 = engine_rs.Visit(treatment=2, date=20260601, sex=2, age=10, diagnoses=["K25.001"])
    res2, _ = engine_rs.preprocess(cat, policy_from_rules(FLAT), lines_from_rows(rows[:4]), visit2)
    assert list(res2.flags) == [0, 0, 0, 0]


def test_selfpay_ratio_by_person_type() -> None:
    cat = catalog_from_rows(
        [{"code": "B", "chrgitm_lv": 2, "selfpay_prop_bp": [1000, 500, 2000]}],
        selfpay_psn_types=[12, 13],
    )
    rows = [{"med_list_codg": "B", "cnt": 10_000, "pric": 10_000, "amount": 10_000}]
    pre = {}
    for psn in (11, 12, 13):
        _, s = engine_rs.preprocess(
            cat,
            policy_from_rules(FLAT),
            lines_from_rows(rows),
            engine_rs.Visit(treatment=2, date=20260601, psn_type=psn),
        )
        pre[psn] = s.preselfpay_amt
    assert pre == {11: 1000, 12: 500, 13: 2000}


def test_batches_agree_with_single_calls() -> None:
    cat = catalog_from_rows(
        [
            {"code": "A1"},
            {"code": "B1", "chrgitm_lv": 2, "selfpay_prop_bp": [1500], "price_cap": 900},
        ]
    )
    policy = engine_rs.Policy.from_toml(DEMO_POLICY.read_text(encoding="utf-8"))
    rng = np.random.default_rng(7)
    n_visits, n_lines = 40, 400
    visit_of = np.sort(rng.integers(0, n_visits, n_lines))
    codes = rng.choice(["H-A1", "H-B1", "H-ZZ"], n_lines)
    cnt = rng.integers(1, 5, n_lines) * 10_000
    pric = rng.integers(100, 2000, n_lines)
    lines: engine_rs.BatchFeeLines = {
        **lines_from_rows(
            [
                {
                    "medins_list_codg": str(c),
                    "cnt": int(q),
                    "pric": int(p),
                    "amount": int(q * p // 10_000),
                }
                for c, q, p in zip(codes, cnt, pric, strict=True)
            ]
        ),
        "visit": visit_of.astype(np.int64),
    }
    ages = rng.integers(0, 100, n_visits)
    visits: engine_rs.VisitColumns = {
        "treatment": np.full(n_visits, 2, dtype=np.int64),
        "date": np.full(n_visits, 20260601, dtype=np.int64),
        "age": ages.astype(np.int64),
    }
    _, sums = engine_rs.preprocess_batch(cat, policy, lines, visits)
    assert sums["category_sums"].shape == (len(sums["category_visit"]), 5)
    for v in range(n_visits):
        mask = visit_of == v
        sub = [str(c) for c in codes[mask]]
        one: engine_rs.FeeLines = {
            "medins_list_codg": pack_strings(sub),
            "med_list_codg": pack_strings([""] * len(sub)),
            "cnt": lines["cnt"][mask],
            "pric": lines["pric"][mask],
            "det_item_fee_sumamt": lines["det_item_fee_sumamt"][mask],
            "hosp_appr_flag": lines["hosp_appr_flag"][mask],
            "fee_date": lines["fee_date"][mask],
        }
        _, s = engine_rs.preprocess(
            cat, policy, one, engine_rs.Visit(treatment=2, date=20260601, age=int(ages[v]))
        )
        assert s.medfee_sumamt == sums["medfee_sumamt"][v]
        assert s.inscp_scp_amt == sums["inscp_scp_amt"][v]
        assert s.by_category == dense_by_category(sums, v)

    cols: dict[str, Any] = {
        k: sums[k]
        for k in (
            "medfee_sumamt",
            "fulamt_ownpay_amt",
            "overlmt_amt",
            "preselfpay_amt",
            "inscp_scp_amt",
        )
    }
    cols.update(
        region=np.full(n_visits, 440100, dtype=np.int64),
        insutype=rng.choice([310, 390], n_visits).astype(np.int64),
        treatment=np.full(n_visits, 2, dtype=np.int64),
        hosp_lv=rng.integers(1, 4, n_visits).astype(np.int64),
        date=np.full(n_visits, 20260601, dtype=np.int64),
        age=ages.astype(np.int64),
        retired=ages >= 60,
        acct_used=np.ones(n_visits, dtype=bool),
        acct_balance=rng.integers(0, 100_000, n_visits).astype(np.int64),
        dedc_paid=rng.integers(0, 100_000, n_visits).astype(np.int64),
    )
    out = engine_rs.split_batch(policy, cast("engine_rs.SettlementColumns", cols))
    for i in range(n_visits):
        r = engine_rs.split(
            policy,
            engine_rs.Summary(
                **{
                    k: int(cols[k][i])
                    for k in (
                        "medfee_sumamt",
                        "fulamt_ownpay_amt",
                        "overlmt_amt",
                        "preselfpay_amt",
                        "inscp_scp_amt",
                    )
                }
            ),
            engine_rs.Selection(
                treatment=2,
                date=20260601,
                region=440100,
                insutype=int(cols["insutype"][i]),
                hosp_lv=int(cols["hosp_lv"][i]),
            ),
            engine_rs.Person(
                age=int(ages[i]),
                retired=bool(ages[i] >= 60),
                acct_used=True,
                acct_balance=int(cols["acct_balance"][i]),
            ),
            engine_rs.Accumulators(dedc_paid=int(cols["dedc_paid"][i])),
        )
        for f in (
            "act_pay_dedc",
            "hifp_pay",
            "critical_pay",
            "fund_pay_sumamt",
            "acct_pay",
            "psn_cash_pay",
            "balc",
        ):
            assert getattr(r, f) == out[f][i], f
        assert r.accumulators.to_dict() == {
            k[4:]: int(out[k][i]) for k in out if k.startswith("new_")
        }
        assert r.legs[0].setl_proc_info.startswith("规则 ")


def test_split_batch_names_the_bad_row() -> None:
    policy = policy_from_rules(FLAT)
    cols: engine_rs.SettlementColumns = {
        "medfee_sumamt": np.array([100, 100], dtype=np.int64),
        "inscp_scp_amt": np.array([100, 90], dtype=np.int64),
        "treatment": np.array([2, 2], dtype=np.int64),
        "date": np.array([20260601, 20260601], dtype=np.int64),
    }
    with pytest.raises(engine_rs.InputError) as e:
        engine_rs.split_batch(policy, cols)
    assert (e.value.row, e.value.field) == (1, "medfee_sumamt")


def test_catalog_swap_while_calls_are_in_flight() -> None:
    """Readers take a snapshot per call: every result is wholly old or wholly new."""
    v1 = catalog_from_rows([{"code": "A1", "chrgitm_lv": 1}])
    v2 = catalog_from_rows([{"code": "A1", "chrgitm_lv": 3}])
    slot = engine_rs.CatalogSlot(v1)
    policy = policy_from_rules(FLAT)
    n = 5_000
    lines = lines_from_rows(
        [{"medins_list_codg": "H-A1", "cnt": 10_000, "pric": 100, "amount": 100}] * n
    )
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(60):
                _, s = engine_rs.preprocess(slot.current(), policy, lines, VISIT)
                seen.append(s.inscp_scp_amt)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        old = slot.swap(v2 if i % 2 == 0 else v1)
        assert len(old) == 1
    for t in threads:
        t.join()
    assert not errors
    assert set(seen) <= {100 * n, 0}
    assert len(seen) == 180


def test_policy_json_is_canonical() -> None:
    p = policy_from_rules(FLAT)
    doc = json.loads(p.to_json())
    assert doc["rules"][0]["accumulator"] == "default"
    assert doc["rounding"] == {"mode": "half_up", "fund_legs": "per_leg"}
    assert doc["rules"][0]["effective_to"] == "9999-12-31"
