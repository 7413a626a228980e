"""pytest-benchmark suites for the engine's entry points (`make bench`, or
`pytest bench --benchmark-enable`). Sizes are moderate so a run takes seconds; the full-size
figures come from `python -m bench.bench_engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engine_rs
from bench.bench_engine import split_columns
from server.columns import numbered_codes, take_strings

POLICY = Path(__file__).resolve().parent.parent / "server" / "demo" / "demo_city_policy.toml"
N_ITEMS = 100_000
N_LINES = 200_000


@pytest.fixture(scope="module")
def policy() -> engine_rs.Policy:
    return engine_rs.Policy.from_toml(POLICY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def columns() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    items = {
        "code": numbered_codes("XA01CAA0", N_ITEMS, 12),
        "chrgitm_lv": rng.integers(1, 4, N_ITEMS).astype(np.uint8),
        "fee_category": rng.integers(1, 15, N_ITEMS).astype(np.uint8),
        "price_cap": rng.integers(0, 5_000, N_ITEMS).astype(np.int64),
        "selfpay_prop_bp": rng.integers(0, 2_000, (N_ITEMS, 3)).astype(np.int32),
    }
    hosp = numbered_codes("H", N_ITEMS)
    return {"items": items, "mappings": {"hosp_code": hosp, "ins_code": items["code"]}}


@pytest.fixture(scope="module")
def catalog(columns: dict[str, Any]) -> engine_rs.Catalog:
    return engine_rs.Catalog.load(columns["items"], columns["mappings"], selfpay_psn_types=[11, 12])


def test_catalog_load_100k(benchmark: Any, columns: dict[str, Any]) -> None:
    cat = benchmark(
        engine_rs.Catalog.load,
        columns["items"],
        columns["mappings"],
        selfpay_psn_types=[11, 12],
    )
    assert len(cat) == N_ITEMS


@pytest.mark.parametrize("lines_per_visit", [10, 1_000])
def test_preprocess_batch(
    benchmark: Any,
    catalog: engine_rs.Catalog,
    policy: engine_rs.Policy,
    columns: dict[str, Any],
    lines_per_visit: int,
) -> None:
    rng = np.random.default_rng(2)
    pick = rng.integers(0, N_ITEMS, N_LINES)
    pric = rng.integers(100, 6_000, N_LINES).astype(np.int64)
    cnt = rng.integers(1, 20, N_LINES).astype(np.int64) * 10_000
    n_visits = N_LINES // lines_per_visit
    lines = {
        "medins_list_codg": take_strings(columns["mappings"]["hosp_code"], pick),
        "cnt": cnt,
        "pric": pric,
        "det_item_fee_sumamt": pric * cnt // 10_000,
        "visit": np.sort(rng.integers(0, n_visits, N_LINES)).astype(np.int64),
    }
    visits = {
        "treatment": np.full(n_visits, 2, dtype=np.int64),
        "date": np.full(n_visits, 20260601, dtype=np.int64),
    }
    res, sums = benchmark(engine_rs.preprocess_batch, catalog, policy, lines, visits)
    assert len(res) == N_LINES
    assert int(sums["line_count"].sum()) == N_LINES


def test_split_batch(benchmark: Any, policy: engine_rs.Policy) -> None:
    cols = split_columns(200_000, 3)
    out = benchmark(engine_rs.split_batch, policy, cols)
    assert np.array_equal(
        out["fund_pay_sumamt"] + out["acct_pay"] + out["psn_cash_pay"], cols["medfee_sumamt"]
    )


def test_split_single(benchmark: Any, policy: engine_rs.Policy) -> None:
    summary = engine_rs.Summary(
        medfee_sumamt=1_234_567, fulamt_ownpay_amt=34_567, inscp_scp_amt=1_200_000
    )
    sel = engine_rs.Selection(treatment=2, date=20260601, region=440100, insutype=310, hosp_lv=3)
    person = engine_rs.Person(age=70, retired=True, acct_used=True, acct_balance=10_000)
    acc = engine_rs.Accumulators()
    r = benchmark(engine_rs.split, policy, summary, sel, person, acc)
    assert r.fund_pay_sumamt + r.acct_pay + r.psn_cash_pay == 1_234_567
