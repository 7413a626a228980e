"""Property tests: the Rust engine (`engine_rs`) against the Python twin (`tests/engine/twin.py`)
on random catalogs, fee lines, policies, persons and accumulators, plus the invariants the
engine guarantees (docs/policy.md) and typed errors (never a panic) on bad or extreme input.

Example counts are sized for CI (the whole module runs in well under a minute on two cores);
set MEDSETTLE_PROPERTY_SCALE=10 (or any factor) for a longer local run.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import engine_rs
from server.columns import StrColumn, pack_strings
from tests.conftest import dense_by_category
from tests.engine import strategies as S
from tests.engine import twin
from tests.engine.strategies import (
    ACC_FIELDS,
    I64_MAX,
    MODES,
    CatalogSpec,
    PersonIn,
    PreCase,
    SelectionIn,
    SplitCase,
    SplitScenario,
    SummaryIn,
)

SCALE = float(os.environ.get("MEDSETTLE_PROPERTY_SCALE", "1"))


def props(n: int) -> settings:
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


LINE_FIELDS = (
    "item",
    "chrgitm_lv",
    "fee_category",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "flags",
)
TOTALS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")
SPLIT_FIELDS = (
    "act_pay_dedc",
    "hifp_pay",
    "critical_pay",
    "cvlserv_pay",
    "maf_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "balc",
)
SELF_PAY = (
    twin.CLASS_C
    | twin.RESTRICT_INPATIENT
    | twin.RESTRICT_SEX
    | twin.RESTRICT_AGE
    | twin.RESTRICT_DIAGNOSIS
    | twin.OUTSIDE_VALIDITY
    | twin.HOSP_SELFPAY
)


T = TypeVar("T")


def never_panics(call: Callable[[], T]) -> T | engine_rs.EngineError:
    """Runs `call`; returns its result, or the EngineError it raised. Anything else (a Rust
    panic surfacing as PanicException, OverflowError, SystemError, ...) fails the test."""
    try:
        return call()
    except engine_rs.EngineError as e:
        return e
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # PanicException derives from BaseException
        pytest.fail(f"not an EngineError: {type(e).__module__}.{type(e).__name__}: {e}")


# ---------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------


def twin_preprocess(
    spec: CatalogSpec,
    lines: list[twin.Line],
    visit: twin.VisitContext,
    tolerance: int,
    mode: str,
) -> tuple[list[twin.LineResult], twin.Summary]:
    return twin.preprocess(
        spec.items, spec.selfpay_psn_types, spec.mappings, lines, visit, tolerance, mode
    )


def line_table(res: engine_rs.LineResults) -> dict[str, list[int]]:
    return {f: [int(v) for v in getattr(res, f)] for f in LINE_FIELDS}


def assert_lines_equal(
    rust: engine_rs.LineResults, oracle: list[twin.LineResult], lines: list[twin.Line]
) -> None:
    got = line_table(rust)
    assert len(rust) == len(oracle)
    for f in LINE_FIELDS:
        want = [getattr(r, f) for r in oracle]
        if got[f] != want:
            k = next(i for i, (a, b) in enumerate(zip(got[f], want, strict=True)) if a != b)
            pytest.fail(f"line {k} {f}: rust {got[f][k]} twin {want[k]}; line {lines[k]}")


def assert_summary_equal(rust: engine_rs.Summary, oracle: twin.Summary, n_lines: int) -> None:
    for f in TOTALS:
        assert getattr(rust, f) == getattr(oracle, f), f
    assert rust.line_count == n_lines
    assert rust.by_category == oracle.by_category


def check_line_invariants(
    res: engine_rs.LineResults,
    summary: dict[str, Any],
    lines: list[twin.Line],
) -> None:
    t = line_table(res)
    amounts = [ln.det_item_fee_sumamt for ln in lines]
    for k, amount in enumerate(amounts):
        parts = [t[f][k] for f in TOTALS[1:]]
        assert all(p >= 0 for p in parts), (k, parts)
        assert sum(parts) == amount, (k, parts, amount)
        flags = t["flags"][k]
        assert (t["item"][k] == -1) == bool(flags & twin.UNMAPPED)
        if flags & (SELF_PAY | twin.UNMAPPED):
            assert t["fulamt_ownpay_amt"][k] == amount
        else:
            assert t["fulamt_ownpay_amt"][k] == 0
        assert bool(flags & twin.OVER_PRICE_CAP) == (t["overlmt_amt"][k] > 0)
        assert bool(flags & twin.PRESELFPAY) == (t["preselfpay_amt"][k] > 0)
        assert bool(flags & twin.CLASS_C) == (t["chrgitm_lv"][k] == 3)
        if t["item"][k] == -1:
            assert t["chrgitm_lv"][k] == 0 and t["fee_category"][k] == 0
        else:
            assert 1 <= t["fee_category"][k] <= 14
    # the summary is the column sums, and the categories add up to it
    assert summary["medfee_sumamt"] == sum(amounts)
    for f in TOTALS[1:]:
        assert summary[f] == sum(t[f]), f
    by_cat = summary["by_category"]
    assert len(by_cat) == twin.N_CATEGORIES
    for j, f in enumerate(TOTALS):
        assert sum(row[j] for row in by_cat) == summary[f], f
    for row in by_cat:
        assert row[0] == sum(row[1:])
    unmapped = sum(a for a, it in zip(amounts, t["item"], strict=True) if it == -1)
    assert by_cat[0][0] == unmapped


def summary_dict(s: engine_rs.Summary) -> dict[str, Any]:
    d: dict[str, Any] = {f: getattr(s, f) for f in TOTALS}
    d["by_category"] = s.by_category
    return d


@props(250)
@given(case=S.pre_cases(max_visits=1))
def test_preprocess_matches_twin(case: PreCase) -> None:
    """Every rounding mode: Rust's line results and sums equal the twin's, exactly."""
    cat = S.load_catalog(case.catalog)
    assert len(cat) == len(case.catalog.items)
    assert cat.stale_mappings == sum(
        c not in case.catalog.by_code for c in case.catalog.mappings.values()
    )
    visit = case.visits[0]
    cols = S.line_columns(case.lines)
    for mode in MODES:
        policy = S.preprocess_policy(mode, case.tolerance)
        res, summary = engine_rs.preprocess(cat, policy, cols, S.rust_visit(visit))
        oracle, osum = twin_preprocess(case.catalog, case.lines, visit, case.tolerance, mode)
        assert_lines_equal(res, oracle, case.lines)
        assert_summary_equal(summary, osum, len(case.lines))
        check_line_invariants(res, summary_dict(summary), case.lines)
    # the same call again gives the same answer
    res2, summary2 = engine_rs.preprocess(cat, policy, cols, S.rust_visit(visit))
    assert line_table(res2) == line_table(res)
    assert summary_dict(summary2) == summary_dict(summary)


@props(120)
@given(case=S.pre_cases(max_items=20, max_lines=40, max_visits=5), mode=st.sampled_from(MODES))
def test_preprocess_batch_equals_single_visits(case: PreCase, mode: str) -> None:
    cat = S.load_catalog(case.catalog)
    policy = S.preprocess_policy(mode, case.tolerance)
    res, sums = engine_rs.preprocess_batch(
        cat, policy, S.line_columns(case.lines, case.visit_of), S.visit_columns(case.visits)
    )
    n_visits = len(case.visits)
    assert sums["category_sums"].shape == (len(sums["category"]), 5)
    keys = list(zip(sums["category_visit"].tolist(), sums["category"].tolist(), strict=True))
    assert keys == sorted(set(keys)), "one row per visit and category, in order"
    assert all(0 <= v < n_visits for v, _ in keys)
    batch = line_table(res)
    for v, visit in enumerate(case.visits):
        mine = [k for k, w in enumerate(case.visit_of) if w == v]
        lines = case.lines_of(v)
        one, s = engine_rs.preprocess(cat, policy, S.line_columns(lines), S.rust_visit(visit))
        single = line_table(one)
        for f in LINE_FIELDS:
            assert [batch[f][k] for k in mine] == single[f], (v, f)
        for f in (*TOTALS, "line_count"):
            assert int(sums[f][v]) == getattr(s, f), (v, f)
        assert dense_by_category(sums, v) == s.by_category
        _, osum = twin_preprocess(case.catalog, lines, visit, case.tolerance, mode)
        assert_summary_equal(s, osum, len(lines))


# --- bad lines ---------------------------------------------------------------------------

CORRUPTIONS = ("cnt", "pric", "amount", "off", "code", "appr")


def corrupt(ln: twin.Line, kind: str, tol: int, k: int) -> twin.Line:
    """`ln` made invalid in one way (k picks a variant)."""
    if kind == "cnt":
        return replace(ln, cnt=-1 - k)
    if kind == "pric":
        return replace(ln, pric=-1 - k)
    if kind == "amount":
        return replace(ln, det_item_fee_sumamt=-1 - k)
    if kind == "off":
        exact = ln.pric * ln.cnt
        return replace(ln, det_item_fee_sumamt=-(-exact // S.CNT) + tol + 1 + k)
    if kind == "code":
        return replace(ln, med_list_codg=f"UNKNOWN{k}")
    return replace(ln, hosp_appr_flag=(3, -1, 255, 2**40)[k % 4])


@props(200)
@given(
    case=S.pre_cases(max_items=10, max_lines=20),
    bad=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(CORRUPTIONS), st.integers(0, 3)),
        min_size=1,
        max_size=3,
    ),
)
def test_bad_lines_name_the_first_bad_line_and_field(
    case: PreCase, bad: list[tuple[int, str, int]]
) -> None:
    """Negative cnt/pric/amount, an amount beyond the tolerance, an unknown insurance code and
    a bad approval flag are LineErrors naming the same line and field as the twin."""
    lines = list(case.lines) or [twin.Line("NOPE", S.CNT, 100, 100)]
    for pos, kind, k in bad:
        i = pos % len(lines)
        lines[i] = corrupt(lines[i], kind, case.tolerance, k)
    cat = S.load_catalog(case.catalog)
    policy = S.preprocess_policy("half_up", case.tolerance)
    with pytest.raises(twin.TwinError) as want:
        twin_preprocess(case.catalog, lines, case.visits[0], case.tolerance, "half_up")
    with pytest.raises(engine_rs.LineError) as got:
        engine_rs.preprocess(cat, policy, S.line_columns(lines), S.rust_visit(case.visits[0]))
    assert (got.value.line, got.value.field) == (want.value.line, want.value.field)
    assert got.value.reason


def _overflow_lines(kinds: list[tuple[str, int]]) -> list[twin.Line]:
    out = []
    for kind, v in kinds:
        if kind == "big":
            out.append(twin.Line("", S.CNT, v, v, med_list_codg="A"))
        elif kind == "ok":
            out.append(twin.Line("", S.CNT, v % 10**6, v % 10**6, med_list_codg="A"))
        else:
            out.append(corrupt(twin.Line("", S.CNT, 100, 100, med_list_codg="A"), kind, 0, v))
    return out


@props(200)
@given(
    kinds=st.lists(
        st.one_of(
            st.tuples(st.just("big"), st.integers(2**61, I64_MAX)),
            st.tuples(st.just("ok"), st.integers(0, 10**6)),
            st.tuples(st.sampled_from(CORRUPTIONS[:-2]), st.integers(0, 3)),
        ),
        min_size=1,
        max_size=8,
    )
)
@example(kinds=[("big", 2**62), ("big", 2**62), ("cnt", 0)])
def test_overflowing_visit_total_is_reported_at_the_first_bad_line(
    kinds: list[tuple[str, int]],
) -> None:
    """Lines whose running total overflows i64 mixed with other bad lines: the error names
    the first bad line (the line at which the total overflows, or an earlier invalid line),
    as the twin and the Rust docstring ("the first bad line fails the whole batch") say."""
    spec = CatalogSpec([twin.Item("A", 1, 9)], [""], {}, [])
    lines = _overflow_lines(kinds)
    visit = twin.VisitContext(treatment=2, psn_type=0, sex=1, age=40, date=20260601)
    try:
        oracle = twin_preprocess(spec, lines, visit, 0, "half_up")
    except twin.TwinError as e:
        want: tuple[int, str] | None = (e.line, e.field)
    else:
        want = None
    got = never_panics(
        lambda: engine_rs.preprocess(
            S.load_catalog(spec),
            S.preprocess_policy("half_up", 0),
            S.line_columns(lines),
            S.rust_visit(visit),
        )
    )
    if want is None:
        assert not isinstance(got, Exception), got
        assert_summary_equal(got[1], oracle[1], len(lines))
    else:
        assert isinstance(got, engine_rs.LineError), got
        assert (got.line, got.field) == want


@props(150)
@given(
    spec=S.catalog_specs(max_items=5),
    rows=st.lists(
        st.tuples(S.i64s(), S.i64s(), S.i64s(), S.i64s(), S.i64s(), st.booleans()),
        max_size=6,
    ),
    tolerance=st.one_of(st.integers(0, 3), S.nonneg_extremes()),
    visit=S.visit_contexts(psn_types=(), max_age=2**32 - 1),
)
def test_preprocess_with_int64_extremes_is_typed(
    spec: CatalogSpec,
    rows: list[tuple[int, int, int, int, int, bool]],
    tolerance: int,
    visit: twin.VisitContext,
) -> None:
    """Arbitrary int64 cnt/pric/amount/flag/date: success or an EngineError, never a panic;
    whenever the twin accepts the lines, Rust gives the same figures."""
    codes = [it.code for it in spec.items]
    lines = [
        twin.Line(
            "NOPE",
            cnt,
            pric,
            amount,
            med_list_codg=codes[abs(fd) % len(codes)] if codes and explicit else "",
            hosp_appr_flag=appr,
            fee_date=fd,
        )
        for cnt, pric, amount, appr, fd, explicit in rows
    ]
    cat = S.load_catalog(spec)
    policy = S.preprocess_policy("half_even", tolerance)
    got = never_panics(
        lambda: engine_rs.preprocess(cat, policy, S.line_columns(lines), S.rust_visit(visit))
    )
    try:
        oracle = twin_preprocess(spec, lines, visit, tolerance, "half_even")
    except twin.TwinError:
        assert isinstance(got, engine_rs.LineError), got
        return
    assert not isinstance(got, Exception), got
    assert_lines_equal(got[0], oracle[0], lines)
    assert_summary_equal(got[1], oracle[1], len(lines))
    # the batch entry point, with extreme visit indices, stays typed too
    visits = S.visit_columns([twin.VisitContext(2, 0, 1, 40, 20260601)])
    vidx = [cnt % 3 - 1 if cnt % 5 else cnt for cnt, *_ in rows]
    never_panics(
        lambda: engine_rs.preprocess_batch(cat, policy, S.line_columns(lines, vidx), visits)
    )


# --- malformed string columns -------------------------------------------------------------


def offsets_ok(data: bytes, offsets: list[int]) -> bool:
    return (
        len(offsets) >= 1
        and offsets[0] == 0
        and all(b >= a for a, b in itertools.pairwise(offsets))
        and offsets[-1] == len(data)
    )


def utf8_ok(data: bytes, offsets: list[int]) -> bool:
    try:
        data.decode("utf-8")
        return all(
            o == len(data) or (data[o] & 0xC0) != 0x80 for o in offsets if 0 <= o <= len(data)
        )
    except UnicodeDecodeError:
        return False


@st.composite
def raw_columns(draw: st.DrawFn, n: int) -> tuple[bytes, list[int]]:
    """A string column that is often, but not always, well formed for n rows."""
    values = draw(
        st.lists(st.text("AZ9阿é", max_size=3), min_size=n, max_size=n).map(
            lambda vs: [v.encode() for v in vs]
        )
    )
    data = b"".join(values)
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    how = draw(st.sampled_from(["ok", "ok", "bytes", "offsets", "len", "empty"]))
    if how == "bytes" and data:
        k = draw(st.integers(0, len(data) - 1))
        data = data[:k] + bytes([draw(st.sampled_from([0xFF, 0x80, 0xC3, 0xE9]))]) + data[k + 1 :]
    elif how == "offsets":
        k = draw(st.integers(0, len(offsets) - 1))
        offsets[k] = draw(S.i64s())
    elif how == "len":
        offsets = [*offsets, len(data)] if draw(st.booleans()) else offsets[:-1]
    elif how == "empty":
        offsets = []
    return data, offsets


def str_col(data: bytes, offsets: list[int]) -> StrColumn:
    return np.frombuffer(data, dtype=np.uint8), np.array(offsets, dtype=np.int64)


@props(200)
@given(
    spec=S.catalog_specs(max_items=6),
    target=st.sampled_from(["name", "spec", "diagnoses", "ins_code", "code_lines", "ins_lines"]),
    data=st.data(),
)
def test_malformed_string_columns_are_column_errors(
    spec: CatalogSpec, target: str, data: st.DataObject
) -> None:
    """Bad offsets (not from 0, decreasing, past the data, wrong count) and invalid UTF-8 in
    catalog columns are ColumnErrors. Fee-line code columns are compared as bytes (no UTF-8
    pass, by design): there only the offsets are checked."""
    items, maps = S.catalog_columns(spec)
    visit = engine_rs.Visit(treatment=2, date=20260601)
    policy = S.preprocess_policy("half_up", 1)
    got: object
    if target in ("name", "spec", "diagnoses", "ins_code"):
        n = len(spec.items) if target != "ins_code" else len(spec.mappings)
        raw, offs = data.draw(raw_columns(n))
        if target == "ins_code":
            maps = {**maps, "ins_code": str_col(raw, offs)}
        else:
            items = cast("engine_rs.CatalogItems", {**items, target: str_col(raw, offs)})
        well_formed = offsets_ok(raw, offs) and len(offs) == n + 1 and utf8_ok(raw, offs)
        got = never_panics(
            lambda: engine_rs.Catalog.load(
                items, maps, selfpay_psn_types=list(spec.selfpay_psn_types)
            )
        )
    else:
        lines = [twin.Line("NOPE", S.CNT, 100, 100) for _ in range(data.draw(st.integers(0, 4)))]
        cols = S.line_columns(lines)
        raw, offs = data.draw(raw_columns(len(lines)))
        key: Literal["medins_list_codg", "med_list_codg"] = (
            "medins_list_codg" if target == "code_lines" else "med_list_codg"
        )
        cols[key] = str_col(raw, offs)
        well_formed = offsets_ok(raw, offs) and len(offs) == len(lines) + 1
        cat = S.load_catalog(spec)
        got = never_panics(lambda: engine_rs.preprocess(cat, policy, cols, visit))
    if well_formed:
        assert not isinstance(got, engine_rs.ColumnError), got
    else:
        assert isinstance(got, engine_rs.ColumnError), (raw, offs, got)


@props(60)
@given(
    n=st.integers(1, 4),
    key=st.sampled_from(["treatment", "date", "psn_type", "sex", "age"]),
    value=S.i64s(),
    bad_len=st.booleans(),
)
def test_preprocess_batch_visit_columns_are_checked(
    n: int, key: Literal["treatment", "date", "psn_type", "sex", "age"], value: int, bad_len: bool
) -> None:
    spec = CatalogSpec([twin.Item("A", 1, 9)], [""], {}, [])
    visits = S.visit_columns([twin.VisitContext(2, 0, 1, 40, 20260601)] * n)
    limits = {"treatment": 3, "date": 99_991_231, "psn_type": 2**32 - 1, "sex": 2, "age": 150}
    if bad_len:
        visits[key] = np.full(n + 1, 1, dtype=np.int64)
    else:
        visits[key] = np.full(n, value, dtype=np.int64)
    lines = S.line_columns([twin.Line("", S.CNT, 5, 5, med_list_codg="A")], [0])
    got = never_panics(
        lambda: engine_rs.preprocess_batch(
            S.load_catalog(spec), S.preprocess_policy("up", 1), lines, visits
        )
    )
    low = 1 if key == "treatment" else 0
    if bad_len or not low <= value <= limits[key]:
        assert isinstance(got, engine_rs.ColumnError), got
    else:
        assert not isinstance(got, Exception), got


# ---------------------------------------------------------------------------------------
# Fund split
# ---------------------------------------------------------------------------------------


def expected_input_error(case: SplitCase) -> str | None:
    """The field `split` must refuse first, in the engine's documented check order."""
    s, p = case.summary, case.person
    for f, v in (*s.as_dict().items(), ("acct_balance", p.acct_balance)):
        if v < 0:
            return f
    if sum(getattr(s, f) for f in S.SUMMARY_PARTS) != s.medfee:
        return "medfee_sumamt"
    if p.age > 150:
        return "age"
    if p.cross_region > 2:
        return "cross_region"
    for f in ACC_FIELDS:
        if case.acc[f] < 0:
            return f
    return None


def twin_select(doc: dict[str, Any], sel: SelectionIn) -> int | None:
    try:
        return twin.select_rule(doc, sel.twin())
    except LookupError:
        return None


class Outcome:
    """The expected result of one split per the twin: a Split, or an error to expect."""

    def __init__(self, doc: dict[str, Any], case: SplitCase) -> None:
        self.split: twin.Split | None = None
        self.error: type[engine_rs.EngineError] | None = None
        self.field: str | None = None
        self.rule = twin_select(doc, case.selection)
        bad = expected_input_error(case)
        if bad is not None:
            self.error, self.field = engine_rs.InputError, bad
            return
        if self.rule is None:
            self.error = engine_rs.NoRuleError
            return
        tw = twin.split(
            doc, case.summary.as_dict(), case.selection.twin(), case.person.twin(), case.acc
        )
        over = [f for f in ACC_FIELDS if tw.acc[f] > I64_MAX]
        if over:
            self.error, self.field = engine_rs.InputError, over[0]
            return
        self.split = tw


def rust_split(policy: engine_rs.Policy, case: SplitCase) -> engine_rs.SplitResult:
    return engine_rs.split(
        policy,
        case.summary.rust(),
        case.selection.rust(),
        case.person.rust(),
        engine_rs.Accumulators(**case.acc),
    )


def check_split(
    policy: engine_rs.Policy, doc: dict[str, Any], case: SplitCase
) -> engine_rs.SplitResult | None:
    """Rust's split of `case` equals the twin's and keeps every invariant; None if refused."""
    want = Outcome(doc, case)
    assert policy.select(case.selection.rust()) == want.rule
    got = never_panics(lambda: rust_split(policy, case))
    if want.error is not None:
        assert isinstance(got, want.error), (want.error, want.field, got)
        if want.field is not None:
            assert isinstance(got, engine_rs.InputError)
            assert (got.row, got.field) == (0, want.field), got
        return None
    assert not isinstance(got, Exception), got
    tw = want.split
    assert tw is not None
    assert got.rule == tw.rule
    mismatches = {
        f: (getattr(got, f), getattr(tw, f))
        for f in SPLIT_FIELDS
        if getattr(got, f) != getattr(tw, f)
    }
    assert not mismatches, f"rust vs twin: {mismatches}"
    assert got.accumulators.to_dict() == tw.acc
    rule = doc["rules"][tw.rule]
    assert got.rule_id == rule["id"]
    assert got.accumulator_pool == rule["accumulator"]
    crit = rule.get("critical")
    assert got.critical_fund_pay_type == (crit["fund_pay_type"] if crit else "")
    check_split_invariants(rule, case, got)
    # determinism: the same inputs give the same outputs
    again = rust_split(policy, case)
    assert [getattr(again, f) for f in SPLIT_FIELDS] == [getattr(got, f) for f in SPLIT_FIELDS]
    assert again.accumulators == got.accumulators
    assert [leg.setl_proc_info for leg in again.legs] == [leg.setl_proc_info for leg in got.legs]
    return got


def check_split_invariants(rule: dict[str, Any], case: SplitCase, r: engine_rs.SplitResult) -> None:
    s, p, old = case.summary, case.person, case.acc
    new = r.accumulators.to_dict()
    vals = {f: getattr(r, f) for f in SPLIT_FIELDS}
    for f, v in vals.items():
        assert type(v) is int and v >= 0, (f, v)
    fund = r.fund_pay_sumamt
    assert fund == r.hifp_pay + r.critical_pay + r.cvlserv_pay + r.maf_pay
    assert fund + r.acct_pay + r.psn_cash_pay == s.medfee
    assert r.psn_part_amt == s.medfee - fund
    # the deductible and the basic fund come out of the in-scope amount
    assert r.act_pay_dedc + r.hifp_pay <= s.inscp_scp_amt
    crit, cs, ma, acct = (
        rule.get(k) for k in ("critical", "civil_servant", "assistance", "account")
    )
    presp_in = (crit is not None and crit["include_preselfpay"]) or (
        ma is not None and ma["include_preselfpay"] and p.assistance
    )
    reach = s.inscp_scp_amt + (s.preselfpay_amt if presp_in else 0)
    assert fund <= reach, (fund, reach)
    # legs that do not apply pay nothing
    if crit is None:
        assert r.critical_pay == 0
    if cs is None or not p.civil_servant:
        assert r.cvlserv_pay == 0
    if ma is None or not p.assistance:
        assert r.maf_pay == 0
    # account
    assert r.acct_pay <= p.acct_balance and r.acct_pay <= r.psn_part_amt
    assert r.balc == p.acct_balance - r.acct_pay
    if acct is None or not p.acct_used:
        assert r.acct_pay == 0
    elif acct["covers"] == "in_scope":
        assert r.acct_pay <= s.inscp_scp_amt + s.preselfpay_amt - fund
    # accumulators: never decrease, advance by what was paid, stay within the caps
    for f in ACC_FIELDS:
        assert new[f] >= old[f], f
    paid = {
        "dedc_paid": r.act_pay_dedc,
        "hifp_paid": r.hifp_pay,
        "critical_paid": r.critical_pay,
        "cvlserv_paid": r.cvlserv_pay,
        "maf_paid": r.maf_pay,
    }
    for f, v in paid.items():
        assert new[f] - old[f] == v, f
    for f, cap in caps(rule).items():
        if old[f] <= cap:
            assert new[f] <= cap, (f, old[f], new[f], cap)
    if case.selection.treatment == twin.TREATMENT_INPATIENT:
        n = case.selection.admission_no or old["inpatient_count"] + 1
        assert new["inpatient_count"] == max(old["inpatient_count"], n)
    else:
        assert new["inpatient_count"] == old["inpatient_count"]
    if crit is None:
        assert (new["critical_base"], new["critical_paid"]) == (
            old["critical_base"],
            old["critical_paid"],
        )
    # legs: the basic fund first, amounts adding up to the fund total
    legs = r.legs
    assert legs[0].fund_pay_type == rule["basic"]["fund_pay_type"]
    assert legs[0].amount == r.hifp_pay
    if crit is not None:
        assert (legs[1].fund_pay_type, legs[1].amount) == (crit["fund_pay_type"], r.critical_pay)
    assert sum(leg.amount for leg in legs) == fund
    assert all(leg.base >= 0 and leg.setl_proc_info for leg in legs)


def caps(rule: dict[str, Any]) -> dict[str, int]:
    """Yearly ceilings by accumulator field."""
    out: dict[str, int] = {}
    ded = rule["deductible"]
    if ded["kind"] == "annual":
        out["dedc_paid"] = ded["annual_fen"]
    elif ded.get("annual_max_fen") is not None:
        out["dedc_paid"] = ded["annual_max_fen"]
    basic = rule["basic"]
    for key, f in (("annual_cap_fen", "hifp_paid"), ("fee_ceiling_fen", "hifp_base")):
        if basic.get(key) is not None:
            out[f] = basic[key]
    for leg, f in (
        ("critical", "critical_paid"),
        ("civil_servant", "cvlserv_paid"),
        ("assistance", "maf_paid"),
    ):
        sub = rule.get(leg)
        if sub and sub.get("annual_cap_fen") is not None:
            out[f] = sub["annual_cap_fen"]
    return out


def load_policy(doc: dict[str, Any]) -> tuple[engine_rs.Policy, dict[str, Any]]:
    """The Rust policy and the canonical document the twin reads."""
    policy = engine_rs.Policy.from_json(json.dumps(doc))
    canonical = json.loads(policy.to_json())
    assert engine_rs.Policy.from_json(policy.to_json()).to_json() == policy.to_json()
    return policy, canonical


@props(300)
@given(sc=S.split_scenarios())
def test_split_matches_twin(sc: SplitScenario) -> None:
    """Random policies (every leg, band basis and convention) and settlements under every
    rounding mode x fund_legs: Rust equals the twin field by field, including the new
    accumulators, and every invariant holds."""
    for mode in MODES:
        for legs in S.LEG_MODES:
            policy, doc = load_policy(S.with_rounding(sc.doc, mode, legs))
            assert len(policy) == len(doc["rules"])
            for case in sc.cases:
                check_split(policy, doc, case)


def batch_columns(cases: list[SplitCase]) -> engine_rs.SettlementColumns:
    """The split_batch columns of `cases` (keys built from the field lists, hence the cast)."""

    def i64(values: list[int]) -> npt.NDArray[np.int64]:
        return np.array(values, dtype=np.int64).reshape(len(values))

    cols: dict[str, Any] = {}
    for f in TOTALS:
        cols[f] = i64([c.summary.as_dict()[f] for c in cases])
    for f in ("region", "insutype", "psn_type", "treatment", "hosp_lv", "date", "admission_no"):
        cols[f] = i64([getattr(c.selection, f) for c in cases])
    for f in ("age", "cross_region", "acct_balance"):
        cols[f] = i64([getattr(c.person, f) for c in cases])
    for f in ("retired", "civil_servant", "assistance", "acct_used"):
        cols[f] = np.array([getattr(c.person, f) for c in cases], dtype=np.bool_)
    for f in ACC_FIELDS:
        cols[f] = i64([c.acc[f] for c in cases])
    return cast("engine_rs.SettlementColumns", cols)


def check_batch(policy: engine_rs.Policy, doc: dict[str, Any], cases: list[SplitCase]) -> None:
    got = never_panics(lambda: engine_rs.split_batch(policy, batch_columns(cases)))
    for i, case in enumerate(cases):
        want = Outcome(doc, case)
        if want.error is not None:
            assert isinstance(got, want.error), (i, want.error, want.field, got)
            assert isinstance(got, (engine_rs.InputError, engine_rs.NoRuleError))
            assert got.row == i
            if want.field is not None:
                assert isinstance(got, engine_rs.InputError)
                assert got.field == want.field
            return
    assert not isinstance(got, Exception), got
    for i, case in enumerate(cases):
        one = rust_split(policy, case)
        assert int(got["rule"][i]) == one.rule
        for f in SPLIT_FIELDS:
            assert int(got[f][i]) == getattr(one, f), (i, f)
        assert {f: int(got[f"new_{f}"][i]) for f in ACC_FIELDS} == one.accumulators.to_dict()


@props(250)
@given(sc=S.split_scenarios(max_cases=8))
def test_split_batch_equals_single_splits(sc: SplitScenario) -> None:
    """Row by row, split_batch equals split (and so the twin); the first refused row is the
    one the batch error names."""
    policy, doc = load_policy(sc.doc)
    check_batch(policy, doc, sc.cases)
    # and the rows every single call accepts, as a batch of their own
    ok = [c for c in sc.cases if Outcome(doc, c).error is None]
    if ok:
        check_batch(policy, doc, ok)


@props(300)
@given(sc=S.split_scenarios(max_cases=3, max_rules=2), data=st.data())
def test_chained_splits_stay_within_caps(sc: SplitScenario, data: st.DataObject) -> None:
    """Settlements applied in sequence, each on the accumulators the previous one returned:
    no cap is ever passed and the deductibles taken never exceed the yearly maximum."""
    policy, doc = load_policy(sc.doc)
    first = sc.cases[0]
    acc0 = dict(first.acc)
    acc = dict(acc0)
    taken = 0
    rule: dict[str, Any] | None = None
    for case in sc.cases:
        step = SplitCase(case.summary, first.selection, case.person, acc)
        r = check_split(policy, doc, step)
        if r is None:
            return
        rule = doc["rules"][r.rule]
        taken += r.act_pay_dedc
        acc = r.accumulators.to_dict()
    assert rule is not None
    for f, cap in caps(rule).items():
        if acc0[f] <= cap:
            assert acc[f] <= cap, (f, acc0[f], acc[f], cap)
            assert acc[f] - acc0[f] <= cap - acc0[f]
    if "dedc_paid" in caps(rule):
        assert taken <= max(0, caps(rule)["dedc_paid"] - acc0["dedc_paid"])


@props(150)
@given(
    sc=S.split_scenarios(max_cases=1, max_rules=2),
    balances=st.lists(st.integers(0, 10**8), min_size=2, max_size=2),
)
def test_more_balance_never_pays_less_from_the_account(
    sc: SplitScenario, balances: list[int]
) -> None:
    policy, doc = load_policy(sc.doc)
    case = sc.cases[0]
    lo, hi = sorted(balances)
    results = []
    for bal in (lo, hi):
        person = replace(case.person, acct_balance=bal)
        results.append(check_split(policy, doc, replace(case, person=person)))
    a, b = results
    if a is not None and b is not None:
        assert a.acct_pay <= b.acct_pay
        assert a.fund_pay_sumamt == b.fund_pay_sumamt


# --- bad split inputs ---------------------------------------------------------------------

SPLIT_CORRUPTIONS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "mismatch",
    "acct_balance",
    "age",
    "cross_region",
    *ACC_FIELDS,
)


def corrupt_case(case: SplitCase, what: str, k: int) -> SplitCase:
    s, p, acc = case.summary, case.person, dict(case.acc)
    if what in S.SUMMARY_PARTS:
        s = replace(s, **{what: -1 - k})
    elif what == "medfee_sumamt":
        s = replace(s, medfee_sumamt=-1 - k)
    elif what == "mismatch":
        s = replace(s, medfee_sumamt=s.medfee + 1 + k)
    elif what == "acct_balance":
        p = replace(p, acct_balance=-1 - k)
    elif what == "age":
        p = replace(p, age=151 + k % 2**31)
    elif what == "cross_region":
        p = replace(p, cross_region=3 + k % 200)
    else:
        acc[what] = -1 - k
    return SplitCase(s, case.selection, p, acc)


@props(200)
@given(
    sc=S.split_scenarios(max_cases=1, max_rules=2),
    bad=st.lists(
        st.tuples(st.sampled_from(SPLIT_CORRUPTIONS), st.integers(0, 2**40)), min_size=1, max_size=3
    ),
)
def test_bad_split_inputs_are_input_errors(sc: SplitScenario, bad: list[tuple[str, int]]) -> None:
    """Negative amounts or accumulators, an inconsistent summary, age > 150, cross_region > 2:
    InputError naming the field, in both split and split_batch."""
    policy, doc = load_policy(sc.doc)
    case = sc.cases[0]
    for what, k in bad:
        case = corrupt_case(case, what, k)
    assert expected_input_error(case) is not None
    check_split(policy, doc, case)
    check_batch(policy, doc, [sc.cases[0], case])


def _big_doc() -> st.SearchStrategy[dict[str, Any]]:
    return S.policy_docs(max_rules=2, scale=2**60)


@props(300)
@given(
    doc=st.one_of(S.policy_docs(max_rules=2), _big_doc()),
    summary=st.builds(SummaryIn, *(S.nonneg_extremes() for _ in range(4))),
    person=st.builds(
        PersonIn,
        age=st.one_of(st.integers(0, 160), st.just(2**32 - 1)),
        retired=st.booleans(),
        civil_servant=st.booleans(),
        cross_region=st.one_of(st.integers(0, 3), st.just(255)),
        assistance=st.booleans(),
        acct_used=st.booleans(),
        acct_balance=S.i64s(),
    ),
    acc=st.fixed_dictionaries({f: st.one_of(S.i64s(), st.integers(0, 10**7)) for f in ACC_FIELDS}),
    selection=S.selections(),
    admission_no=st.one_of(st.just(0), st.just(2**32 - 1), st.integers(0, 9)),
)
def test_split_with_int64_extremes_is_typed_and_matches_twin(
    doc: dict[str, Any],
    summary: SummaryIn,
    person: PersonIn,
    acc: dict[str, int],
    selection: SelectionIn,
    admission_no: int,
) -> None:
    """Amounts, balances, accumulators and policy money anywhere in int64: split returns the
    twin's figures where they fit in int64 and an InputError naming the overflowing
    accumulator where they do not; never a panic."""
    policy, canonical = load_policy(doc)
    sel = replace(selection, admission_no=admission_no)
    if summary.medfee > I64_MAX:
        # the parts' sum overflows: say medfee_sumamt = i64::MAX (an inconsistent summary)
        summary = replace(summary, medfee_sumamt=I64_MAX)
    check_split(policy, canonical, SplitCase(summary, sel, person, acc))


@props(200)
@given(
    doc=st.one_of(S.policy_docs(max_rules=2), _big_doc()),
    n=st.integers(1, 4),
    data=st.data(),
)
def test_split_batch_with_int64_extremes_is_typed(
    doc: dict[str, Any], n: int, data: st.DataObject
) -> None:
    """Every split_batch column filled with arbitrary int64 (or bool): success or an
    EngineError naming the row, and each accepted row equal to the single split."""
    policy, canonical = load_policy(doc)
    int_cols = [*TOTALS, "region", "insutype", "psn_type", "treatment", "hosp_lv", "date"]
    int_cols += ["admission_no", "age", "cross_region", "acct_balance", *ACC_FIELDS]
    cols: dict[str, Any] = {}
    for f in int_cols:
        vals = data.draw(st.lists(st.one_of(S.i64s(), st.integers(0, 5)), min_size=n, max_size=n))
        cols[f] = np.array(vals, dtype=np.int64)
    for f in ("retired", "civil_servant", "assistance", "acct_used"):
        cols[f] = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    got = never_panics(
        lambda: engine_rs.split_batch(policy, cast("engine_rs.SettlementColumns", cols))
    )
    if isinstance(got, Exception):
        assert isinstance(got, (engine_rs.InputError, engine_rs.NoRuleError)), got
        assert 0 <= got.row < n
        return
    for i in range(n):
        row = {k: int(v[i]) for k, v in cols.items()}
        case = SplitCase(
            SummaryIn(
                fulamt_ownpay_amt=row["fulamt_ownpay_amt"],
                overlmt_amt=row["overlmt_amt"],
                preselfpay_amt=row["preselfpay_amt"],
                inscp_scp_amt=row["inscp_scp_amt"],
                medfee_sumamt=row["medfee_sumamt"],
            ),
            SelectionIn(
                treatment=row["treatment"],
                date=row["date"],
                region=row["region"],
                insutype=row["insutype"],
                psn_type=row["psn_type"],
                hosp_lv=row["hosp_lv"],
                admission_no=row["admission_no"],
            ),
            PersonIn(
                age=row["age"],
                retired=bool(row["retired"]),
                civil_servant=bool(row["civil_servant"]),
                cross_region=row["cross_region"],
                assistance=bool(row["assistance"]),
                acct_used=bool(row["acct_used"]),
                acct_balance=row["acct_balance"],
            ),
            {f: row[f] for f in ACC_FIELDS},
        )
        if 1 <= case.selection.treatment <= 3:
            r = check_split(policy, canonical, case)
            assert r is not None
        else:
            # the twin knows treatments 1..3 only; Rust accepts any code (see the report)
            r = rust_split(policy, case)
            check_split_invariants(canonical["rules"][r.rule], case, r)
        assert int(got["rule"][i]) == r.rule
        for f in SPLIT_FIELDS:
            assert int(got[f][i]) == getattr(r, f), (i, f)
        assert {f: int(got[f"new_{f}"][i]) for f in ACC_FIELDS} == r.accumulators.to_dict()


@props(100)
@given(
    n=st.integers(1, 5),
    key=st.sampled_from(
        [
            *TOTALS,
            "region",
            "insutype",
            "psn_type",
            "treatment",
            "hosp_lv",
            "date",
            "admission_no",
            "age",
            "cross_region",
            "acct_balance",
            "retired",
            "civil_servant",
            "assistance",
            "acct_used",
            *ACC_FIELDS,
        ]
    ),
    delta=st.sampled_from([-1, 1, 3]),
)
@example(n=2, key="region", delta=-1)
def test_split_batch_column_of_wrong_length_is_a_column_error(n: int, key: str, delta: int) -> None:
    """A split_batch column with more or fewer rows than medfee_sumamt is a ColumnError (it
    must not panic on an index out of bounds, nor silently ignore rows)."""
    case = SplitCase(
        SummaryIn(inscp_scp_amt=1000), SelectionIn(treatment=2, date=20260601), PersonIn()
    )
    cols = batch_columns([case] * n)
    m = max(0, n + delta)
    cols[key] = np.resize(cols[key], m) if m else cols[key][:0]  # type: ignore[literal-required]
    doc = {
        "schema": "medsettle.policy/1",
        "id": "p",
        "version": 1,
        "rules": [
            {
                "id": "r",
                "deductible": {"kind": "per_visit", "by_admission_fen": [100]},
                "basic": {"band_basis": "fee", "bands": [{"from_fen": 0, "ratio_bp": 9000}]},
            }
        ],
    }
    got = never_panics(
        lambda: engine_rs.split_batch(engine_rs.Policy.from_json(json.dumps(doc)), cols)
    )
    assert isinstance(got, engine_rs.ColumnError), got


@props(150)
@given(doc=S.policy_docs(max_rules=5), data=st.data())
def test_rule_selection_matches_twin(doc: dict[str, Any], data: st.DataObject) -> None:
    policy, canonical = load_policy(doc)
    sels = data.draw(st.lists(S.selections(doc), min_size=1, max_size=8))
    assert policy.id == "prop" and len(policy) == len(doc["rules"])
    for i, rule in enumerate(canonical["rules"]):
        assert policy.rule_id(i) == rule["id"]
        assert policy.rule_accumulator(i) == rule["accumulator"]
    for sel in sels:
        assert policy.select(sel.rust()) == twin_select(canonical, sel)


def test_empty_catalog_leaves_every_line_unmapped() -> None:
    """An empty catalog (no items, no mappings) is valid; every line is then unmapped."""
    spec = CatalogSpec([], [], {}, [])
    cat = S.load_catalog(spec)
    lines = [twin.Line("H1", S.CNT, 100, 100)]
    res, s = engine_rs.preprocess(
        cat,
        S.preprocess_policy("down", 0),
        S.line_columns(lines),
        engine_rs.Visit(treatment=1, date=20260101),
    )
    assert list(res.flags) == [twin.UNMAPPED] and s.fulamt_ownpay_amt == 100
    assert pack_strings([])[1].tolist() == [0]
