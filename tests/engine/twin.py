"""Reference twin of the Rust engine: fee preprocessing and fund split in plain Python.

Written to be read, not to be fast. It is the oracle the property tests compare `engine_rs`
against, and the place to look first when a figure on a settlement slip needs explaining.
It consumes the canonical policy JSON that `engine_rs.Policy.to_json()` produces (so there
is one parser, in Rust) and catalog items as plain dataclasses.

Conventions (shared with the Rust side, see docs/policy.md):
- money is integer fen; ratios are basis points (10_000 = 100 %);
- `cnt` (quantity) is in units of 1/10_000;
- every product `amount * bp / 10_000` is rounded by the policy's rounding mode, at the
  points the policy names, never by floating point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

BP = 10_000
CNT_SCALE = 10_000
N_CATEGORIES = 15  # med_chrgitm_type 01..14, slot 0 for "unknown"

# Line flags: the bit values of `LineResults.flags` (engine_rs/src/preprocess.rs, `flags`).
UNMAPPED = 1
CLASS_C = 2
RESTRICT_INPATIENT = 4
RESTRICT_SEX = 8
RESTRICT_AGE = 16
RESTRICT_DIAGNOSIS = 32
OUTSIDE_VALIDITY = 64
HOSP_SELFPAY = 128
OVER_PRICE_CAP = 256
PRESELFPAY = 512
APPROVED = 1024

TREATMENT_OUTPATIENT = 1
TREATMENT_INPATIENT = 2
TREATMENT_SPECIAL_OUTPATIENT = 3


class TwinError(ValueError):
    """Bad input, with the line (or -1) and the field."""

    def __init__(self, line: int, field_name: str, reason: str) -> None:
        super().__init__(f"line {line}: {field_name}: {reason}")
        self.line = line
        self.field = field_name
        self.reason = reason


def round_div(num: int, den: int, mode: str) -> int:
    """num / den for num >= 0, den > 0, rounded by `mode`."""
    assert num >= 0 and den > 0
    q, r = divmod(num, den)
    if r == 0 or mode == "down":
        return q
    if mode == "up":
        return q + 1
    if mode == "half_up":
        return q + 1 if 2 * r >= den else q
    if mode == "half_even":
        if 2 * r > den or (2 * r == den and q % 2 == 1):
            return q + 1
        return q
    raise ValueError(mode)


# ---------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------


@dataclass
class Item:
    code: str
    chrgitm_lv: int  # 1 class A, 2 class B, 3 class C
    fee_category: int  # med_chrgitm_type 1..14
    price_cap: int = 0  # fen per unit, 0 = none
    selfpay_prop_bp: list[int] = field(default_factory=lambda: [0])  # slot 0 default
    inpatient_only: bool = False
    sex: int = 0  # 0 any, 1 male, 2 female
    age_min: int = 0
    age_max: int = 255
    diagnoses: list[str] = field(default_factory=list)  # ICD-10 prefixes; empty = any
    valid_from: int = 0  # yyyymmdd, 0 = open
    valid_to: int = 0


@dataclass
class Line:
    medins_list_codg: str
    cnt: int
    pric: int
    det_item_fee_sumamt: int
    med_list_codg: str = ""
    hosp_appr_flag: int = 0  # 0 none, 1 approved, 2 self-pay
    fee_date: int = 0  # yyyymmdd; 0 = the visit date


@dataclass
class VisitContext:
    treatment: int
    psn_type: int
    sex: int
    age: int
    date: int
    diagnoses: list[str] = field(default_factory=list)


@dataclass
class LineResult:
    item: int  # catalog index, -1 when unmapped
    chrgitm_lv: int  # 0 when unmapped
    fee_category: int
    fulamt_ownpay_amt: int
    overlmt_amt: int
    preselfpay_amt: int
    inscp_scp_amt: int
    flags: int


@dataclass
class Summary:
    medfee_sumamt: int = 0
    fulamt_ownpay_amt: int = 0
    overlmt_amt: int = 0
    preselfpay_amt: int = 0
    inscp_scp_amt: int = 0
    # [category][0..5] = total, fulamt, overlmt, preselfpay, inscp
    by_category: list[list[int]] = field(
        default_factory=lambda: [[0] * 5 for _ in range(N_CATEGORIES)]
    )


I64_MAX = 2**63 - 1


def preprocess(
    items: list[Item],
    selfpay_psn_types: list[int],
    mappings: dict[str, str],
    lines: list[Line],
    visit: VisitContext,
    tolerance: int,
    rounding: str,
    by_code: dict[str, int] | None = None,
) -> tuple[list[LineResult], Summary]:
    """Preprocesses one visit's lines; `by_code` (code -> index) may be passed in when
    calling many times with the same catalog."""
    if by_code is None:
        by_code = {it.code: i for i, it in enumerate(items)}
    if visit.treatment not in (1, 2, 3):
        raise TwinError(-1, "treatment", "must be 1, 2 or 3")
    slot = selfpay_psn_types.index(visit.psn_type) + 1 if visit.psn_type in selfpay_psn_types else 0
    results: list[LineResult] = []
    s = Summary()
    for n, ln in enumerate(lines):
        if ln.cnt < 0:
            raise TwinError(n, "cnt", "negative")
        if ln.pric < 0:
            raise TwinError(n, "pric", "negative")
        if ln.det_item_fee_sumamt < 0:
            raise TwinError(n, "det_item_fee_sumamt", "negative")
        if ln.hosp_appr_flag not in (0, 1, 2):
            raise TwinError(n, "hosp_appr_flag", "not 0, 1 or 2")
        amount = ln.det_item_fee_sumamt
        if abs(ln.pric * ln.cnt - amount * CNT_SCALE) > tolerance * CNT_SCALE:
            raise TwinError(n, "det_item_fee_sumamt", "differs from pric x cnt")
        if ln.med_list_codg:
            if ln.med_list_codg not in by_code:
                raise TwinError(n, "med_list_codg", "unknown code")
            idx = by_code[ln.med_list_codg]
        else:
            code = mappings.get(ln.medins_list_codg)
            idx = by_code[code] if code is not None and code in by_code else -1
        r = _preprocess_line(items, idx, slot, ln, visit, rounding)
        results.append(r)
        cat = s.by_category[r.fee_category]
        for k, v in enumerate(
            (amount, r.fulamt_ownpay_amt, r.overlmt_amt, r.preselfpay_amt, r.inscp_scp_amt)
        ):
            cat[k] += v
        s.medfee_sumamt += amount
        s.fulamt_ownpay_amt += r.fulamt_ownpay_amt
        s.overlmt_amt += r.overlmt_amt
        s.preselfpay_amt += r.preselfpay_amt
        s.inscp_scp_amt += r.inscp_scp_amt
        if s.medfee_sumamt > I64_MAX:
            raise TwinError(n, "det_item_fee_sumamt", "sum overflows")
    return results, s


def _preprocess_line(
    items: list[Item], idx: int, slot: int, ln: Line, visit: VisitContext, rounding: str
) -> LineResult:
    amount = ln.det_item_fee_sumamt
    if idx < 0:
        return LineResult(-1, 0, 0, amount, 0, 0, 0, UNMAPPED)
    it = items[idx]
    flags = 0
    if it.chrgitm_lv == 3:
        flags |= CLASS_C
    if it.inpatient_only and visit.treatment != TREATMENT_INPATIENT:
        flags |= RESTRICT_INPATIENT
    if it.sex != 0 and it.sex != visit.sex:
        flags |= RESTRICT_SEX
    if not (it.age_min <= visit.age <= it.age_max):
        flags |= RESTRICT_AGE
    if it.diagnoses and not any(d.startswith(p) for p in it.diagnoses for d in visit.diagnoses):
        if ln.hosp_appr_flag == 1:
            flags |= APPROVED
        else:
            flags |= RESTRICT_DIAGNOSIS
    date = ln.fee_date or visit.date
    if (it.valid_from and date < it.valid_from) or (it.valid_to and date > it.valid_to):
        flags |= OUTSIDE_VALIDITY
    if ln.hosp_appr_flag == 2:
        flags |= HOSP_SELFPAY
    self_pay_reasons = (
        CLASS_C
        | RESTRICT_INPATIENT
        | RESTRICT_SEX
        | RESTRICT_AGE
        | RESTRICT_DIAGNOSIS
        | OUTSIDE_VALIDITY
        | HOSP_SELFPAY
    )
    if flags & self_pay_reasons:
        return LineResult(idx, it.chrgitm_lv, it.fee_category, amount, 0, 0, 0, flags)
    overlmt = 0
    if it.price_cap > 0 and ln.pric > it.price_cap:
        allowed = round_div(it.price_cap * ln.cnt, CNT_SCALE, rounding)
        overlmt = max(0, amount - allowed)
        if overlmt:
            flags |= OVER_PRICE_CAP
    capped = amount - overlmt
    bp = it.selfpay_prop_bp[slot] if slot < len(it.selfpay_prop_bp) else it.selfpay_prop_bp[0]
    pre = round_div(capped * bp, BP, rounding)
    if pre:
        flags |= PRESELFPAY
    return LineResult(idx, it.chrgitm_lv, it.fee_category, 0, overlmt, pre, capped - pre, flags)


# ---------------------------------------------------------------------------------------
# Fund split
# ---------------------------------------------------------------------------------------

ACC_FIELDS: Final = (
    "inpatient_count",
    "dedc_paid",
    "hifp_paid",
    "hifp_base",
    "critical_base",
    "critical_paid",
    "cvlserv_paid",
    "maf_paid",
)


@dataclass
class Person:
    age: int
    retired: bool = False
    civil_servant: bool = False
    cross_region: int = 0  # 0 local, 1 cross-region filed, 2 cross-region not filed
    assistance: bool = False
    acct_used: bool = False
    acct_balance: int = 0


@dataclass
class Selection:
    region: int
    insutype: int
    psn_type: int
    treatment: int
    hosp_lv: int
    date: int
    admission_no: int = 0  # nth admission this year; 0 = accumulators' count + 1


@dataclass
class Split:
    rule: int
    act_pay_dedc: int
    hifp_pay: int
    critical_pay: int
    cvlserv_pay: int
    maf_pay: int
    fund_pay_sumamt: int
    psn_part_amt: int
    acct_pay: int
    psn_cash_pay: int
    balc: int
    acc: dict[str, int]


def _matches(values: list[str], v: int) -> bool:
    return not values or v in (int(x) for x in values)


def select_rule(policy: dict[str, Any], sel: Selection) -> int:
    for i, r in enumerate(policy["rules"]):
        if (
            _matches(r["regions"], sel.region)
            and _matches(r["insutypes"], sel.insutype)
            and _matches(r["psn_types"], sel.psn_type)
            and (not r["treatments"] or _treatment_code(sel.treatment) in r["treatments"])
            and _matches(r["hosp_lvs"], sel.hosp_lv)
            and _date_int(r["effective_from"]) <= sel.date <= _date_int(r["effective_to"])
        ):
            return i
    raise LookupError("no rule")


def _treatment_code(t: int) -> str:
    return {1: "outpatient", 2: "inpatient", 3: "special_outpatient"}[t]


def _date_int(s: str) -> int:
    return int(s.replace("-", ""))


def _overlap(lo: int, hi: int | None, a: int, b: int) -> int:
    """Length of [lo, hi) intersected with [a, b); hi None = unbounded."""
    top = b if hi is None else min(hi, b)
    return max(0, top - max(lo, a))


def _leg(parts: list[tuple[int, int]], mode: str, per_band: bool) -> int:
    """Sum of amount * bp / 10_000 over parts, rounded per part or once for the leg."""
    if per_band:
        return sum(round_div(a * r, BP, mode) for a, r in parts)
    return round_div(sum(a * r for a, r in parts), BP, mode)


def _ratio_adjust(adj: dict[str, Any] | None, person: Person) -> int:
    if not adj:
        return 0
    bp = 0
    if person.retired:
        bp += adj.get("retired_bp", 0)
    age = adj.get("age")
    if age:
        if age.get("table"):
            # rows ascend by min_age; the last row the person has reached applies
            applicable = [row["bp"] for row in age["table"] if person.age >= row["min_age"]]
            bp += applicable[-1] if applicable else 0
        if age.get("linear"):
            lin = age["linear"]
            bp += min(lin["max_bp"], max(0, person.age - lin["from_age"]) * lin["bp_per_year"])
    if person.cross_region == 1:
        bp += adj.get("cross_region_filed_bp", 0)
    elif person.cross_region == 2:
        bp += adj.get("cross_region_unfiled_bp", 0)
    return bp


def _consume(parts: list[int], amount: int) -> None:
    """Take `amount` off the burden parts, top first: parts = [D, C, A, P] consumed A, C, D, P."""
    for i in (2, 1, 0, 3):
        take = min(parts[i], amount)
        parts[i] -= take
        amount -= take


def _band_pay(
    bands: list[dict[str, Any]], shift: int, floor: int, a: int, b: int, adj: int, max_bp: int
) -> list[tuple[int, int]]:
    """(segment, ratio) for each band over positions [a, b); bands shifted up by `shift`
    and clipped below `floor`."""
    out = []
    for k, band in enumerate(bands):
        lo = band["from_fen"] + shift
        hi = bands[k + 1]["from_fen"] + shift if k + 1 < len(bands) else None
        lo = max(lo, floor)
        if hi is not None and hi <= lo:
            continue
        seg = _overlap(lo, hi, a, b)
        if seg:
            out.append((seg, min(max_bp, max(0, band["ratio_bp"] + adj))))
    return out


def split(
    policy: dict[str, Any],
    s: Summary | dict[str, int],
    sel: Selection,
    person: Person,
    acc: dict[str, int],
) -> Split:
    if isinstance(s, dict):
        s = Summary(
            medfee_sumamt=s["medfee_sumamt"],
            fulamt_ownpay_amt=s["fulamt_ownpay_amt"],
            overlmt_amt=s["overlmt_amt"],
            preselfpay_amt=s["preselfpay_amt"],
            inscp_scp_amt=s["inscp_scp_amt"],
        )
    if sel.treatment not in (1, 2, 3):
        raise TwinError(-1, "treatment", "must be 1, 2 or 3")
    ri = select_rule(policy, sel)
    rule = policy["rules"][ri]
    mode = policy["rounding"]["mode"]
    per_band = policy["rounding"]["fund_legs"] == "per_band"
    new = dict(acc)
    inscp = s.inscp_scp_amt

    # 1. deductible
    ded = rule["deductible"]
    if ded["kind"] == "annual":
        due = max(0, ded["annual_fen"] - acc["dedc_paid"])
    else:
        n = 1
        if sel.treatment == TREATMENT_INPATIENT:
            n = sel.admission_no or acc["inpatient_count"] + 1
        table = ded["by_admission_fen"]
        due = table[min(n, len(table)) - 1]
        if ded.get("annual_max_fen") is not None:
            due = min(due, max(0, ded["annual_max_fen"] - acc["dedc_paid"]))
    d = min(due, inscp)
    if sel.treatment == TREATMENT_INPATIENT:
        n = sel.admission_no or acc["inpatient_count"] + 1
        new["inpatient_count"] = max(acc["inpatient_count"], n)
    new["dedc_paid"] = acc["dedc_paid"] + d

    # 2. basic pooled fund
    basic = rule["basic"]
    above = inscp - d
    covered = above
    if basic.get("fee_ceiling_fen") is not None:
        covered = min(covered, max(0, basic["fee_ceiling_fen"] - acc["hifp_base"]))
    start = d if basic["band_basis"] == "fee" else 0
    adj = _ratio_adjust(basic.get("adjust"), person)
    max_bp = min(BP, basic.get("max_ratio_bp", BP))
    parts = _band_pay(basic["bands"], 0, 0, start, start + covered, adj, max_bp)
    raw = _leg(parts, mode, per_band)
    hifp = raw
    if basic.get("annual_cap_fen") is not None:
        hifp = min(hifp, max(0, basic["annual_cap_fen"] - acc["hifp_paid"]))
    new["hifp_paid"] = acc["hifp_paid"] + hifp
    new["hifp_base"] = acc["hifp_base"] + covered
    # burden parts: deductible, co-pay within the covered base, above the fund's reach, and
    # the pre-self-pay share (counted only by legs that say so)
    burden = [d, covered - raw, above - covered + raw - hifp, s.preselfpay_amt]

    # 3. critical illness / large-amount subsidy
    crit_pay = 0
    crit = rule.get("critical")
    if crit:
        if crit["basis"] == "burden":
            x = burden[0] + burden[1] + burden[2]
        else:  # above_basic
            x = burden[2]
        if crit["include_preselfpay"]:
            x += burden[3]
        prev = acc["critical_base"]
        if crit["convention"] == "from_threshold":
            shift, floor = crit["threshold_fen"], 0
        else:  # cumulative
            shift, floor = 0, crit["threshold_fen"]
        cparts = _band_pay(crit["bands"], shift, floor, prev, prev + x, 0, BP)
        crit_pay = _leg(cparts, mode, per_band)
        if crit.get("annual_cap_fen") is not None:
            crit_pay = min(crit_pay, max(0, crit["annual_cap_fen"] - acc["critical_paid"]))
        new["critical_base"] = prev + x
        new["critical_paid"] = acc["critical_paid"] + crit_pay
        _consume(burden, crit_pay)

    # 4. civil-servant subsidy
    cs_pay = 0
    cs = rule.get("civil_servant")
    if cs and person.civil_servant:
        extra = cs.get("retired_add_bp", 0) if person.retired else 0
        cparts = [
            (burden[0], min(BP, cs["deductible_bp"] + extra)),
            (burden[1], min(BP, cs["copay_bp"] + extra)),
            (burden[2], min(BP, cs["above_bp"])),
        ]
        cs_pay = _leg([p for p in cparts if p[0]], mode, per_band)
        if cs.get("annual_cap_fen") is not None:
            cs_pay = min(cs_pay, max(0, cs["annual_cap_fen"] - acc["cvlserv_paid"]))
        new["cvlserv_paid"] = acc["cvlserv_paid"] + cs_pay
        _consume(burden, cs_pay)

    # 5. medical assistance
    maf = 0
    ma = rule.get("assistance")
    if ma and person.assistance:
        base = burden[0] + burden[1] + burden[2]
        if ma["include_preselfpay"]:
            base += burden[3]
        maf = round_div(base * ma["share_bp"], BP, mode) if base else 0
        if ma.get("annual_cap_fen") is not None:
            maf = min(maf, max(0, ma["annual_cap_fen"] - acc["maf_paid"]))
        new["maf_paid"] = acc["maf_paid"] + maf
        _consume(burden, maf)

    fund = hifp + crit_pay + cs_pay + maf
    psn_part = s.medfee_sumamt - fund

    # 6. personal account
    acct = 0
    account = rule.get("account")
    if account and person.acct_used:
        eligible = psn_part
        if account["covers"] == "in_scope":
            eligible = burden[0] + burden[1] + burden[2] + burden[3]
        acct = max(0, min(eligible, person.acct_balance))
    return Split(
        rule=ri,
        act_pay_dedc=d,
        hifp_pay=hifp,
        critical_pay=crit_pay,
        cvlserv_pay=cs_pay,
        maf_pay=maf,
        fund_pay_sumamt=fund,
        psn_part_amt=psn_part,
        acct_pay=acct,
        psn_cash_pay=psn_part - acct,
        balc=person.acct_balance - acct,
        acc=new,
    )
