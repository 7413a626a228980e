"""Every published worked example (tests/data/worked_examples.json) through the Rust engine
and the Python twin: both must reproduce the published figures to the fen."""

from __future__ import annotations

import json
from typing import Any

import pytest

import engine_rs
from tests.conftest import DATA, catalog_from_rows, lines_from_rows, policy_from_rules
from tests.engine import twin

CASES: list[dict[str, Any]] = json.loads(
    (DATA / "worked_examples.json").read_text(encoding="utf-8")
)["cases"]


def _split(case: dict[str, Any]) -> tuple[engine_rs.SplitResult, twin.Split]:
    policy = policy_from_rules(case["rule"])
    s = case["summary"]
    sel = case["selection"]
    acc = case["accumulators"]
    rust = engine_rs.split(
        policy,
        engine_rs.Summary(**s),
        engine_rs.Selection(**sel),
        engine_rs.Person(age=45),
        engine_rs.Accumulators(**acc),
    )
    full_acc = {f: acc.get(f, 0) for f in twin.ACC_FIELDS}
    oracle = twin.split(
        json.loads(policy.to_json()),
        s,
        twin.Selection(region=0, insutype=0, psn_type=0, hosp_lv=0, **sel),
        twin.Person(age=45),
        full_acc,
    )
    return rust, oracle


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_worked_example(case: dict[str, Any]) -> None:
    rust, oracle = _split(case)
    exp = case["expected"]
    for side in (rust, oracle):
        for field in ("hifp_pay", "act_pay_dedc", "critical_pay", "psn_part_amt"):
            if field in exp:
                assert getattr(side, field) == exp[field], (field, side)
        if "band_3_paid" in exp:
            assert side.hifp_pay - exp["bands_1_2_paid"] == exp["band_3_paid"]
        assert (
            side.fund_pay_sumamt + side.acct_pay + side.psn_cash_pay
            == (case["summary"]["medfee_sumamt"])
        )
    assert rust.accumulators.to_dict() == oracle.acc


def test_selfpay_and_preselfpay_from_fee_lines() -> None:
    """The 8400-yuan case built up from fee lines: 1000 self-paid (class C), a class-B drug
    of 5000 with a 10 % pre-self-pay share (500), and 2400 of class A."""
    cat = catalog_from_rows(
        [
            {"code": "C1", "chrgitm_lv": 3},
            {"code": "B1", "chrgitm_lv": 2, "selfpay_prop_bp": [1000]},
            {"code": "A1", "chrgitm_lv": 1},
        ]
    )
    policy = policy_from_rules(
        {
            "deductible": {"kind": "per_visit", "by_admission_fen": [40000]},
            "basic": {"band_basis": "fee", "bands": [{"from_fen": 0, "ratio_bp": 9000}]},
        }
    )
    lines = lines_from_rows(
        [
            {"medins_list_codg": "H-C1", "cnt": 10_000, "pric": 100_000, "amount": 100_000},
            {"medins_list_codg": "H-B1", "cnt": 50_000, "pric": 100_000, "amount": 500_000},
            {"medins_list_codg": "H-A1", "cnt": 20_000, "pric": 120_000, "amount": 240_000},
        ]
    )
    _res, summary = engine_rs.preprocess(
        cat, policy, lines, engine_rs.Visit(treatment=2, date=20260601, age=45)
    )
    assert (summary.fulamt_ownpay_amt, summary.preselfpay_amt) == (100_000, 50_000)
    assert summary.inscp_scp_amt == 690_000
    split = engine_rs.split(
        policy,
        summary,
        engine_rs.Selection(treatment=2, date=20260601),
        engine_rs.Person(age=45),
        engine_rs.Accumulators(),
    )
    assert (split.hifp_pay, split.psn_part_amt) == (585_000, 255_000)


def test_material_preselfpay_from_a_fee_line() -> None:
    """Fujian: a 3000-yuan material with a 20 % pre-self-pay share, deductible already met."""
    cat = catalog_from_rows(
        [{"code": "M1", "chrgitm_lv": 2, "fee_category": 8, "selfpay_prop_bp": [2000]}]
    )
    case = next(c for c in CASES if c["id"] == "material-preselfpay-fujian")
    policy = policy_from_rules(case["rule"])
    lines = lines_from_rows(
        [{"med_list_codg": "M1", "cnt": 10_000, "pric": 300_000, "amount": 300_000}]
    )
    _, summary = engine_rs.preprocess(
        cat, policy, lines, engine_rs.Visit(treatment=2, date=20260601)
    )
    assert (summary.preselfpay_amt, summary.inscp_scp_amt) == (60_000, 240_000)
    assert summary.by_category[8] == [300_000, 0, 0, 60_000, 240_000]
    split = engine_rs.split(
        policy,
        summary,
        engine_rs.Selection(treatment=2, date=20260601),
        engine_rs.Person(),
        engine_rs.Accumulators(dedc_paid=120_000, inpatient_count=1),
    )
    # fund 1680, co-insurance 720, personal 600 + 720 = 1320
    assert (split.hifp_pay, split.psn_part_amt) == (168_000, 132_000)
