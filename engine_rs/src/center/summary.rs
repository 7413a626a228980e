//! Center mode at the center, batch-shaped: the `SettleSummary` calls of one batch settled
//! in order over the batch's view of the ledger (server/center/summaries.py reads and locks
//! what they may touch, answers first what the reads alone decide: a node bound elsewhere,
//! a replay, a setl_id or visit the center holds, an institution or policy version it
//! lacks; and writes after what is decided here).
//!
//! Each call sees the earlier ones (two calls for one person see each other's
//! accumulators and balance); a refused call changes nothing in the view. The checks,
//! their order and their texts are those of the one-call path, server/center/settle.py
//! `settle_summary`, which stays (a pre-settle, and each call of a batch that failed
//! whole, run there); tests/center/test_center_batch.py holds the two to the same answers
//! and the same ledger.

use std::collections::HashMap;

use prost::Message;
use serde_json::{json, Value};

use super::checks::treatment_of;
use super::forward::{name_of, no_rule, selected, Failure, Fault, Treated};
use super::view::{Batch, Key, NewSettlement, Values, View, Writes, LEN};
use crate::ledger::refusal::Refusal;
use crate::ledger::settle::local_date;
use crate::ledger::vault::Vault;
use crate::policy::Policy;
use crate::settlement::{self as slip, SETTLED};
use crate::split::{self as sp, Accumulators, SplitInput};
use crate::wire;

/// `SettlementMode.CENTER` (common.proto).
pub const CENTER: i32 = 2;
/// The method the idempotency records of these calls name.
pub const METHOD: &str = "SettleSummary";

/// One call of the batch.
pub struct Call {
    pub req: wire::CenterSettleRequest,
    /// Its `payload_hash` (server/center/services.py): what a replay must match.
    pub digest: Vec<u8>,
    pub now: i64,
    /// The caller refuses it for a reason of its own (an institution or a policy version
    /// the center lacks) unless an earlier call of the batch took its setl_id or visit.
    pub refused: bool,
}

/// What the center holds of a treating institution.
pub struct Institution {
    pub hosp_lv: u32,
    pub admdvs: String,
}

/// The center's keys and settings, and the reference data the batch's calls name.
pub struct Center<'a> {
    pub vault: &'a Vault,
    pub tz_offset_min: i64,
    pub policies: &'a HashMap<i64, &'a Policy>,
    pub institutions: &'a HashMap<String, Institution>,
}

/// One call's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Settled: the `CenterSettleResponse`, encoded.
    Answer(Vec<u8>),
    Refused(Refusal),
    /// The caller's own refusal stands (`Call::refused`).
    Theirs,
}

/// The idempotency record of a settled call (its answer sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub fixmedins_code: String,
    pub msgid: String,
    pub req_hash: Vec<u8>,
    pub response: Vec<u8>,
    pub setl_id: String,
    pub at: i64,
}

/// What a batch decided: each call's outcome, and the writes.
#[derive(Debug)]
pub struct Decided {
    pub outcomes: Vec<Outcome>,
    pub writes: Writes,
    pub remembered: Vec<Remembered>,
}

impl From<Refusal> for Failure<Refusal> {
    fn from(r: Refusal) -> Self {
        Self::Item(r)
    }
}

/// The settlements and visits the batch's earlier calls settled.
#[derive(Default)]
struct Taken {
    /// setl_id -> the msgid that settled it
    ids: HashMap<String, String>,
    /// (fixmedins_code, mdtrt_id) -> its setl_id
    visits: HashMap<(String, String), String>,
}

/// The calls settled in order over `view` (persons, balances, accumulators as read and
/// locked); `view` is left as the batch leaves the ledger. Err only for a fault of the
/// center (a sealed name that does not open), which fails the batch whole.
pub fn decide(center: &Center<'_>, view: &mut View, calls: &[Call]) -> Result<Decided, Fault> {
    let mut batch = Batch {
        view,
        writes: Writes::default(),
        names: HashMap::new(),
    };
    let mut taken = Taken::default();
    let mut remembered = Vec::new();
    let mut outcomes = Vec::with_capacity(calls.len());
    for call in calls {
        outcomes.push(match settle(center, &mut batch, &mut taken, call) {
            Ok(Some((answer, memo))) => {
                remembered.push(memo);
                Outcome::Answer(answer)
            }
            Ok(None) => Outcome::Theirs,
            Err(Failure::Item(r)) => Outcome::Refused(r),
            Err(Failure::Batch(f)) => return Err(f),
        });
    }
    let mut writes = batch.writes;
    writes.accumulator_rows = writes
        .touched
        .iter()
        .map(|k| {
            let values = view.accumulators.get(k).copied().unwrap_or([0; LEN]);
            (k.clone(), values, view.stored.contains(k))
        })
        .collect();
    Ok(Decided {
        outcomes,
        writes,
        remembered,
    })
}

/// One call settled over the batch's view: its answer and idempotency record, or None
/// when the caller's own refusal stands.
fn settle(
    center: &Center<'_>,
    batch: &mut Batch<'_>,
    taken: &mut Taken,
    call: &Call,
) -> Result<Option<(Vec<u8>, Remembered)>, Failure<Refusal>> {
    let req = &call.req;
    let header = req.header.clone().unwrap_or_default();
    let code = &header.fixmedins_code;
    if let Some(msgid) = taken.ids.get(&req.setl_id) {
        return Err(Refusal::already_exists(format!(
            "setl_id: {} was already settled by {msgid}",
            req.setl_id
        ))
        .into());
    }
    let visit = (code.clone(), req.mdtrt_id.clone());
    if let Some(setl_id) = taken.visits.get(&visit) {
        return Err(Refusal::failed_precondition(format!(
            "mdtrt_id: {} is already settled as {setl_id}",
            req.mdtrt_id
        ))
        .into());
    }
    if call.refused {
        return Ok(None);
    }
    let Some(person) = batch.view.persons.get(&req.psn_no).cloned() else {
        return Err(Refusal::not_found(format!(
            "psn_no: no insured person {} at the center",
            req.psn_no
        ))
        .into());
    };
    if i64::from(req.insutype) != person.insutype {
        return Err(Refusal::field(
            "insutype",
            format!("the person is insured under {}", person.insutype),
        )
        .into());
    }
    let (Some(inst), Some(policy)) = (
        center.institutions.get(code),
        center.policies.get(&req.policy_version).copied(),
    ) else {
        return Err(Fault(format!(
            "the reference data of {code} and policy version {} were not given",
            req.policy_version
        ))
        .into());
    };
    let treatment = treatment_of(req.med_type);
    let treated = Treated {
        treatment,
        date: req.begndate,
        hosp_lv: inst.hosp_lv,
        admdvs: &inst.admdvs,
    };
    let balance = batch.view.balances.get(&req.psn_no).copied().unwrap_or(0);
    let (sel, who) = selected(&person, &req.psn_no, &treated, req.acct_used_flag, balance)?;
    let Some(rule) = policy.select(&sel) else {
        let why = no_rule(req.insutype, req.med_type, &person, &treated, policy);
        return Err(Refusal::failed_precondition(why).into());
    };
    let year = i64::from(req.begndate).div_euclid(10_000);
    let key: Key = (
        req.psn_no.clone(),
        year,
        policy.rule(rule).accumulator.clone(),
    );
    let before = batch.current(&key);
    let summary = req.summary.clone().unwrap_or_default();
    let sums = SplitInput {
        medfee_sumamt: summary.medfee_sumamt,
        fulamt_ownpay_amt: summary.fulamt_ownpay_amt,
        overlmt_amt: summary.overlmt_amt,
        preselfpay_amt: summary.preselfpay_amt,
        inscp_scp_amt: summary.inscp_scp_amt,
    };
    let acc = Accumulators::from_values(before);
    let (r, legs) = sp::split_with_legs(policy, &sums, &sel, &who, &acc)
        .map_err(|e| Refusal::failed_precondition(format!("the visit cannot be settled: {e}")))?;
    let psn_name = name_of(batch, center.vault, &req.psn_no)?;
    let parties = slip::Parties {
        mdtrt_id: &req.mdtrt_id,
        psn_no: &req.psn_no,
        psn_name: &psn_name,
        insutype: req.insutype,
        psn_type: i32::try_from(person.psn_type).unwrap_or(i32::MAX),
        med_type: req.med_type,
        treatment,
        fixmedins_code: code,
        invono: &req.invono,
    };
    let split = slip::setl_info(policy, &parties, &sums, summary.line_count, &r, legs);
    let info = wire::SetlInfo {
        setl_id: req.setl_id.clone(),
        msgid: header.msgid.clone(),
        state: SETTLED,
        setl_time: Some(timestamp(call.now)),
        categories: summary.categories,
        catalog_version: req.catalog_version,
        mode: CENTER,
        ..split
    };
    let after = r.acc.values();
    let delta: Values = std::array::from_fn(|i| after[i] - before[i]);
    let answer = wire::CenterSettleResponse {
        setlinfo: Some(info.clone()),
        accumulators: Some(accumulator(&key, &after)),
    }
    .encode_to_vec();
    let sealed = center
        .vault
        .seal("setlinfo", &req.setl_id, &info.encode_to_vec())
        .map_err(Fault::from)?;
    let row = NewSettlement {
        setl_id: req.setl_id.clone(),
        node_id: header.node_id.clone(),
        fixmedins_code: code.clone(),
        mdtrt_id: req.mdtrt_id.clone(),
        psn_no: req.psn_no.clone(),
        insutype: i64::from(info.insutype),
        clr_type: i64::from(info.clr_type),
        msgid: header.msgid.clone(),
        invono: req.invono.clone(),
        setl_time: call.now,
        setl_date: local_date(call.now, center.tz_offset_min),
        state: i64::from(SETTLED),
        mode: i64::from(CENTER),
        offline: 0,
        medfee_sumamt: info.medfee_sumamt,
        fund_pay_sumamt: info.fund_pay_sumamt,
        acct_pay: info.acct_pay,
        psn_cash_pay: info.psn_cash_pay,
        acc_year: year,
        acc_pool: key.2.clone(),
        acc_delta: delta,
        info: sealed,
        received_at: call.now,
        cancel_id: None,
        cancel_time: None,
        cancel_date: None,
    };
    let legs = info
        .setldetail
        .iter()
        .map(|g| (g.fund_pay_type.clone(), g.inscp_scp_amt, g.fund_payamt))
        .collect();
    batch.record(row, legs);
    batch.set_accumulators(&key, after);
    if info.acct_pay != 0 {
        batch.move_balance(&req.psn_no, -info.acct_pay);
    }
    let response = center
        .vault
        .seal("response", &format!("{code}|{}", header.msgid), &answer)
        .map_err(Fault::from)?;
    taken.ids.insert(req.setl_id.clone(), header.msgid.clone());
    taken.visits.insert(visit, req.setl_id.clone());
    let memo = Remembered {
        fixmedins_code: code.clone(),
        msgid: header.msgid,
        req_hash: call.digest.clone(),
        response,
        setl_id: req.setl_id.clone(),
        at: call.now,
    };
    Ok(Some((answer, memo)))
}

/// `Timestamp.FromMilliseconds`.
fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // below 1e9: fits
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The accumulators of `key` as the answer carries them.
fn accumulator(key: &Key, v: &Values) -> wire::Accumulator {
    wire::Accumulator {
        year: i32::try_from(key.1).unwrap_or(0),
        pool: key.2.clone(),
        inpatient_count: v[0],
        dedc_paid: v[1],
        hifp_paid: v[2],
        hifp_base: v[3],
        critical_base: v[4],
        critical_paid: v[5],
        cvlserv_paid: v[6],
        maf_paid: v[7],
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn delta_object(v: &Values) -> Value {
    Value::Object(
        Accumulators::FIELDS
            .iter()
            .zip(v)
            .map(|(f, x)| ((*f).to_owned(), json!(x)))
            .collect(),
    )
}

/// The new settlements as server/center/store/pg.py `insert_all` takes them: a JSON array
/// of rows, columns in server/center/settle.py `SETTLEMENT_COLUMNS` order (bytea as hex,
/// the accumulator change as its object).
pub fn settlements_json(writes: &Writes) -> String {
    let rows: Vec<Value> = writes
        .recorded
        .iter()
        .map(|s| {
            json!([
                s.setl_id,
                s.node_id,
                s.fixmedins_code,
                s.mdtrt_id,
                s.psn_no,
                s.insutype,
                s.clr_type,
                s.msgid,
                s.invono,
                s.setl_time,
                s.setl_date,
                s.state,
                s.mode,
                s.offline,
                s.medfee_sumamt,
                s.fund_pay_sumamt,
                s.acct_pay,
                s.psn_cash_pay,
                s.acc_year,
                s.acc_pool,
                delta_object(&s.acc_delta),
                hex(&s.info),
                s.received_at,
            ])
        })
        .collect();
    Value::Array(rows).to_string()
}

/// Their fund legs (`LEG_COLUMNS`: setl_id, fund_pay_type, base, amount).
pub fn legs_json(writes: &Writes) -> String {
    let rows: Vec<Value> = writes
        .legs
        .iter()
        .map(|(s, f, base, amount)| json!([s, f, base, amount]))
        .collect();
    Value::Array(rows).to_string()
}

/// The idempotency records (`IDEMPOTENCY_COLUMNS`).
pub fn remembered_json(remembered: &[Remembered]) -> String {
    let rows: Vec<Value> = remembered
        .iter()
        .map(|m| {
            json!([
                m.fixmedins_code,
                m.msgid,
                METHOD,
                hex(&m.req_hash),
                hex(&m.response),
                m.setl_id,
                m.at,
            ])
        })
        .collect();
    Value::Array(rows).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::center::view::PersonRow;

    const KEY: [u8; 32] = [7; 32];

    fn view(balance: i64) -> View {
        let vault = Vault::new(&KEY, 1).unwrap();
        let mut v = View::default();
        v.persons.insert(
            "P1".into(),
            PersonRow {
                psn_name_sealed: vault.seal("psn_name", "P1", "张三".as_bytes()).unwrap(),
                gend: 1,
                brdy: 19_700_101,
                psn_type: 11,
                insutype: 310,
                insuplc_admdvs: "440100".into(),
                cvlserv_flag: false,
                maf_flag: false,
                retired: false,
                cross_region: 0,
            },
        );
        v.balances.insert("P1".into(), balance);
        v
    }

    fn call(setl_id: &str, mdtrt_id: &str, psn_no: &str, fee: i64) -> Call {
        Call {
            req: wire::CenterSettleRequest {
                header: Some(wire::NodeHeader {
                    node_id: "01".into(),
                    fixmedins_code: "H1".into(),
                    msgid: format!("m-{setl_id}"),
                    ..Default::default()
                }),
                setl_id: setl_id.into(),
                mdtrt_id: mdtrt_id.into(),
                psn_no: psn_no.into(),
                insutype: 310,
                med_type: 11,
                begndate: 20_260_301,
                summary: Some(wire::VisitSummary {
                    medfee_sumamt: fee,
                    inscp_scp_amt: fee,
                    line_count: 1,
                    ..Default::default()
                }),
                acct_used_flag: true,
                policy_version: 1,
                ..Default::default()
            },
            digest: vec![1, 2],
            now: 1_772_000_000_123,
            refused: false,
        }
    }

    fn decided(calls: &[Call], v: &mut View) -> Decided {
        let vault = Vault::new(&KEY, 1).unwrap();
        let text = format!(
            "{}account = {{ covers = \"all\" }}\n",
            crate::policy::tests::MINIMAL
        );
        let policy = Policy::from_toml(&text).unwrap();
        let policies = HashMap::from([(1, &policy)]);
        let institutions = HashMap::from([(
            "H1".to_owned(),
            Institution {
                hosp_lv: 3,
                admdvs: "440100".into(),
            },
        )]);
        let center = Center {
            vault: &vault,
            tz_offset_min: 480,
            policies: &policies,
            institutions: &institutions,
        };
        decide(&center, v, calls).unwrap()
    }

    fn answer(o: &Outcome) -> wire::CenterSettleResponse {
        match o {
            Outcome::Answer(a) => wire::CenterSettleResponse::decode(&a[..]).unwrap(),
            other => panic!("not settled: {other:?}"),
        }
    }

    #[test]
    fn two_calls_of_one_person_see_each_other_and_refusals_change_nothing() {
        let mut v = view(50_000);
        let mut again = call("S2", "M1", "P1", 1_000);
        again.req.header.as_mut().unwrap().msgid = "other".into();
        let mut theirs = call("S5", "M5", "P1", 1_000);
        theirs.refused = true;
        let calls = [
            call("S1", "M1", "P1", 300_000),
            again,                         // the visit is settled by S1
            call("S3", "M3", "P9", 1_000), // no such person
            call("S4", "M4", "P1", 300_000),
            theirs,
            call("S1", "M6", "P1", 1_000), // S1 is taken
        ];
        let d = decided(&calls, &mut v);
        let first = answer(&d.outcomes[0]);
        let second = answer(&d.outcomes[3]);
        let (a, b) = (first.setlinfo.unwrap(), second.setlinfo.unwrap());
        // per visit deductible 2,000 yuan, then 80 %: the account pays what it holds
        assert_eq!((a.act_pay_dedc, a.hifp_pay), (200_000, 80_000));
        assert_eq!(a.acct_pay, 50_000);
        assert_eq!(b.acct_pay, 0, "the first call emptied the account");
        assert_eq!(a.balc, 0);
        assert_eq!(
            (a.mode, a.state, a.psn_name.as_str()),
            (CENTER, SETTLED, "张三")
        );
        assert_eq!(
            a.setl_time,
            Some(prost_types::Timestamp {
                seconds: 1_772_000_000,
                nanos: 123_000_000
            })
        );
        let acc = second.accumulators.unwrap();
        assert_eq!((acc.year, acc.pool.as_str()), (2026, "default"));
        assert_eq!(
            acc.dedc_paid, 400_000,
            "the second saw the first's accumulators"
        );
        assert_eq!(
            d.outcomes[1],
            Outcome::Refused(Refusal::failed_precondition(
                "mdtrt_id: M1 is already settled as S1"
            ))
        );
        assert_eq!(
            d.outcomes[2],
            Outcome::Refused(Refusal::not_found(
                "psn_no: no insured person P9 at the center"
            ))
        );
        assert_eq!(d.outcomes[4], Outcome::Theirs);
        assert_eq!(
            d.outcomes[5],
            Outcome::Refused(Refusal::already_exists(
                "setl_id: S1 was already settled by m-S1"
            ))
        );
        assert_eq!(d.writes.recorded.len(), 2);
        assert_eq!(d.remembered.len(), 2);
        assert_eq!(d.writes.moved.get("P1"), Some(&-50_000));
        assert_eq!(d.writes.recorded[0].setl_date, 20_260_225);
        assert_eq!(d.writes.recorded[1].acc_delta[1], 200_000);
        let (key, values, exists) = &d.writes.accumulator_rows[0];
        assert_eq!((key.0.as_str(), values[1], *exists), ("P1", 400_000, false));
        // the rows as insert_all reads them
        let rows: Value = serde_json::from_str(&settlements_json(&d.writes)).unwrap();
        assert_eq!(rows[1][0], "S4");
        assert_eq!(rows[1][20]["dedc_paid"], 200_000);
        let vault = Vault::new(&KEY, 1).unwrap();
        let memo: Value = serde_json::from_str(&remembered_json(&d.remembered)).unwrap();
        assert_eq!(memo[0][2], METHOD);
        assert_eq!(memo[0][3], "0102");
        let sealed = &d.remembered[0].response;
        let opened = vault.open("response", "H1|m-S1", sealed).unwrap();
        assert_eq!(Outcome::Answer(opened), d.outcomes[0]);
        let legs: Value = serde_json::from_str(&legs_json(&d.writes)).unwrap();
        assert_eq!(legs[0][0], "S1");
    }

    #[test]
    fn a_person_insured_otherwise_is_refused_on_the_field() {
        let mut v = view(0);
        let mut c = call("S1", "M1", "P1", 1_000);
        c.req.insutype = 390;
        let d = decided(&[c], &mut v);
        assert_eq!(
            d.outcomes[0],
            Outcome::Refused(Refusal::field(
                "insutype",
                "the person is insured under 310"
            ))
        );
        assert!(d.writes.recorded.is_empty() && d.writes.touched.is_empty());
    }
}
