//! The fund split of the demo city's policy over arbitrary amounts, persons, accumulators
//! and selections: a typed error (bad input, no rule, overflow) or a split whose legs add
//! up, never a panic or a wrapped sum.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use engine_rs::policy::{Policy, Selection};
use engine_rs::split::{split, Accumulators, Person, SplitInput};
use libfuzzer_sys::fuzz_target;

static POLICY: OnceLock<Policy> = OnceLock::new();

#[derive(Debug, Arbitrary)]
struct Case {
    amounts: [i64; 5],
    age: u8,
    flags: u8,
    cross_region: u8,
    balance: i64,
    acc: [i64; 8],
    insutype: u16,
    psn_type: u8,
    treatment: u8,
    hosp_lv: u8,
    month: u8,
    admission_no: u8,
}

fuzz_target!(|c: Case| {
    let policy = POLICY.get_or_init(|| {
        Policy::from_toml(include_str!("../../../server/demo/demo_city_policy.toml"))
            .expect("the demo policy loads")
    });
    let s = SplitInput {
        medfee_sumamt: c.amounts[0],
        fulamt_ownpay_amt: c.amounts[1],
        overlmt_amt: c.amounts[2],
        preselfpay_amt: c.amounts[3],
        inscp_scp_amt: c.amounts[4],
    };
    let p = Person {
        age: u32::from(c.age),
        retired: c.flags & 1 != 0,
        civil_servant: c.flags & 2 != 0,
        cross_region: c.cross_region % 4,
        assistance: c.flags & 4 != 0,
        acct_used: c.flags & 8 != 0,
        acct_balance: c.balance,
    };
    let acc = Accumulators::from_values(c.acc);
    let sel = Selection {
        region: 440100,
        insutype: [310, 390, 320, 999][usize::from(c.insutype % 4)],
        psn_type: u32::from(c.psn_type % 8) + 11,
        treatment: c.treatment % 5,
        hosp_lv: u32::from(c.hosp_lv % 5),
        date: 20260101 + i32::from(c.month % 12) * 100,
        admission_no: u32::from(c.admission_no % 6),
    };
    let mut scratch = Vec::new();
    if let Ok(r) = split(0, policy, &s, &sel, &p, &acc, &mut scratch, None) {
        // What the funds pay and what the person pays make up the bill.
        assert_eq!(r.fund_pay_sumamt + r.psn_part_amt, s.medfee_sumamt);
        assert_eq!(r.acct_pay + r.psn_cash_pay, r.psn_part_amt);
        assert!(r.acct_pay >= 0 && r.acct_pay <= p.acct_balance.max(0));
    }
});
