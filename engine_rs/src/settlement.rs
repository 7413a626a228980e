//! The settlement a split makes, in its wire form (`SetlInfo`), and the funds' names: one
//! builder for the front-end's ledger (ledger/settle.rs) and the center's check of what
//! front-ends forward (center/forward.rs), so the two sides cannot describe one split
//! differently. Pure: plain data in, a message out.

use crate::policy::Policy;
use crate::split::{Accumulators, FundLeg, SplitInput, SplitResult};
use crate::wire;

/// `SettlementState.SETTLED`, `SettlementMode.LOCAL` (common.proto).
pub const SETTLED: i32 = 1;
pub const LOCAL: i32 = 1;

/// The names of the funds a settlement's legs are paid from (fund_pay_type -> name).
pub const FUND_NAMES: [(&str, &str); 13] = [
    ("310100", "职工基本医疗保险统筹基金"),
    ("310200", "职工基本医疗保险个人账户"),
    ("320100", "公务员医疗补助资金"),
    ("330100", "职工大额医疗费用补助基金"),
    ("340100", "离休人员医疗保障基金"),
    ("350100", "一至六级残疾军人医疗补助基金"),
    ("370100", "企业补充医疗保险基金"),
    ("390100", "城乡居民基本医疗保险基金"),
    ("390200", "城乡居民大病医疗保险基金"),
    ("510100", "生育基金"),
    ("610100", "医疗救助基金"),
    ("999996", "医院垫付"),
    ("999997", "其他基金"),
];

/// The values of a wire `Accumulator`, in `Accumulators::FIELDS` order (its year and pool
/// aside).
pub fn accumulator_values(a: &wire::Accumulator) -> [i64; Accumulators::LEN] {
    [
        a.inpatient_count,
        a.dedc_paid,
        a.hifp_paid,
        a.hifp_base,
        a.critical_base,
        a.critical_paid,
        a.cvlserv_paid,
        a.maf_paid,
    ]
}

pub fn fund_name(fund: &str) -> &'static str {
    FUND_NAMES
        .iter()
        .find(|(f, _)| *f == fund)
        .map_or("", |(_, n)| n)
}

/// `clr_type` of a settlement: 21 inpatient (engine treatment 2), else 11 outpatient.
pub fn clr_type_of(treatment: u8) -> i32 {
    if treatment == 2 {
        21
    } else {
        11
    }
}

/// The engine's region: the insured region's code when it is a number.
pub fn region_of(admdvs: &str) -> u32 {
    if !admdvs.is_empty() && admdvs.bytes().all(|b| b.is_ascii_digit()) {
        admdvs.parse().unwrap_or(0)
    } else {
        0
    }
}

/// The engine's cross-region status: 0 treated in the insured region; elsewhere 1 when the
/// person filed the move (`filed` 1, 异地就医备案), else 2.
pub fn cross_region(treatment_admdvs: &str, insuplc_admdvs: &str, filed: i64) -> u8 {
    if treatment_admdvs == insuplc_admdvs {
        0
    } else if filed == 1 {
        1
    } else {
        2
    }
}

/// `server.codes.age_on`: whole years from a yyyymmdd birth date to a yyyymmdd date.
pub fn age_on(brdy: i64, date: i64) -> i64 {
    ((date - brdy).div_euclid(10_000)).max(0)
}

/// Who and what a settlement is of, beside the split's numbers.
pub struct Parties<'a> {
    pub mdtrt_id: &'a str,
    pub psn_no: &'a str,
    pub psn_name: &'a str,
    pub insutype: i32,
    pub psn_type: i32,
    pub med_type: i32,
    pub treatment: u8,
    pub fixmedins_code: &'a str,
    pub invono: &'a str,
}

/// The settlement of split `r` (rule, amounts, legs) of the sums `s`: without id, time,
/// msgid, state, mode, categories or catalog version, which the caller sets.
pub fn setl_info(
    policy: &Policy,
    who: &Parties<'_>,
    s: &SplitInput,
    line_count: i32,
    r: &SplitResult,
    legs: Vec<FundLeg>,
) -> wire::SetlInfo {
    let applied = policy.rule(r.rule as usize);
    let critical_fund = applied
        .critical
        .as_ref()
        .map_or("", |c| c.fund_pay_type.as_str());
    let critical = |fund: &str| {
        if critical_fund == fund {
            r.critical_pay
        } else {
            0
        }
    };
    wire::SetlInfo {
        mdtrt_id: who.mdtrt_id.to_owned(),
        psn_no: who.psn_no.to_owned(),
        psn_name: who.psn_name.to_owned(),
        insutype: who.insutype,
        psn_type: who.psn_type,
        med_type: who.med_type,
        clr_type: clr_type_of(who.treatment),
        fixmedins_code: who.fixmedins_code.to_owned(),
        invono: who.invono.to_owned(),
        medfee_sumamt: s.medfee_sumamt,
        fulamt_ownpay_amt: s.fulamt_ownpay_amt,
        overlmt_amt: s.overlmt_amt,
        preselfpay_amt: s.preselfpay_amt,
        inscp_scp_amt: s.inscp_scp_amt,
        act_pay_dedc: r.act_pay_dedc,
        hifp_pay: r.hifp_pay,
        cvlserv_pay: r.cvlserv_pay,
        hifob_pay: critical("330100"),
        hifmi_pay: critical("390200"),
        maf_pay: r.maf_pay,
        fund_pay_sumamt: r.fund_pay_sumamt,
        psn_part_amt: r.psn_part_amt,
        acct_pay: r.acct_pay,
        psn_cash_pay: r.psn_cash_pay,
        balc: r.balc,
        rule_id: applied.id.clone(),
        policy_version: i64::from(policy.doc.version),
        line_count,
        setldetail: legs
            .into_iter()
            .map(|l| wire::FundLeg {
                fund_pay_type_name: fund_name(&l.fund_pay_type).to_owned(),
                fund_pay_type: l.fund_pay_type,
                inscp_scp_amt: l.base,
                fund_payamt: l.amount,
                setl_proc_info: l.setl_proc_info,
            })
            .collect(),
        ..Default::default()
    }
}
