//! The policy model: a versioned document (TOML or JSON) that says, per region, insurance
//! type, person type, treatment type, hospital level and date, how a settlement is split.
//!
//! Parsing goes through `serde_json::Value` so both formats report a bad field by the same
//! path (`rules[1].basic.bands[0].ratio_bp`). After the serde pass, `validate` checks what
//! types cannot say (ranges, ordering, dates) and `compile` turns the selection criteria into
//! integers for fast matching. `to_json` gives the canonical form, with every default filled
//! in, that storage keeps and the Python twin reads. docs/policy.md explains every field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::rounding::{RoundMode, BP};

/// The schema this engine reads.
pub const SCHEMA: &str = "medsettle.policy/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub schema: String,
    pub id: String,
    pub version: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub preprocess: PreprocessCfg,
    #[serde(default)]
    pub rounding: Rounding,
    /// The emergency plan; absent: the front-end's own settings apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<OfflineLimits>,
    pub rules: Vec<Rule>,
}

/// The emergency plan (应急预案): how far a center-mode front-end may settle on its own,
/// from its cached accumulators, while the center does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineLimits {
    /// Largest medfee_sumamt of one offline settlement, in fen.
    pub max_medfee_fen: i64,
    /// Most offline settlements of one front-end in one day.
    pub max_per_day: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessCfg {
    /// Largest accepted |pric x cnt - det_item_fee_sumamt| per line, in fen.
    #[serde(default = "one")]
    pub line_tolerance_fen: i64,
}

impl Default for PreprocessCfg {
    fn default() -> Self {
        Self {
            line_tolerance_fen: 1,
        }
    }
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LegRounding {
    /// Each band's (or share's) product is rounded to the fen, then summed.
    PerBand,
    /// The exact products of a leg are summed and the leg is rounded once.
    #[default]
    PerLeg,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rounding {
    #[serde(default)]
    pub mode: RoundMode,
    #[serde(default)]
    pub fund_legs: LegRounding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Treatment {
    Outpatient,
    Inpatient,
    SpecialOutpatient,
}

impl Treatment {
    pub fn code(self) -> u8 {
        match self {
            Self::Outpatient => 1,
            Self::Inpatient => 2,
            Self::SpecialOutpatient => 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub insutypes: Vec<String>,
    #[serde(default)]
    pub psn_types: Vec<String>,
    #[serde(default)]
    pub treatments: Vec<Treatment>,
    #[serde(default)]
    pub hosp_lvs: Vec<String>,
    #[serde(default = "open_from")]
    pub effective_from: String,
    #[serde(default = "open_to")]
    pub effective_to: String,
    /// Which set of yearly accumulators this rule reads and advances.
    #[serde(default = "default_pool")]
    pub accumulator: String,
    pub deductible: Deductible,
    pub basic: Basic,
    #[serde(default)]
    pub critical: Option<Critical>,
    #[serde(default)]
    pub civil_servant: Option<CivilServant>,
    #[serde(default)]
    pub assistance: Option<Assistance>,
    #[serde(default)]
    pub account: Option<Account>,
}

fn open_from() -> String {
    "0001-01-01".into()
}
fn open_to() -> String {
    "9999-12-31".into()
}
fn default_pool() -> String {
    "default".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeductibleKind {
    /// A deductible per visit or admission, by the admission's number in the year.
    PerVisit,
    /// One deductible per year, met by what the person paid so far.
    Annual,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deductible {
    pub kind: DeductibleKind,
    /// per_visit: deductible of the 1st, 2nd, ... admission; the last repeats.
    #[serde(default)]
    pub by_admission_fen: Vec<i64>,
    /// per_visit: most the person pays in deductibles in a year.
    #[serde(default)]
    pub annual_max_fen: Option<i64>,
    /// annual: the yearly deductible.
    #[serde(default)]
    pub annual_fen: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BandBasis {
    /// Band bounds are positions on the visit's in-scope fee; the deductible occupies [0, D).
    Fee,
    /// Band bounds are positions on the amount above the deductible.
    AboveDeductible,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub from_fen: i64,
    pub ratio_bp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basic {
    #[serde(default = "fund_basic")]
    pub fund_pay_type: String,
    pub band_basis: BandBasis,
    pub bands: Vec<Band>,
    #[serde(default = "bp_whole")]
    pub max_ratio_bp: i64,
    #[serde(default)]
    pub annual_cap_fen: Option<i64>,
    #[serde(default)]
    pub fee_ceiling_fen: Option<i64>,
    #[serde(default)]
    pub adjust: Option<Adjust>,
}

fn fund_basic() -> String {
    "310100".into()
}
fn bp_whole() -> i64 {
    BP
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    #[serde(default)]
    pub retired_bp: i64,
    #[serde(default)]
    pub age: Option<AgeAdjust>,
    #[serde(default)]
    pub cross_region_filed_bp: i64,
    #[serde(default)]
    pub cross_region_unfiled_bp: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeAdjust {
    #[serde(default)]
    pub table: Option<Vec<AgeRow>>,
    #[serde(default)]
    pub linear: Option<AgeLinear>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeRow {
    pub min_age: i64,
    pub bp: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeLinear {
    pub from_age: i64,
    pub bp_per_year: i64,
    pub max_bp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticalBasis {
    /// The person's in-scope burden after the basic fund (deductible + co-pay + above reach).
    Burden,
    /// Only the in-scope amount beyond the basic fund's reach (employee large-amount subsidy).
    AboveBasic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BandConvention {
    /// Band bounds are measured upward from the threshold.
    FromThreshold,
    /// Band bounds are positions on the cumulative yearly amount; nothing below the threshold.
    Cumulative,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Critical {
    pub fund_pay_type: String,
    pub basis: CriticalBasis,
    pub convention: BandConvention,
    pub threshold_fen: i64,
    pub bands: Vec<Band>,
    #[serde(default)]
    pub annual_cap_fen: Option<i64>,
    #[serde(default)]
    pub include_preselfpay: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CivilServant {
    #[serde(default = "fund_cvlserv")]
    pub fund_pay_type: String,
    pub deductible_bp: i64,
    pub copay_bp: i64,
    pub above_bp: i64,
    #[serde(default)]
    pub retired_add_bp: i64,
    #[serde(default)]
    pub annual_cap_fen: Option<i64>,
}

fn fund_cvlserv() -> String {
    "320100".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assistance {
    #[serde(default = "fund_maf")]
    pub fund_pay_type: String,
    pub share_bp: i64,
    #[serde(default)]
    pub annual_cap_fen: Option<i64>,
    #[serde(default)]
    pub include_preselfpay: bool,
}

fn fund_maf() -> String {
    "610100".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountCovers {
    /// The personal share of in-scope costs (deductible, co-pay, pre-self-pay).
    InScope,
    /// Everything the person pays, out-of-scope items included.
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub covers: AccountCovers,
}

/// A rule's selection criteria as integers (empty = any).
#[derive(Debug, Clone)]
pub struct Criteria {
    pub regions: Vec<u32>,
    pub insutypes: Vec<u32>,
    pub psn_types: Vec<u32>,
    pub treatments: Vec<u8>,
    pub hosp_lvs: Vec<u32>,
    pub from: i32,
    pub to: i32,
}

/// What selects the policy rule of a settlement.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(name = "Selection", module = "engine_rs", frozen, get_all)
)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    pub region: u32,
    pub insutype: u32,
    pub psn_type: u32,
    /// 1 outpatient, 2 inpatient, 3 special outpatient.
    pub treatment: u8,
    pub hosp_lv: u32,
    /// yyyymmdd
    pub date: i32,
    /// The admission's number in the year; 0 = the accumulators' count + 1.
    pub admission_no: u32,
}

/// A validated, compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub doc: PolicyDoc,
    pub criteria: Vec<Criteria>,
}

impl Policy {
    pub fn from_json(text: &str) -> Result<Self, EngineError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::policy("$", format!("not valid JSON: {e}")))?;
        Self::from_value(v)
    }

    pub fn from_toml(text: &str) -> Result<Self, EngineError> {
        let t: toml::Table = toml::from_str(text)
            .map_err(|e| EngineError::policy("$", format!("not valid TOML: {e}")))?;
        Self::from_value(toml_to_json(toml::Value::Table(t)))
    }

    pub fn from_value(v: Value) -> Result<Self, EngineError> {
        let doc: PolicyDoc = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            EngineError::policy(
                if path == "." { "$".into() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        let criteria = validate(&doc)?;
        Ok(Self { doc, criteria })
    }

    /// The canonical JSON form, every default filled in.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.doc).expect("a policy always serialises")
    }

    /// The first rule whose criteria all match, or None.
    pub fn select(&self, s: &Selection) -> Option<usize> {
        self.criteria.iter().position(|c| {
            (c.regions.is_empty() || c.regions.contains(&s.region))
                && (c.insutypes.is_empty() || c.insutypes.contains(&s.insutype))
                && (c.psn_types.is_empty() || c.psn_types.contains(&s.psn_type))
                && (c.treatments.is_empty() || c.treatments.contains(&s.treatment))
                && (c.hosp_lvs.is_empty() || c.hosp_lvs.contains(&s.hosp_lv))
                && c.from <= s.date
                && s.date <= c.to
        })
    }

    pub fn rule(&self, i: usize) -> &Rule {
        &self.doc.rules[i]
    }
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        // Dates are read as text: `2026-01-01` and "2026-01-01" mean the same.
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Parses `YYYY-MM-DD` into yyyymmdd.
pub fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i32>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (y >= 1 && (1..=days).contains(&d)).then_some(y * 10_000 + m * 100 + d)
}

struct Checker {
    path: String,
}

impl Checker {
    fn at(&self, field: &str) -> String {
        format!("{}.{}", self.path, field)
    }
    fn money(&self, field: &str, v: i64) -> Result<(), EngineError> {
        if v < 0 {
            return Err(EngineError::policy(self.at(field), "must not be negative"));
        }
        Ok(())
    }
    fn ratio(&self, field: &str, v: i64) -> Result<(), EngineError> {
        if !(0..=BP).contains(&v) {
            return Err(EngineError::policy(
                self.at(field),
                "must be 0..=10000 basis points",
            ));
        }
        Ok(())
    }
    fn adjustment(&self, field: &str, v: i64) -> Result<(), EngineError> {
        if !(-BP..=BP).contains(&v) {
            return Err(EngineError::policy(
                self.at(field),
                "must be -10000..=10000 basis points",
            ));
        }
        Ok(())
    }
    fn opt_money(&self, field: &str, v: Option<i64>) -> Result<(), EngineError> {
        v.map_or(Ok(()), |v| self.money(field, v))
    }
    fn fund_code(&self, field: &str, v: &str) -> Result<(), EngineError> {
        if v.len() != 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EngineError::policy(
                self.at(field),
                "must be a 6-digit fund_pay_type",
            ));
        }
        Ok(())
    }
    fn bands(&self, field: &str, bands: &[Band]) -> Result<(), EngineError> {
        if bands.is_empty() {
            return Err(EngineError::policy(
                self.at(field),
                "needs at least one band",
            ));
        }
        for (k, b) in bands.iter().enumerate() {
            let sub = Checker {
                path: format!("{}.{}[{}]", self.path, field, k),
            };
            sub.money("from_fen", b.from_fen)?;
            sub.ratio("ratio_bp", b.ratio_bp)?;
            if k > 0 && b.from_fen <= bands[k - 1].from_fen {
                return Err(EngineError::policy(
                    sub.at("from_fen"),
                    "bands must ascend strictly by from_fen",
                ));
            }
        }
        Ok(())
    }
}

fn codes(path: &str, values: &[String]) -> Result<Vec<u32>, EngineError> {
    values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(EngineError::policy(
                    format!("{path}[{k}]"),
                    "must be a numeric code",
                ));
            }
            Ok(v.parse::<u32>().expect("at most 9 digits"))
        })
        .collect()
}

fn validate(doc: &PolicyDoc) -> Result<Vec<Criteria>, EngineError> {
    if doc.schema != SCHEMA {
        return Err(EngineError::policy(
            "schema",
            format!("must be \"{SCHEMA}\""),
        ));
    }
    if doc.id.is_empty() {
        return Err(EngineError::policy("id", "must not be empty"));
    }
    if doc.preprocess.line_tolerance_fen < 0 {
        return Err(EngineError::policy(
            "preprocess.line_tolerance_fen",
            "must not be negative",
        ));
    }
    if doc.offline.is_some_and(|o| o.max_medfee_fen < 0) {
        return Err(EngineError::policy(
            "offline.max_medfee_fen",
            "must not be negative",
        ));
    }
    if doc.rules.is_empty() {
        return Err(EngineError::policy("rules", "needs at least one rule"));
    }
    let mut out = Vec::with_capacity(doc.rules.len());
    for (i, r) in doc.rules.iter().enumerate() {
        let c = Checker {
            path: format!("rules[{i}]"),
        };
        if r.id.is_empty() {
            return Err(EngineError::policy(c.at("id"), "must not be empty"));
        }
        if doc.rules[..i].iter().any(|o| o.id == r.id) {
            return Err(EngineError::policy(
                c.at("id"),
                format!("duplicate rule id {}", r.id),
            ));
        }
        if r.accumulator.is_empty() {
            return Err(EngineError::policy(
                c.at("accumulator"),
                "must not be empty",
            ));
        }
        let from = parse_date(&r.effective_from)
            .ok_or_else(|| EngineError::policy(c.at("effective_from"), "must be YYYY-MM-DD"))?;
        let to = parse_date(&r.effective_to)
            .ok_or_else(|| EngineError::policy(c.at("effective_to"), "must be YYYY-MM-DD"))?;
        if from > to {
            return Err(EngineError::policy(
                c.at("effective_to"),
                "before effective_from",
            ));
        }
        // deductible
        let d = Checker {
            path: c.at("deductible"),
        };
        match r.deductible.kind {
            DeductibleKind::PerVisit => {
                if r.deductible.by_admission_fen.is_empty() {
                    return Err(EngineError::policy(
                        d.at("by_admission_fen"),
                        "per_visit needs at least one amount",
                    ));
                }
                for (k, &v) in r.deductible.by_admission_fen.iter().enumerate() {
                    d.money(&format!("by_admission_fen[{k}]"), v)?;
                }
                d.opt_money("annual_max_fen", r.deductible.annual_max_fen)?;
                if r.deductible.annual_fen.is_some() {
                    return Err(EngineError::policy(
                        d.at("annual_fen"),
                        "only for kind = annual",
                    ));
                }
            }
            DeductibleKind::Annual => {
                let Some(a) = r.deductible.annual_fen else {
                    return Err(EngineError::policy(
                        d.at("annual_fen"),
                        "kind = annual needs it",
                    ));
                };
                d.money("annual_fen", a)?;
                if !r.deductible.by_admission_fen.is_empty()
                    || r.deductible.annual_max_fen.is_some()
                {
                    return Err(EngineError::policy(
                        d.at("kind"),
                        "annual takes annual_fen only (by_admission_fen and annual_max_fen are per_visit)",
                    ));
                }
            }
        }
        // basic fund
        let b = Checker {
            path: c.at("basic"),
        };
        b.fund_code("fund_pay_type", &r.basic.fund_pay_type)?;
        b.bands("bands", &r.basic.bands)?;
        b.ratio("max_ratio_bp", r.basic.max_ratio_bp)?;
        b.opt_money("annual_cap_fen", r.basic.annual_cap_fen)?;
        b.opt_money("fee_ceiling_fen", r.basic.fee_ceiling_fen)?;
        if let Some(a) = &r.basic.adjust {
            let ac = Checker {
                path: b.at("adjust"),
            };
            ac.adjustment("retired_bp", a.retired_bp)?;
            ac.adjustment("cross_region_filed_bp", a.cross_region_filed_bp)?;
            ac.adjustment("cross_region_unfiled_bp", a.cross_region_unfiled_bp)?;
            if let Some(age) = &a.age {
                if let Some(table) = &age.table {
                    for (k, row) in table.iter().enumerate() {
                        let rc = Checker {
                            path: format!("{}.age.table[{k}]", ac.path),
                        };
                        if !(0..=150).contains(&row.min_age) {
                            return Err(EngineError::policy(rc.at("min_age"), "must be 0..=150"));
                        }
                        if k > 0 && row.min_age <= table[k - 1].min_age {
                            return Err(EngineError::policy(
                                rc.at("min_age"),
                                "rows must ascend strictly by min_age",
                            ));
                        }
                        rc.adjustment("bp", row.bp)?;
                    }
                }
                if let Some(lin) = &age.linear {
                    let lc = Checker {
                        path: format!("{}.age.linear", ac.path),
                    };
                    if !(0..=150).contains(&lin.from_age) {
                        return Err(EngineError::policy(lc.at("from_age"), "must be 0..=150"));
                    }
                    lc.ratio("bp_per_year", lin.bp_per_year)?;
                    lc.ratio("max_bp", lin.max_bp)?;
                }
            }
        }
        if let Some(cr) = &r.critical {
            let cc = Checker {
                path: c.at("critical"),
            };
            cc.fund_code("fund_pay_type", &cr.fund_pay_type)?;
            cc.money("threshold_fen", cr.threshold_fen)?;
            cc.bands("bands", &cr.bands)?;
            cc.opt_money("annual_cap_fen", cr.annual_cap_fen)?;
        }
        if let Some(cs) = &r.civil_servant {
            let cc = Checker {
                path: c.at("civil_servant"),
            };
            cc.fund_code("fund_pay_type", &cs.fund_pay_type)?;
            cc.ratio("deductible_bp", cs.deductible_bp)?;
            cc.ratio("copay_bp", cs.copay_bp)?;
            cc.ratio("above_bp", cs.above_bp)?;
            cc.ratio("retired_add_bp", cs.retired_add_bp)?;
            cc.opt_money("annual_cap_fen", cs.annual_cap_fen)?;
        }
        if let Some(ma) = &r.assistance {
            let mc = Checker {
                path: c.at("assistance"),
            };
            mc.fund_code("fund_pay_type", &ma.fund_pay_type)?;
            mc.ratio("share_bp", ma.share_bp)?;
            mc.opt_money("annual_cap_fen", ma.annual_cap_fen)?;
        }
        out.push(Criteria {
            regions: codes(&c.at("regions"), &r.regions)?,
            insutypes: codes(&c.at("insutypes"), &r.insutypes)?,
            psn_types: codes(&c.at("psn_types"), &r.psn_types)?,
            treatments: r.treatments.iter().map(|t| t.code()).collect(),
            hosp_lvs: codes(&c.at("hosp_lvs"), &r.hosp_lvs)?,
            from,
            to,
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
schema = "medsettle.policy/1"
id = "t"
version = 1

[[rules]]
id = "all"
deductible = { kind = "per_visit", by_admission_fen = [200000] }
basic = { band_basis = "fee", bands = [{ from_fen = 0, ratio_bp = 8000 }] }
"#;

    #[test]
    fn parses_minimal_and_fills_defaults() {
        let p = Policy::from_toml(MINIMAL).unwrap();
        assert_eq!(p.doc.preprocess.line_tolerance_fen, 1);
        assert_eq!(p.doc.rules[0].accumulator, "default");
        assert_eq!(p.criteria[0].from, 1_01_01);
        let again = Policy::from_json(&p.to_json()).unwrap();
        assert_eq!(again.to_json(), p.to_json());
    }

    #[test]
    fn offline_limits_are_optional_and_checked() {
        assert_eq!(Policy::from_toml(MINIMAL).unwrap().doc.offline, None);
        assert!(!Policy::from_toml(MINIMAL)
            .unwrap()
            .to_json()
            .contains("offline"));
        let with = MINIMAL.replace(
            "version = 1\n",
            "version = 1\noffline = { max_medfee_fen = 300000, max_per_day = 20 }\n",
        );
        let p = Policy::from_toml(&with).unwrap();
        let limits = OfflineLimits {
            max_medfee_fen: 300_000,
            max_per_day: 20,
        };
        assert_eq!(p.doc.offline, Some(limits));
        assert_eq!(
            Policy::from_json(&p.to_json()).unwrap().doc.offline,
            Some(limits)
        );
        let negative = with.replace("300000", "-1");
        assert_eq!(err_path(&negative), "offline.max_medfee_fen");
        let unknown = with.replace("max_per_day = 20", "max_per_day = 20, per_month = 9");
        assert_eq!(err_path(&unknown), "offline.per_month");
        let too_many = with.replace("max_per_day = 20", "max_per_day = -3");
        assert_eq!(err_path(&too_many), "offline.max_per_day");
    }

    fn err_path(text: &str) -> String {
        match Policy::from_toml(text) {
            Err(EngineError::Policy { path, .. }) => path,
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    #[test]
    fn names_the_bad_field() {
        let bad_ratio = MINIMAL.replace("ratio_bp = 8000", "ratio_bp = 18000");
        assert_eq!(err_path(&bad_ratio), "rules[0].basic.bands[0].ratio_bp");
        let bad_type = MINIMAL.replace("ratio_bp = 8000", "ratio_bp = \"80%\"");
        assert_eq!(err_path(&bad_type), "rules[0].basic.bands[0].ratio_bp");
        let unknown = MINIMAL.replace("id = \"all\"", "id = \"all\"\nfoo = 1");
        assert_eq!(err_path(&unknown), "rules[0].foo");
        let bad_date = MINIMAL.replace(
            "id = \"all\"",
            "id = \"all\"\neffective_from = \"2026-02-30\"",
        );
        assert_eq!(err_path(&bad_date), "rules[0].effective_from");
        let bad_code = MINIMAL.replace("id = \"all\"", "id = \"all\"\ninsutypes = [\"31a\"]");
        assert_eq!(err_path(&bad_code), "rules[0].insutypes[0]");
        let bad_schema = MINIMAL.replace("policy/1", "policy/9");
        assert_eq!(err_path(&bad_schema), "schema");
    }

    #[test]
    fn toml_dates_are_text() {
        let p = Policy::from_toml(
            &MINIMAL.replace("id = \"all\"", "id = \"all\"\neffective_from = 2026-01-01"),
        )
        .unwrap();
        assert_eq!(p.criteria[0].from, 20260101);
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2024-02-29"), Some(20240229));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2023-13-01"), None);
        assert_eq!(parse_date("20230101"), None);
    }
}
