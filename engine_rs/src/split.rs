//! Fund split (the 2207 output): from a preprocessed summary, the selected policy rule, the
//! person and their yearly accumulators, compute the deductible taken, every fund leg, the
//! personal account and cash parts, and the accumulators after this settlement.
//!
//! Order: deductible -> basic pooled fund -> critical illness / large-amount subsidy ->
//! civil-servant subsidy -> medical assistance -> personal account -> cash. The in-scope
//! amount the basic fund leaves to the person is tracked as four parts (deductible, co-pay,
//! above the fund's reach, pre-self-pay); each later leg pays from them and consumes them
//! top first (above, co-pay, deductible, pre-self-pay), so no two legs pay the same fen.

use std::fmt::Write as _;

use crate::error::EngineError;
use crate::policy::{
    AccountCovers, Adjust, Band, BandBasis, BandConvention, CriticalBasis, DeductibleKind,
    LegRounding, Policy, Rule, Selection,
};
use crate::preprocess::{Summary, TREATMENT_INPATIENT};
use crate::rounding::{round_bp, RoundMode, BP};

/// The four preprocessing sums of a settlement (their total is `medfee_sumamt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitInput {
    pub medfee_sumamt: i64,
    pub fulamt_ownpay_amt: i64,
    pub overlmt_amt: i64,
    pub preselfpay_amt: i64,
    pub inscp_scp_amt: i64,
}

impl From<&Summary> for SplitInput {
    fn from(s: &Summary) -> Self {
        Self {
            medfee_sumamt: s.medfee_sumamt,
            fulamt_ownpay_amt: s.fulamt_ownpay_amt,
            overlmt_amt: s.overlmt_amt,
            preselfpay_amt: s.preselfpay_amt,
            inscp_scp_amt: s.inscp_scp_amt,
        }
    }
}

/// The person facts a split depends on.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(name = "Person", module = "engine_rs", frozen, get_all)
)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Person {
    pub age: u32,
    pub retired: bool,
    pub civil_servant: bool,
    /// 0 local, 1 cross-region with filing (备案), 2 cross-region without filing.
    pub cross_region: u8,
    pub assistance: bool,
    pub acct_used: bool,
    pub acct_balance: i64,
}

/// The accumulator fields, in their one order (the order of `Accumulators::FIELDS`, of
/// `values()`, of the `new_<field>` columns of `split_batch`). Hands the list to the macro
/// `$then`: `declare_accumulators` below, and the Python bindings' constructor.
///
/// Adding a field here adds it to the struct, `FIELDS`, `values`/`from_values`, the Python
/// class (constructor, attributes, `to_dict`) and the batch columns; the split itself, the
/// SQL column lists, the proto and `engine_rs.pyi` are updated by hand (stubtest checks the
/// last).
macro_rules! accumulator_fields {
    ($then:ident) => {
        $then! {
            inpatient_count,
            dedc_paid,
            hifp_paid,
            hifp_base,
            critical_base,
            critical_paid,
            cvlserv_paid,
            maf_paid,
        }
    };
}
#[cfg_attr(not(feature = "python"), allow(unused_imports))]
pub(crate) use accumulator_fields;

macro_rules! declare_accumulators {
    ($($field:ident,)+) => {
        /// A person's yearly accumulators for one pool (`rules[].accumulator`).
        #[cfg_attr(
            feature = "python",
            pyo3::pyclass(name = "Accumulators", module = "engine_rs", frozen, eq, get_all)
        )]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Accumulators {
            $(pub $field: i64,)+
        }

        impl Accumulators {
            /// How many accumulators there are.
            pub const LEN: usize = [$(stringify!($field)),+].len();

            /// The field names, in declaration order.
            pub const FIELDS: [&'static str; Self::LEN] = [$(stringify!($field)),+];

            /// The values, in `FIELDS` order.
            pub fn values(&self) -> [i64; Self::LEN] {
                [$(self.$field),+]
            }

            /// The inverse of `values`.
            pub fn from_values(values: [i64; Self::LEN]) -> Self {
                let [$($field),+] = values;
                Self { $($field),+ }
            }
        }
    };
}
accumulator_fields!(declare_accumulators);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitResult {
    pub rule: u32,
    pub act_pay_dedc: i64,
    pub hifp_pay: i64,
    pub critical_pay: i64,
    pub cvlserv_pay: i64,
    pub maf_pay: i64,
    pub fund_pay_sumamt: i64,
    pub psn_part_amt: i64,
    pub acct_pay: i64,
    pub psn_cash_pay: i64,
    pub balc: i64,
    pub acc: Accumulators,
}

/// One fund leg with its derivation: the base it was computed on and how.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(name = "FundLeg", module = "engine_rs", frozen, get_all)
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FundLeg {
    pub fund_pay_type: String,
    pub base: i64,
    pub amount: i64,
    pub setl_proc_info: String,
}

/// Checks the inputs a split relies on; `row` names the batch row in errors.
pub fn check_inputs(
    row: usize,
    s: &SplitInput,
    person: &Person,
    acc: &Accumulators,
) -> Result<(), EngineError> {
    let parts = [
        ("medfee_sumamt", s.medfee_sumamt),
        ("fulamt_ownpay_amt", s.fulamt_ownpay_amt),
        ("overlmt_amt", s.overlmt_amt),
        ("preselfpay_amt", s.preselfpay_amt),
        ("inscp_scp_amt", s.inscp_scp_amt),
        ("acct_balance", person.acct_balance),
    ];
    for (f, v) in parts {
        if v < 0 {
            return Err(EngineError::input(row, f, "must not be negative"));
        }
    }
    let sum = [
        s.fulamt_ownpay_amt,
        s.overlmt_amt,
        s.preselfpay_amt,
        s.inscp_scp_amt,
    ]
    .iter()
    .try_fold(0i64, |a, &b| a.checked_add(b));
    if sum != Some(s.medfee_sumamt) {
        return Err(EngineError::input(
            row,
            "medfee_sumamt",
            "must equal fulamt_ownpay_amt + overlmt_amt + preselfpay_amt + inscp_scp_amt",
        ));
    }
    if person.age > 150 {
        return Err(EngineError::input(row, "age", "must be 0..=150"));
    }
    if person.cross_region > 2 {
        return Err(EngineError::input(row, "cross_region", "must be 0, 1 or 2"));
    }
    for (f, v) in Accumulators::FIELDS.iter().zip(acc.values()) {
        if v < 0 {
            return Err(EngineError::input(
                row,
                f,
                "accumulator must not be negative",
            ));
        }
    }
    Ok(())
}

/// The room left under an optional annual cap.
fn room(cap: Option<i64>, used: i64) -> i64 {
    cap.map_or(i64::MAX, |c| (c - used).max(0))
}

/// Sum of `segment * bp / 10_000` over parts, rounded per part or once for the leg.
fn leg(parts: &[(i64, i64)], mode: RoundMode, per_band: bool) -> i64 {
    if per_band {
        parts
            .iter()
            .map(|&(a, r)| round_bp(i128::from(a) * i128::from(r), mode) as i64)
            .sum()
    } else {
        let num: i128 = parts
            .iter()
            .map(|&(a, r)| i128::from(a) * i128::from(r))
            .sum();
        round_bp(num, mode) as i64
    }
}

/// (segment, ratio) for every band overlapping positions `[a, b)`; bands are shifted up by
/// `shift` and clipped below `floor`, ratios adjusted by `adj` and clamped to `[0, max_bp]`.
#[allow(clippy::too_many_arguments)]
fn band_parts(
    bands: &[Band],
    shift: i64,
    floor: i64,
    a: i64,
    b: i64,
    adj: i64,
    max_bp: i64,
    out: &mut Vec<(i64, i64)>,
) {
    out.clear();
    for (k, band) in bands.iter().enumerate() {
        let lo = band.from_fen.saturating_add(shift).max(floor);
        let hi = bands
            .get(k + 1)
            .map_or(i64::MAX, |n| n.from_fen.saturating_add(shift));
        if hi <= lo {
            continue;
        }
        let seg = hi.min(b) - lo.max(a);
        if seg > 0 {
            out.push((seg, (band.ratio_bp + adj).clamp(0, max_bp)));
        }
    }
}

fn ratio_adjust(adj: Option<&Adjust>, p: &Person) -> i64 {
    let Some(a) = adj else { return 0 };
    let mut bp = 0;
    if p.retired {
        bp += a.retired_bp;
    }
    if let Some(age) = &a.age {
        let years = i64::from(p.age);
        if let Some(table) = &age.table {
            // rows ascend by min_age; the last row the person has reached applies
            if let Some(row) = table.iter().rev().find(|r| years >= r.min_age) {
                bp += row.bp;
            }
        }
        if let Some(lin) = &age.linear {
            bp += ((years - lin.from_age).max(0) * lin.bp_per_year).min(lin.max_bp);
        }
    }
    bp += match p.cross_region {
        1 => a.cross_region_filed_bp,
        2 => a.cross_region_unfiled_bp,
        _ => 0,
    };
    bp
}

/// Takes `amount` off the burden parts `[deductible, co-pay, above, pre-self-pay]`, top first.
fn consume(parts: &mut [i64; 4], mut amount: i64) {
    for i in [2, 1, 0, 3] {
        let take = parts[i].min(amount);
        parts[i] -= take;
        amount -= take;
    }
}

/// Intermediate figures kept for the derivation text of a single settlement.
#[derive(Debug, Default)]
pub struct Trace {
    pub admission_no: i64,
    pub deductible_due: i64,
    pub covered: i64,
    pub basic_parts: Vec<(i64, i64)>,
    pub basic_uncapped: i64,
    pub critical_x: i64,
    pub critical_prev: i64,
    pub critical_parts: Vec<(i64, i64)>,
    pub critical_uncapped: i64,
    pub cvlserv_parts: Vec<(i64, i64)>,
    pub cvlserv_uncapped: i64,
    pub maf_base: i64,
    pub maf_uncapped: i64,
    pub acct_eligible: i64,
}

fn add(row: usize, field: &'static str, a: i64, b: i64) -> Result<i64, EngineError> {
    a.checked_add(b)
        .ok_or_else(|| EngineError::input(row, field, "accumulator overflows"))
}

/// `$new.$field = $acc.$field + $by`, an overflow being an input error naming the field.
macro_rules! advance {
    ($row:expr, $new:ident, $acc:ident . $field:ident, $by:expr) => {
        $new.$field = add($row, stringify!($field), $acc.$field, $by)?
    };
}

/// Splits one settlement under rule `ri` of `policy`. Inputs must have passed `check_inputs`.
#[allow(clippy::too_many_arguments)]
pub fn split_rule(
    row: usize,
    policy: &Policy,
    ri: usize,
    s: &SplitInput,
    sel: &Selection,
    p: &Person,
    acc: &Accumulators,
    scratch: &mut Vec<(i64, i64)>,
    mut trace: Option<&mut Trace>,
) -> Result<SplitResult, EngineError> {
    let rule: &Rule = policy.rule(ri);
    let mode = policy.doc.rounding.mode;
    let per_band = policy.doc.rounding.fund_legs == LegRounding::PerBand;
    let mut new = *acc;
    let inscp = s.inscp_scp_amt;

    // 1. deductible
    let inpatient = sel.treatment == TREATMENT_INPATIENT;
    let admission_no = if inpatient {
        if sel.admission_no > 0 {
            i64::from(sel.admission_no)
        } else {
            add(row, "inpatient_count", acc.inpatient_count, 1)?
        }
    } else {
        1
    };
    let ded = &rule.deductible;
    let due = match ded.kind {
        DeductibleKind::Annual => (ded.annual_fen.unwrap_or(0) - acc.dedc_paid).max(0),
        DeductibleKind::PerVisit => {
            let table = &ded.by_admission_fen;
            let k = usize::try_from(admission_no)
                .unwrap_or(usize::MAX)
                .min(table.len());
            table[k - 1].min(room(ded.annual_max_fen, acc.dedc_paid))
        }
    };
    let d = due.min(inscp);
    if inpatient {
        new.inpatient_count = acc.inpatient_count.max(admission_no);
    }
    advance!(row, new, acc.dedc_paid, d);

    // 2. basic pooled fund
    let basic = &rule.basic;
    let above = inscp - d;
    let covered = above.min(room(basic.fee_ceiling_fen, acc.hifp_base));
    let start = if basic.band_basis == BandBasis::Fee {
        d
    } else {
        0
    };
    let adj = ratio_adjust(basic.adjust.as_ref(), p);
    band_parts(
        &basic.bands,
        0,
        0,
        start,
        start + covered,
        adj,
        basic.max_ratio_bp.min(BP),
        scratch,
    );
    let raw = leg(scratch, mode, per_band);
    let hifp = raw.min(room(basic.annual_cap_fen, acc.hifp_paid));
    advance!(row, new, acc.hifp_paid, hifp);
    advance!(row, new, acc.hifp_base, covered);
    if let Some(t) = trace.as_deref_mut() {
        t.admission_no = admission_no;
        t.deductible_due = due;
        t.covered = covered;
        t.basic_parts = scratch.clone();
        t.basic_uncapped = raw;
    }
    let mut burden = [
        d,
        covered - raw,
        above - covered + raw - hifp,
        s.preselfpay_amt,
    ];

    // 3. critical illness (residents) / large-amount subsidy (employees)
    let mut critical = 0;
    if let Some(cr) = &rule.critical {
        let mut x = match cr.basis {
            CriticalBasis::Burden => burden[0] + burden[1] + burden[2],
            CriticalBasis::AboveBasic => burden[2],
        };
        if cr.include_preselfpay {
            x += burden[3];
        }
        let prev = acc.critical_base;
        advance!(row, new, acc.critical_base, x);
        let end = new.critical_base;
        let (shift, floor) = match cr.convention {
            BandConvention::FromThreshold => (cr.threshold_fen, 0),
            BandConvention::Cumulative => (0, cr.threshold_fen),
        };
        band_parts(&cr.bands, shift, floor, prev, end, 0, BP, scratch);
        let raw = leg(scratch, mode, per_band);
        critical = raw.min(room(cr.annual_cap_fen, acc.critical_paid));
        advance!(row, new, acc.critical_paid, critical);
        consume(&mut burden, critical);
        if let Some(t) = trace.as_deref_mut() {
            t.critical_x = x;
            t.critical_prev = prev;
            t.critical_parts = scratch.clone();
            t.critical_uncapped = raw;
        }
    }

    // 4. civil-servant subsidy
    let mut cvlserv = 0;
    if let (Some(cs), true) = (&rule.civil_servant, p.civil_servant) {
        let extra = if p.retired { cs.retired_add_bp } else { 0 };
        scratch.clear();
        for (amount, bp) in [
            (burden[0], (cs.deductible_bp + extra).min(BP)),
            (burden[1], (cs.copay_bp + extra).min(BP)),
            (burden[2], cs.above_bp),
        ] {
            if amount > 0 {
                scratch.push((amount, bp));
            }
        }
        let raw = leg(scratch, mode, per_band);
        cvlserv = raw.min(room(cs.annual_cap_fen, acc.cvlserv_paid));
        advance!(row, new, acc.cvlserv_paid, cvlserv);
        consume(&mut burden, cvlserv);
        if let Some(t) = trace.as_deref_mut() {
            t.cvlserv_parts = scratch.clone();
            t.cvlserv_uncapped = raw;
        }
    }

    // 5. medical assistance
    let mut maf = 0;
    if let (Some(ma), true) = (&rule.assistance, p.assistance) {
        let mut base = burden[0] + burden[1] + burden[2];
        if ma.include_preselfpay {
            base += burden[3];
        }
        let raw = round_bp(i128::from(base) * i128::from(ma.share_bp), mode) as i64;
        maf = raw.min(room(ma.annual_cap_fen, acc.maf_paid));
        advance!(row, new, acc.maf_paid, maf);
        consume(&mut burden, maf);
        if let Some(t) = trace.as_deref_mut() {
            t.maf_base = base;
            t.maf_uncapped = raw;
        }
    }

    let fund = hifp + critical + cvlserv + maf;
    let psn_part = s.medfee_sumamt - fund;

    // 6. personal account
    let mut acct = 0;
    if let (Some(a), true) = (&rule.account, p.acct_used) {
        let eligible = match a.covers {
            AccountCovers::All => psn_part,
            AccountCovers::InScope => burden.iter().sum(),
        };
        acct = eligible.min(p.acct_balance).max(0);
        if let Some(t) = trace {
            t.acct_eligible = eligible;
        }
    }
    Ok(SplitResult {
        rule: ri as u32,
        act_pay_dedc: d,
        hifp_pay: hifp,
        critical_pay: critical,
        cvlserv_pay: cvlserv,
        maf_pay: maf,
        fund_pay_sumamt: fund,
        psn_part_amt: psn_part,
        acct_pay: acct,
        psn_cash_pay: psn_part - acct,
        balc: p.acct_balance - acct,
        acc: new,
    })
}

/// Selects the rule and splits; `row` names the batch row in errors.
#[allow(clippy::too_many_arguments)]
pub fn split(
    row: usize,
    policy: &Policy,
    s: &SplitInput,
    sel: &Selection,
    p: &Person,
    acc: &Accumulators,
    scratch: &mut Vec<(i64, i64)>,
    trace: Option<&mut Trace>,
) -> Result<SplitResult, EngineError> {
    check_inputs(row, s, p, acc)?;
    if !(1..=3).contains(&sel.treatment) {
        return Err(EngineError::input(row, "treatment", "must be 1, 2 or 3"));
    }
    let ri = policy.select(sel).ok_or_else(|| EngineError::NoRule {
        row,
        selection: format!(
            "region {} insutype {} psn_type {} treatment {} hosp_lv {} date {}",
            sel.region, sel.insutype, sel.psn_type, sel.treatment, sel.hosp_lv, sel.date
        ),
    })?;
    split_rule(row, policy, ri, s, sel, p, acc, scratch, trace)
}

/// Formats fen as yuan with two decimals, exactly (no floating point).
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn pct(bp: i64) -> String {
    if bp % 100 == 0 {
        format!("{}%", bp / 100)
    } else {
        format!("{}.{:02}%", bp / 100, bp % 100)
    }
}

fn parts_text(parts: &[(i64, i64)]) -> String {
    let mut s = String::new();
    for (k, &(a, r)) in parts.iter().enumerate() {
        if k > 0 {
            s.push_str(" + ");
        }
        let _ = write!(s, "{} x {}", yuan(a), pct(r));
        let _ = k;
    }
    s
}

fn cap_text(uncapped: i64, paid: i64, cap: Option<i64>) -> String {
    match cap {
        Some(c) if paid < uncapped => format!(", 年度封顶 {} 限付 {}", yuan(c), yuan(paid)),
        _ => String::new(),
    }
}

/// One settlement split with its fund legs and their derivation (what a slip shows):
/// `split`, traced, then `legs`.
pub fn split_with_legs(
    policy: &Policy,
    s: &SplitInput,
    sel: &Selection,
    p: &Person,
    acc: &Accumulators,
) -> Result<(SplitResult, Vec<FundLeg>), EngineError> {
    let mut trace = Trace::default();
    let mut scratch = Vec::new();
    let r = split(0, policy, s, sel, p, acc, &mut scratch, Some(&mut trace))?;
    let legs = legs(policy, &r, &trace, sel);
    Ok((r, legs))
}

/// The fund legs of a settlement with a readable derivation (`setl_proc_info`) for each.
pub fn legs(policy: &Policy, r: &SplitResult, t: &Trace, sel: &Selection) -> Vec<FundLeg> {
    let rule = policy.rule(r.rule as usize);
    let mut out = Vec::new();
    let basic = &rule.basic;
    let ded_text = if sel.treatment == TREATMENT_INPATIENT {
        format!(
            "第{}次住院起付线 {}",
            t.admission_no,
            yuan(t.deductible_due)
        )
    } else {
        format!("起付线 {}", yuan(t.deductible_due))
    };
    out.push(FundLeg {
        fund_pay_type: basic.fund_pay_type.clone(),
        base: t.covered,
        amount: r.hifp_pay,
        setl_proc_info: format!(
            "规则 {}; {} 实付 {}; 统筹 {} = {}{}",
            rule.id,
            ded_text,
            yuan(r.act_pay_dedc),
            if t.basic_parts.is_empty() {
                "0.00 x 0%".into()
            } else {
                parts_text(&t.basic_parts)
            },
            yuan(t.basic_uncapped),
            cap_text(t.basic_uncapped, r.hifp_pay, basic.annual_cap_fen),
        ),
    });
    if let Some(cr) = &rule.critical {
        out.push(FundLeg {
            fund_pay_type: cr.fund_pay_type.clone(),
            base: t.critical_x,
            amount: r.critical_pay,
            setl_proc_info: format!(
                "年度累计 {} -> {} (起付 {}); {} = {}{}",
                yuan(t.critical_prev),
                yuan(t.critical_prev + t.critical_x),
                yuan(cr.threshold_fen),
                if t.critical_parts.is_empty() {
                    "未达起付".into()
                } else {
                    parts_text(&t.critical_parts)
                },
                yuan(t.critical_uncapped),
                cap_text(t.critical_uncapped, r.critical_pay, cr.annual_cap_fen),
            ),
        });
    }
    if let (Some(cs), true) = (
        &rule.civil_servant,
        r.cvlserv_pay > 0 || !t.cvlserv_parts.is_empty(),
    ) {
        out.push(FundLeg {
            fund_pay_type: cs.fund_pay_type.clone(),
            base: t.cvlserv_parts.iter().map(|p| p.0).sum(),
            amount: r.cvlserv_pay,
            setl_proc_info: format!(
                "公务员补助 {} = {}{}",
                parts_text(&t.cvlserv_parts),
                yuan(t.cvlserv_uncapped),
                cap_text(t.cvlserv_uncapped, r.cvlserv_pay, cs.annual_cap_fen),
            ),
        });
    }
    if let (Some(ma), true) = (&rule.assistance, t.maf_base > 0 || r.maf_pay > 0) {
        out.push(FundLeg {
            fund_pay_type: ma.fund_pay_type.clone(),
            base: t.maf_base,
            amount: r.maf_pay,
            setl_proc_info: format!(
                "医疗救助 {} x {} = {}{}",
                yuan(t.maf_base),
                pct(ma.share_bp),
                yuan(t.maf_uncapped),
                cap_text(t.maf_uncapped, r.maf_pay, ma.annual_cap_fen),
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rule_body: &str, rounding: &str) -> Policy {
        let text = format!(
            "schema = \"medsettle.policy/1\"\nid = \"t\"\nversion = 1\n{rounding}\n[[rules]]\nid = \"r\"\n{rule_body}"
        );
        Policy::from_toml(&text).unwrap()
    }

    fn inscp(fen: i64) -> SplitInput {
        SplitInput {
            medfee_sumamt: fen,
            inscp_scp_amt: fen,
            ..Default::default()
        }
    }

    fn run(
        p: &Policy,
        s: SplitInput,
        sel: Selection,
        person: Person,
        acc: Accumulators,
    ) -> SplitResult {
        let mut scratch = Vec::new();
        split(0, p, &s, &sel, &person, &acc, &mut scratch, None).unwrap()
    }

    fn inpatient() -> Selection {
        Selection {
            treatment: 2,
            date: 20260601,
            ..Default::default()
        }
    }

    const FLAT: &str = r#"
deductible = { kind = "per_visit", by_admission_fen = [200000] }
basic = { band_basis = "fee", bands = [{ from_fen = 0, ratio_bp = 8000 }] }
"#;

    #[test]
    fn flat_ratio_basic() {
        let r = run(
            &policy(FLAT, ""),
            inscp(500_000),
            inpatient(),
            Person::default(),
            Accumulators::default(),
        );
        assert_eq!(
            (r.hifp_pay, r.psn_part_amt, r.act_pay_dedc),
            (240_000, 260_000, 200_000)
        );
        assert_eq!(r.acc.inpatient_count, 1);
        assert_eq!(r.acc.dedc_paid, 200_000);
    }

    #[test]
    fn bands_with_fund_cap() {
        let p = policy(
            r#"
deductible = { kind = "per_visit", by_admission_fen = [40000, 28000, 20000] }
basic = { band_basis = "fee", annual_cap_fen = 6000000, bands = [
  { from_fen = 0, ratio_bp = 8000 }, { from_fen = 1000000, ratio_bp = 8500 }, { from_fen = 3000000, ratio_bp = 9000 } ] }
"#,
            "",
        );
        let r = run(
            &p,
            inscp(10_000_000),
            inpatient(),
            Person::default(),
            Accumulators::default(),
        );
        assert_eq!(r.hifp_pay, 6_000_000);
        let mut t = Trace::default();
        let mut scratch = Vec::new();
        let sel = Selection {
            admission_no: 2,
            ..inpatient()
        };
        let r2 = split(
            0,
            &p,
            &inscp(3_000_000),
            &sel,
            &Person::default(),
            &Accumulators::default(),
            &mut scratch,
            Some(&mut t),
        )
        .unwrap();
        assert_eq!(r2.act_pay_dedc, 28_000);
        assert_eq!(r2.hifp_pay, 777_600 + 1_700_000);
        let legs = legs(&p, &r2, &t, &sel);
        assert!(
            legs[0].setl_proc_info.contains("第2次住院起付线 280.00"),
            "{}",
            legs[0].setl_proc_info
        );
    }

    #[test]
    fn identities_hold_with_every_leg() {
        let p = policy(
            r#"
deductible = { kind = "per_visit", by_admission_fen = [130000], annual_max_fen = 200000 }
basic = { band_basis = "above_deductible", annual_cap_fen = 500000, fee_ceiling_fen = 800000,
  bands = [{ from_fen = 0, ratio_bp = 8500 }],
  adjust = { retired_bp = 500, age = { table = [{ min_age = 70, bp = 300 }] }, cross_region_unfiled_bp = -2000 } }
critical = { fund_pay_type = "330100", basis = "above_basic", convention = "cumulative", threshold_fen = 0,
  bands = [{ from_fen = 0, ratio_bp = 9000 }], annual_cap_fen = 300000 }
civil_servant = { deductible_bp = 9000, copay_bp = 9000, above_bp = 10000, retired_add_bp = 500 }
assistance = { share_bp = 7000, include_preselfpay = true }
account = { covers = "all" }
"#,
            "rounding = { mode = \"half_even\", fund_legs = \"per_band\" }",
        );
        let s = SplitInput {
            medfee_sumamt: 2_345_678,
            fulamt_ownpay_amt: 100_001,
            overlmt_amt: 3_333,
            preselfpay_amt: 44_444,
            inscp_scp_amt: 2_345_678 - 100_001 - 3_333 - 44_444,
        };
        let person = Person {
            age: 75,
            retired: true,
            civil_servant: true,
            cross_region: 2,
            assistance: true,
            acct_used: true,
            acct_balance: 12_345,
        };
        let r = run(
            &p,
            s,
            inpatient(),
            person,
            Accumulators {
                dedc_paid: 100_000,
                ..Default::default()
            },
        );
        assert_eq!(r.act_pay_dedc, 100_000);
        assert_eq!(
            r.hifp_pay + r.critical_pay + r.cvlserv_pay + r.maf_pay,
            r.fund_pay_sumamt
        );
        assert_eq!(
            r.fund_pay_sumamt + r.acct_pay + r.psn_cash_pay,
            s.medfee_sumamt
        );
        assert!(r.hifp_pay <= 500_000 && r.critical_pay <= 300_000);
        assert_eq!(r.acct_pay, 12_345);
        assert_eq!(r.balc, 0);
    }

    #[test]
    fn yuan_is_exact() {
        assert_eq!(yuan(123_456), "1234.56");
        assert_eq!(yuan(5), "0.05");
        assert_eq!(yuan(-5), "-0.05");
        assert_eq!(yuan(i64::MIN), "-92233720368547758.08");
    }
}
