"""Hypothesis strategies and builders for the property tests (tests/engine/test_properties.py).

Every generated case is kept as plain Python values (twin dataclasses, dicts), and turned into
`engine_rs` inputs by the builders below, so the same values feed both the Rust engine and the
reference twin (`tests/engine/twin.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

import engine_rs
from server.columns import pack_strings
from tests.engine import twin

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
CNT = twin.CNT_SCALE
MODES = ("half_up", "half_even", "down", "up")
LEG_MODES = ("per_band", "per_leg")

# Dates used for item validity, fee dates, visits and rule effective ranges.
DATES = (20250101, 20251231, 20260101, 20260601, 20260630, 20260701, 20261231, 20270101)
RULE_DATES = ("2025-01-01", "2026-01-01", "2026-06-30", "2026-07-01", "2026-12-31")
# ICD-10 prefixes items are limited to, and the diagnoses visits carry.
DX_PREFIXES = ("K25", "K26", "J18", "I10", "E11", "K2", "C", "Z99")
DX_CODES = ("K25.001", "K26.9", "J18.9", "I10", "E11.900", "K2", "C34.1", "A01")
PSN_TYPES = (11, 12, 13, 21, 1101)
AGES = (0, 6, 14, 15, 18, 60, 61, 120)  # item age bounds and visit ages share these
SELFPAY_BP = (0, 0, 0, 1000, 1500, 2000, 3333, 5000, 9999, 10_000)
CODE_ALPHABET = "ABXZ019-阿莫é"


# ---------------------------------------------------------------------------------------
# Preprocessing cases
# ---------------------------------------------------------------------------------------


@dataclass
class CatalogSpec:
    """A catalog as plain values: twin items, the raw diagnoses column, and mappings."""

    items: list[twin.Item]
    diagnoses_text: list[str]
    mappings: dict[str, str]
    selfpay_psn_types: list[int]

    @property
    def by_code(self) -> dict[str, int]:
        return {it.code: i for i, it in enumerate(self.items)}


@dataclass
class PreCase:
    """One catalog, the fee lines of several visits, and the line tolerance."""

    catalog: CatalogSpec
    lines: list[twin.Line]
    visit_of: list[int]  # the visit (index into `visits`) of each line
    visits: list[twin.VisitContext]
    tolerance: int

    def lines_of(self, v: int) -> list[twin.Line]:
        return [ln for ln, w in zip(self.lines, self.visit_of, strict=True) if w == v]


def dx_list(text: str) -> list[str]:
    """The prefixes of a catalog diagnoses column value, as the engine reads them."""
    return [p.strip() for p in text.split(",") if p.strip()]


def catalog_columns(spec: CatalogSpec) -> tuple[engine_rs.CatalogItems, engine_rs.CatalogMappings]:
    items = spec.items
    slots = len(spec.selfpay_psn_types) + 1
    sp = np.zeros((len(items), slots), dtype=np.int32)
    for i, it in enumerate(items):
        sp[i, :] = it.selfpay_prop_bp
    cols: engine_rs.CatalogItems = {
        "code": pack_strings([it.code for it in items]),
        "name": pack_strings([f"名称{it.code}" for it in items]),
        "kind": np.array([1 + i % 6 for i in range(len(items))], dtype=np.uint8),
        "chrgitm_lv": np.array([it.chrgitm_lv for it in items], dtype=np.uint8),
        "fee_category": np.array([it.fee_category for it in items], dtype=np.uint8),
        "price_cap": np.array([it.price_cap for it in items], dtype=np.int64),
        "selfpay_prop_bp": sp,
        "inpatient_only": np.array([it.inpatient_only for it in items], dtype=np.bool_),
        "sex": np.array([it.sex for it in items], dtype=np.uint8),
        "age_min": np.array([it.age_min for it in items], dtype=np.uint8),
        "age_max": np.array([it.age_max for it in items], dtype=np.uint8),
        "diagnoses": pack_strings(spec.diagnoses_text),
        "valid_from": np.array([it.valid_from for it in items], dtype=np.int32),
        "valid_to": np.array([it.valid_to for it in items], dtype=np.int32),
    }
    maps: engine_rs.CatalogMappings = {
        "hosp_code": pack_strings(list(spec.mappings)),
        "ins_code": pack_strings(list(spec.mappings.values())),
    }
    return cols, maps


def load_catalog(spec: CatalogSpec) -> engine_rs.Catalog:
    items, maps = catalog_columns(spec)
    return engine_rs.Catalog.load(
        items, maps, version=1, selfpay_psn_types=list(spec.selfpay_psn_types)
    )


@overload
def line_columns(lines: Sequence[twin.Line], visit_of: None = None) -> engine_rs.FeeLines: ...
@overload
def line_columns(
    lines: Sequence[twin.Line], visit_of: Sequence[int]
) -> engine_rs.BatchFeeLines: ...
def line_columns(
    lines: Sequence[twin.Line], visit_of: Sequence[int] | None = None
) -> engine_rs.FeeLines | engine_rs.BatchFeeLines:
    """Fee-line columns; with `visit_of`, the batch form (a `visit` column)."""

    def i64(values: Sequence[int]) -> npt.NDArray[np.int64]:
        return np.array(values, dtype=np.int64).reshape(len(values))

    cols: engine_rs.FeeLines = {
        "medins_list_codg": pack_strings([ln.medins_list_codg for ln in lines]),
        "med_list_codg": pack_strings([ln.med_list_codg for ln in lines]),
        "cnt": i64([ln.cnt for ln in lines]),
        "pric": i64([ln.pric for ln in lines]),
        "det_item_fee_sumamt": i64([ln.det_item_fee_sumamt for ln in lines]),
        "hosp_appr_flag": i64([ln.hosp_appr_flag for ln in lines]),
        "fee_date": i64([ln.fee_date for ln in lines]),
    }
    if visit_of is not None:
        return {**cols, "visit": i64(list(visit_of))}
    return cols


def rust_visit(v: twin.VisitContext) -> engine_rs.Visit:
    return engine_rs.Visit(
        treatment=v.treatment,
        date=v.date,
        psn_type=v.psn_type,
        sex=v.sex,
        age=v.age,
        diagnoses=list(v.diagnoses),
    )


def visit_columns(visits: Sequence[twin.VisitContext]) -> engine_rs.VisitColumns:
    def i64(values: Sequence[int]) -> npt.NDArray[np.int64]:
        return np.array(values, dtype=np.int64).reshape(len(values))

    return {
        "treatment": i64([v.treatment for v in visits]),
        "date": i64([v.date for v in visits]),
        "psn_type": i64([v.psn_type for v in visits]),
        "sex": i64([v.sex for v in visits]),
        "age": i64([v.age for v in visits]),
        "diagnoses": pack_strings([",".join(v.diagnoses) for v in visits]),
    }


def preprocess_policy(mode: str, tolerance: int) -> engine_rs.Policy:
    doc = {
        "schema": "medsettle.policy/1",
        "id": "prop",
        "version": 1,
        "preprocess": {"line_tolerance_fen": tolerance},
        "rounding": {"mode": mode, "fund_legs": "per_leg"},
        "rules": [
            {
                "id": "all",
                "deductible": {"kind": "per_visit", "by_admission_fen": [0]},
                "basic": {"band_basis": "fee", "bands": [{"from_fen": 0, "ratio_bp": 8000}]},
            }
        ],
    }
    return engine_rs.Policy.from_json(json.dumps(doc))


# Helpers below take `draw` and use cached strategies (hashable arguments): building a new
# strategy object per draw costs Hypothesis a validation pass each time.
_PERCENT = st.integers(0, 99)


def coin(draw: st.DrawFn, percent: int) -> bool:
    """True about `percent` times in a hundred (shrinks to False)."""
    return draw(_PERCENT) >= 100 - percent


def pick(draw: st.DrawFn, values: Sequence[Any]) -> Any:
    return draw(st.sampled_from(tuple(values)))


def money(draw: st.DrawFn, hi: int) -> int:
    """0..hi, spread over the orders of magnitude (small amounts exercise rounding, large
    ones the bands and caps), or uniform over the range."""
    top = draw(st.integers(0, len(str(hi))))
    if top == len(str(hi)):
        return draw(st.integers(0, hi))
    return draw(st.integers(0, min(hi, 10 ** (top + 1))))


@st.composite
def catalog_specs(draw: st.DrawFn, max_items: int = 40) -> CatalogSpec:
    n = draw(st.integers(1, max_items)) if not coin(draw, 5) else 0
    prefix = pick(
        draw,
        (
            "X",
            "阿",
            "é-",
            "Z0",
        ),
    )
    codes = [f"{prefix}{i}" for i in range(n)]
    psn_types = draw(st.lists(st.sampled_from(PSN_TYPES), max_size=3))
    slots = len(psn_types) + 1
    items: list[twin.Item] = []
    dx_texts: list[str] = []
    for code in codes:
        age_min, age_max = 0, 255
        if coin(draw, 10):
            age_min = pick(draw, AGES) if coin(draw, 70) else draw(st.integers(0, 120))
            age_max = max(age_min, pick(draw, AGES)) if coin(draw, 70) else 255
        valid_from, valid_to = 0, 0
        if coin(draw, 15):
            valid_from = draw(st.sampled_from((0, *DATES)))
            valid_to = pick(
                draw,
                (
                    0,
                    *(d for d in DATES if d >= valid_from),
                ),
            )
        text = ""
        if coin(draw, 20):
            prefixes = draw(st.lists(st.sampled_from(DX_PREFIXES), min_size=1, max_size=3))
            text = pick(
                draw,
                (
                    ",",
                    ", ",
                    " ,",
                ),
            ).join(prefixes)
            if coin(draw, 30):
                text = (
                    pick(
                        draw,
                        (
                            " ",
                            ",",
                            ", ",
                        ),
                    )
                    + text
                    + ","
                )
        dx_texts.append(text)
        lv = draw(st.integers(0, 99))
        cap = money(draw, 1_000_000) if coin(draw, 40) else 0
        items.append(
            twin.Item(
                code=code,
                chrgitm_lv=3 if lv < 15 else 1 + lv % 2,
                fee_category=draw(st.integers(1, 14)),
                price_cap=cap,
                selfpay_prop_bp=[pick(draw, SELFPAY_BP) for _ in range(slots)],
                inpatient_only=coin(draw, 10),
                sex=pick(
                    draw,
                    (
                        1,
                        2,
                    ),
                )
                if coin(draw, 10)
                else 0,
                age_min=age_min,
                age_max=age_max,
                diagnoses=dx_list(text),
                valid_from=valid_from,
                valid_to=valid_to,
            )
        )
    mappings: dict[str, str] = {f"H{c}": c for c in codes if not coin(draw, 15)}
    # stale mappings: hospital codes whose insurance code is not in this catalog version
    for k in range(draw(st.integers(0, 2))):
        mappings[f"STALE{k}"] = f"GONE{k}"
    if codes and coin(draw, 50):
        mappings["HSHARED"] = pick(draw, codes)
    return CatalogSpec(items, dx_texts, mappings, psn_types)


def amount_within(draw: st.DrawFn, pric: int, cnt: int, tolerance: int) -> int:
    """A line amount within `tolerance` fen of pric x cnt (never negative)."""
    exact = pric * cnt
    lo = max(0, -((-(exact - tolerance * CNT)) // CNT))  # ceil
    hi = (exact + tolerance * CNT) // CNT
    nearest = min(max(twin.round_div(exact, CNT, "half_up"), lo), hi)
    if coin(draw, 60):
        return nearest
    return draw(st.integers(lo, hi))


def fee_line(draw: st.DrawFn, spec: CatalogSpec, tolerance: int) -> twin.Line:
    items = spec.items
    mapped = [h for h, c in spec.mappings.items() if c in spec.by_code]
    route = draw(st.integers(0, 99))
    ins = ""
    idx = -1
    if mapped and route < 55:
        hosp = pick(draw, mapped)
        idx = spec.by_code[spec.mappings[hosp]]
    elif items and route < 90:
        idx = draw(st.integers(0, len(items) - 1))
        ins = items[idx].code
        hosp = pick(draw, ["", "NOPE", *mapped[:3]])
    elif route % 2:
        stale = [h for h, c in spec.mappings.items() if c not in spec.by_code]
        hosp = pick(draw, stale or ["NOPE"])
    else:
        hosp = pick(
            draw,
            (
                "NOPE",
                "",
                "H",
                "未对照",
            ),
        )
    cap = items[idx].price_cap if idx >= 0 else 0
    if cap > 0 and coin(draw, 50):
        pric = pick(
            draw,
            (
                cap - 1,
                cap,
                cap + 1,
                cap + 7,
                2 * cap,
            ),
        )
    else:
        pric = money(draw, 2_000_000)
    if coin(draw, 50):
        cnt = draw(st.integers(1, 10)) * CNT
    else:
        cnt = pick(
            draw,
            (
                0,
                1,
                3_333,
                5_000,
                15_000,
                33_333,
                123_457,
            ),
        )
    if tolerance == 0 and pric * cnt % CNT:
        cnt -= cnt % CNT  # with no tolerance only a whole-fen product has a valid amount
    amount = amount_within(draw, pric, cnt, tolerance)
    flag = draw(st.integers(0, 99))
    return twin.Line(
        medins_list_codg=hosp,
        cnt=cnt,
        pric=pric,
        det_item_fee_sumamt=amount,
        med_list_codg=ins,
        hosp_appr_flag=0 if flag < 80 else 1 + flag % 2,
        fee_date=draw(st.sampled_from(DATES)) if coin(draw, 20) else 0,
    )


def visit_context(
    draw: st.DrawFn, psn_types: Sequence[int], max_age: int = 150
) -> twin.VisitContext:
    return twin.VisitContext(
        treatment=draw(st.integers(1, 3)),
        psn_type=pick(draw, (0, *PSN_TYPES, *psn_types)),
        sex=draw(st.integers(0, 2)),
        age=draw(st.integers(0, max_age)) if coin(draw, 40) else pick(draw, AGES),
        date=draw(st.sampled_from(DATES)),
        diagnoses=draw(st.lists(st.sampled_from(DX_CODES), max_size=3)),
    )


@st.composite
def pre_cases(
    draw: st.DrawFn, max_items: int = 40, max_lines: int = 60, max_visits: int = 1
) -> PreCase:
    spec = draw(catalog_specs(max_items=max_items))
    tolerance = pick(
        draw,
        (
            0,
            1,
            1,
            2,
            5,
        ),
    )
    n_lines = draw(st.integers(0, max_lines))
    lines = [fee_line(draw, spec, tolerance) for _ in range(n_lines)]
    n_visits = draw(st.integers(1, max_visits))
    visit_of = [draw(st.integers(0, n_visits - 1)) for _ in range(n_lines)]
    visits = [visit_context(draw, spec.selfpay_psn_types) for _ in range(n_visits)]
    return PreCase(spec, lines, visit_of, visits, tolerance)


@st.composite
def visit_contexts(
    draw: st.DrawFn, psn_types: tuple[int, ...] = (), max_age: int = 150
) -> twin.VisitContext:
    return visit_context(draw, psn_types, max_age)


# ---------------------------------------------------------------------------------------
# Fund split cases
# ---------------------------------------------------------------------------------------

ACC_FIELDS = twin.ACC_FIELDS
SUMMARY_PARTS = ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")


@dataclass(frozen=True)
class SummaryIn:
    fulamt_ownpay_amt: int = 0
    overlmt_amt: int = 0
    preselfpay_amt: int = 0
    inscp_scp_amt: int = 0
    medfee_sumamt: int | None = None  # None = the sum of the four parts

    @property
    def medfee(self) -> int:
        if self.medfee_sumamt is not None:
            return self.medfee_sumamt
        return self.fulamt_ownpay_amt + self.overlmt_amt + self.preselfpay_amt + self.inscp_scp_amt

    def as_dict(self) -> dict[str, int]:
        return {
            "medfee_sumamt": self.medfee,
            "fulamt_ownpay_amt": self.fulamt_ownpay_amt,
            "overlmt_amt": self.overlmt_amt,
            "preselfpay_amt": self.preselfpay_amt,
            "inscp_scp_amt": self.inscp_scp_amt,
        }

    def rust(self) -> engine_rs.Summary:
        return engine_rs.Summary(**self.as_dict())


@dataclass(frozen=True)
class SelectionIn:
    treatment: int
    date: int
    region: int = 0
    insutype: int = 0
    psn_type: int = 0
    hosp_lv: int = 0
    admission_no: int = 0

    def rust(self) -> engine_rs.Selection:
        return engine_rs.Selection(
            treatment=self.treatment,
            date=self.date,
            region=self.region,
            insutype=self.insutype,
            psn_type=self.psn_type,
            hosp_lv=self.hosp_lv,
            admission_no=self.admission_no,
        )

    def twin(self) -> twin.Selection:
        return twin.Selection(
            region=self.region,
            insutype=self.insutype,
            psn_type=self.psn_type,
            treatment=self.treatment,
            hosp_lv=self.hosp_lv,
            date=self.date,
            admission_no=self.admission_no,
        )


@dataclass(frozen=True)
class PersonIn:
    age: int = 0
    retired: bool = False
    civil_servant: bool = False
    cross_region: int = 0
    assistance: bool = False
    acct_used: bool = False
    acct_balance: int = 0

    def rust(self) -> engine_rs.Person:
        return engine_rs.Person(
            age=self.age,
            retired=self.retired,
            civil_servant=self.civil_servant,
            cross_region=self.cross_region,
            assistance=self.assistance,
            acct_used=self.acct_used,
            acct_balance=self.acct_balance,
        )

    def twin(self) -> twin.Person:
        return twin.Person(
            age=self.age,
            retired=self.retired,
            civil_servant=self.civil_servant,
            cross_region=self.cross_region,
            assistance=self.assistance,
            acct_used=self.acct_used,
            acct_balance=self.acct_balance,
        )


@dataclass(frozen=True)
class SplitCase:
    summary: SummaryIn
    selection: SelectionIn
    person: PersonIn
    acc: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACC_FIELDS, 0))


@dataclass
class SplitScenario:
    """A policy document and several settlements under it."""

    doc: dict[str, Any]
    cases: list[SplitCase]


def fen_values(obj: Any) -> list[int]:
    """Every money amount (`*_fen` fields, band bounds) in a policy document."""
    out: set[int] = set()

    def walk(o: Any, key: str = "") -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, k)
        elif isinstance(o, list):
            for v in o:
                walk(v, key)
        elif isinstance(o, int) and not isinstance(o, bool) and key.endswith("_fen"):
            out.add(o)

    walk(obj)
    return sorted(out)


def _ratio(draw: st.DrawFn) -> int:
    if coin(draw, 70):
        return int(pick(draw, (0, 5000, 7000, 8000, 8500, 9000, 9500, 10_000)))
    return draw(st.integers(0, 10_000))


def bands(draw: st.DrawFn, scale: int, max_bands: int = 4) -> list[dict[str, int]]:
    n = draw(st.integers(1, max_bands))
    start = 0 if coin(draw, 70) else 1 + money(draw, scale // 5)
    out = [{"from_fen": start, "ratio_bp": _ratio(draw)}]
    for _ in range(n - 1):
        start += 1 + money(draw, scale // 2)
        out.append({"from_fen": start, "ratio_bp": _ratio(draw)})
    return out


def _adjust_bp(draw: st.DrawFn) -> int:
    if coin(draw, 60):
        return int(pick(draw, (0, 300, 500, -500, -2000, 10_000, -10_000)))
    return draw(st.integers(-10_000, 10_000))


def adjust(draw: st.DrawFn) -> dict[str, Any]:
    adj: dict[str, Any] = {}
    for key in ("retired_bp", "cross_region_filed_bp", "cross_region_unfiled_bp"):
        if coin(draw, 50):
            adj[key] = _adjust_bp(draw)
    if coin(draw, 50):
        age: dict[str, Any] = {}
        if coin(draw, 60):
            ages = sorted(set(draw(st.lists(st.integers(0, 150), max_size=4))))
            age["table"] = [{"min_age": a, "bp": _adjust_bp(draw)} for a in ages]
        if coin(draw, 50):
            age["linear"] = {
                "from_age": draw(st.integers(0, 150)),
                "bp_per_year": draw(st.integers(0, 200 if coin(draw, 70) else 10_000)),
                "max_bp": draw(st.integers(0, 10_000)),
            }
        adj["age"] = age
    return adj


CRITERIA: dict[str, tuple[str, ...]] = {
    "regions": ("440100", "440200"),
    "insutypes": ("310", "390", "0390"),
    "psn_types": ("11", "12", "1101"),
    "treatments": ("outpatient", "inpatient", "special_outpatient"),
    "hosp_lvs": ("1", "2", "3"),
}
TREATMENT_CODES = {"outpatient": 1, "inpatient": 2, "special_outpatient": 3}


def _opt_money(draw: st.DrawFn, percent: int, hi: int) -> int | None:
    return money(draw, hi) if coin(draw, percent) else None


def rule_body(draw: st.DrawFn, scale: int) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    for key, pool in CRITERIA.items():  # selection criteria: empty (any) most of the time
        if coin(draw, 25):
            rule[key] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    if coin(draw, 25):
        a, b = sorted(draw(st.lists(st.sampled_from(RULE_DATES), min_size=2, max_size=2)))
        rule["effective_from"], rule["effective_to"] = a, b
    rule["accumulator"] = pick(
        draw,
        (
            "default",
            "inpatient",
            "outpatient",
        ),
    )

    if coin(draw, 60):
        n = draw(st.integers(1, 4))
        ded: dict[str, Any] = {
            "kind": "per_visit",
            "by_admission_fen": [money(draw, scale // 10) for _ in range(n)],
        }
        cap = _opt_money(draw, 40, scale // 4)
        if cap is not None:
            ded["annual_max_fen"] = cap
    else:
        ded = {"kind": "annual", "annual_fen": money(draw, scale // 5)}
    rule["deductible"] = ded

    basic: dict[str, Any] = {
        "fund_pay_type": pick(
            draw,
            (
                "310100",
                "390100",
            ),
        ),
        "band_basis": pick(
            draw,
            (
                "fee",
                "above_deductible",
            ),
        ),
        "bands": bands(draw, scale),
    }
    if coin(draw, 25):
        basic["max_ratio_bp"] = _ratio(draw)
    for key, percent, hi in (("annual_cap_fen", 40, scale), ("fee_ceiling_fen", 30, 2 * scale)):
        v = _opt_money(draw, percent, hi)
        if v is not None:
            basic[key] = v
    if coin(draw, 40):
        basic["adjust"] = adjust(draw)
    rule["basic"] = basic

    if coin(draw, 50):
        crit: dict[str, Any] = {
            "fund_pay_type": pick(
                draw,
                (
                    "390200",
                    "330100",
                ),
            ),
            "basis": pick(
                draw,
                (
                    "burden",
                    "above_basic",
                ),
            ),
            "convention": pick(
                draw,
                (
                    "from_threshold",
                    "cumulative",
                ),
            ),
            "threshold_fen": money(draw, scale // 5),
            "bands": bands(draw, scale),
            "include_preselfpay": draw(st.booleans()),
        }
        cap = _opt_money(draw, 40, scale)
        if cap is not None:
            crit["annual_cap_fen"] = cap
        rule["critical"] = crit
    if coin(draw, 40):
        cs: dict[str, Any] = {
            "deductible_bp": _ratio(draw),
            "copay_bp": _ratio(draw),
            "above_bp": _ratio(draw),
            "retired_add_bp": _ratio(draw),
        }
        cap = _opt_money(draw, 40, scale // 5)
        if cap is not None:
            cs["annual_cap_fen"] = cap
        rule["civil_servant"] = cs
    if coin(draw, 40):
        ma: dict[str, Any] = {"share_bp": _ratio(draw), "include_preselfpay": draw(st.booleans())}
        cap = _opt_money(draw, 40, scale // 5)
        if cap is not None:
            ma["annual_cap_fen"] = cap
        rule["assistance"] = ma
    if coin(draw, 50):
        rule["account"] = {
            "covers": pick(
                draw,
                (
                    "in_scope",
                    "all",
                ),
            )
        }
    return rule


SCALES = (10_000, 1_000_000, 20_000_000)


def with_rounding(doc: dict[str, Any], mode: str, legs: str) -> dict[str, Any]:
    return {**doc, "rounding": {"mode": mode, "fund_legs": legs}}


@st.composite
def policy_docs(draw: st.DrawFn, max_rules: int = 3, scale: int | None = None) -> dict[str, Any]:
    if scale is None:
        scale = draw(st.sampled_from(SCALES))
    n = draw(st.integers(1, max_rules))
    return {
        "schema": "medsettle.policy/1",
        "id": "prop",
        "version": 1,
        "preprocess": {"line_tolerance_fen": 1},
        "rounding": {
            "mode": draw(st.sampled_from(MODES)),
            "fund_legs": draw(st.sampled_from(LEG_MODES)),
        },
        "rules": [{"id": f"r{i}", **rule_body(draw, scale)} for i in range(n)],
    }


def near(draw: st.DrawFn, values: Sequence[int], spread: int = 2) -> int:
    """One of `values` (policy amounts: bounds, caps, thresholds) give or take a fen or two."""
    if not values:
        return 0
    return max(0, int(pick(draw, values)) + draw(st.integers(-spread, spread)))


@st.composite
def selections(draw: st.DrawFn, doc: dict[str, Any] | None = None) -> SelectionIn:
    return selection(draw, doc)


def selection(draw: st.DrawFn, doc: dict[str, Any] | None = None) -> SelectionIn:
    """A selection; given a policy, usually one aimed at a random rule's criteria."""
    rule: dict[str, Any] = {}
    if doc is not None and coin(draw, 85):
        rule = pick(draw, doc["rules"])

    def code(key: str, pool: Sequence[int]) -> int:
        if rule.get(key):
            return int(pick(draw, rule[key]))
        return int(pick(draw, pool))

    if rule.get("treatments"):
        treatment = TREATMENT_CODES[pick(draw, rule["treatments"])]
    else:
        treatment = draw(st.integers(1, 3))
    lo = int(rule.get("effective_from", "0001-01-01").replace("-", ""))
    hi = int(rule.get("effective_to", "9999-12-31").replace("-", ""))
    dates = [d for d in DATES if lo <= d <= hi] or list(DATES)
    return SelectionIn(
        treatment=treatment,
        date=pick(draw, dates),
        region=code("regions", (0, 440100, 440200)),
        insutype=code("insutypes", (0, 310, 390)),
        psn_type=code("psn_types", (0, 11, 12, 1101)),
        hosp_lv=code("hosp_lvs", (0, 1, 2, 3)),
        admission_no=draw(st.integers(1, 6)) if coin(draw, 25) else 0,
    )


def amount(draw: st.DrawFn, scale: int, values: Sequence[int], zero: int) -> int:
    """0 `zero` % of the time, else near a policy amount, or anywhere up to `scale`."""
    k = draw(_PERCENT)
    if k < zero:
        return 0
    if k < zero + (100 - zero) // 3:
        return near(draw, values)
    return money(draw, scale)


def person(draw: st.DrawFn, scale: int, values: Sequence[int]) -> PersonIn:
    return PersonIn(
        age=draw(st.integers(0, 150)) if coin(draw, 60) else pick(draw, (0, 59, 60, 69, 70, 80)),
        retired=draw(st.booleans()),
        civil_servant=draw(st.booleans()),
        cross_region=draw(st.integers(0, 2)),
        assistance=draw(st.booleans()),
        acct_used=draw(st.booleans()),
        acct_balance=amount(draw, scale, values, 20),
    )


def summary(draw: st.DrawFn, scale: int, values: Sequence[int]) -> SummaryIn:
    return SummaryIn(
        fulamt_ownpay_amt=amount(draw, scale, values, 70),
        overlmt_amt=amount(draw, scale, values, 70),
        preselfpay_amt=amount(draw, scale, values, 50),
        inscp_scp_amt=(
            draw(st.integers(0, 3 * scale)) if coin(draw, 35) else amount(draw, scale, values, 5)
        ),
    )


def accumulator_values(draw: st.DrawFn, scale: int, values: Sequence[int]) -> dict[str, int]:
    acc = {"inpatient_count": draw(st.integers(1, 5)) if coin(draw, 30) else 0}
    for f in ACC_FIELDS[1:]:
        acc[f] = amount(draw, 2 * scale, values, 50)
    return acc


def split_case(draw: st.DrawFn, doc: dict[str, Any], scale: int) -> SplitCase:
    values = fen_values(doc)
    return SplitCase(
        summary=summary(draw, scale, values),
        selection=selection(draw, doc),
        person=person(draw, scale, values),
        acc=accumulator_values(draw, scale, values),
    )


@st.composite
def split_scenarios(draw: st.DrawFn, max_cases: int = 4, max_rules: int = 3) -> SplitScenario:
    scale = pick(draw, SCALES)
    doc = draw(policy_docs(max_rules=max_rules, scale=scale))
    n = draw(st.integers(1, max_cases))
    return SplitScenario(doc, [split_case(draw, doc, scale) for _ in range(n)])


# Extremes for robustness tests.
I64_EXTREMES = (I64_MIN, I64_MIN + 1, -1, 0, 1, 2**31, 2**62, I64_MAX - 1, I64_MAX)


_I64S = st.one_of(st.sampled_from(I64_EXTREMES), st.integers(I64_MIN, I64_MAX))
_NONNEG = st.one_of(st.sampled_from((0, 1, 2**62, I64_MAX - 1, I64_MAX)), st.integers(0, I64_MAX))


def i64s() -> st.SearchStrategy[int]:
    """Any int64, the extremes often."""
    return _I64S


def nonneg_extremes() -> st.SearchStrategy[int]:
    """Any non-negative int64, the extremes often."""
    return _NONNEG
