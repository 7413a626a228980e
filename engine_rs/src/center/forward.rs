//! The center's side of store-and-forward: a batch of what a front-end in local mode
//! settled and cancelled, decided item by item, in the front-end's order, over the batch's
//! view of the center's ledger (server/center/store/batch.py reads and locks it first and
//! writes what is decided after; server/center/forwarded.py says what is checked and why).
//!
//! Each item sees the earlier ones (two settlements of one person, a settlement and its
//! cancel, a visit settled again after its cancel). A refused item changes nothing in the
//! view. After a CONFLICT no later item of the batch is applied.
//!
//! The checks, their order and their texts are those of the Python decision this replaces
//! (kept as the test oracle in tests/center/forward_twin.py).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;

use super::checks::{issued_by, plain, repr, treatment_of, valid_date};
use super::view::{Batch, Difference, Key, NewSettlement, PersonRow, Values, View, Writes, LEN};
use crate::ledger::settle::local_date;
use crate::ledger::vault::{Vault, VaultError};
use crate::policy::{Policy, Selection};
use crate::settlement::{self as slip, accumulator_values, Parties, LOCAL, SETTLED};
use crate::split::{self as sp, Accumulators, Person, SplitInput};
use crate::wire;

/// `ForwardOutcome` (center.proto).
pub const APPLIED: i32 = 1;
pub const DUPLICATE: i32 = 2;
pub const APPLIED_WITH_DIFFERENCE: i32 = 3;
pub const REJECTED: i32 = 4;
pub const CONFLICT: i32 = 5;

/// An account balance beyond is absurd (and the engine's i64 near).
const MAX_BALANCE_FEN: i64 = 1 << 62;
/// 2000-01-01T00:00Z
const EARLIEST_MS: i64 = 946_684_800_000;
const DAY_MS: i64 = 86_400_000;
const MED_TYPES: [i32; 10] = [11, 12, 13, 14, 15, 16, 21, 24, 51, 52];

/// One item's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seq: i64,
    pub outcome: i32,
    pub detail: String,
}

/// Who sends the batch and what the center holds them to.
pub struct Sender<'a> {
    pub fixmedins_code: &'a str,
    pub node_id: &'a str,
    pub hosp_lv: u32,
    pub admdvs: &'a str,
}

/// The center's settings and keys for deciding.
pub struct Center<'a> {
    pub vault: &'a Vault,
    pub tz_offset_min: i64,
    pub max_visit_fee_fen: i64,
    /// The policy versions the batch's settlements name (a missing one refuses its items).
    pub policies: &'a HashMap<i64, &'a Policy>,
    pub now: i64,
}

/// What the batch's items name, to be read (and locked) before deciding.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Settlements named (by settles and cancels), sorted.
    pub setl_ids: Vec<String>,
    /// The settles' ids.
    pub settle_ids: BTreeSet<String>,
    pub mdtrt_ids: Vec<String>,
    pub psn_nos: BTreeSet<String>,
    pub keys: BTreeSet<Key>,
    pub policy_versions: BTreeSet<i64>,
}

/// `Timestamp.ToMilliseconds()`; None beyond i64 (then certainly absurd).
fn millis(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    let t = t.cloned().unwrap_or_default();
    t.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(t.nanos).div_euclid(1_000_000))
}

/// The plan of a request: what its items name.
pub fn plan(req: &wire::ForwardRequest) -> Plan {
    let mut p = Plan::default();
    let mut ids = BTreeSet::new();
    let mut visits = BTreeSet::new();
    for item in &req.items {
        if item.kind == "cancel" {
            if plain(&item.setl_id) {
                ids.insert(item.setl_id.clone());
            }
            continue;
        }
        if item.kind != "settle" {
            continue;
        }
        let info = item.setlinfo.clone().unwrap_or_default();
        if plain(&info.setl_id) {
            ids.insert(info.setl_id.clone());
            p.settle_ids.insert(info.setl_id.clone());
        }
        if plain(&info.mdtrt_id) {
            visits.insert(info.mdtrt_id.clone());
        }
        p.policy_versions.insert(info.policy_version);
        if plain(&info.psn_no) {
            p.psn_nos.insert(info.psn_no.clone());
            let before = item.accumulators_before.clone().unwrap_or_default();
            if plain(&before.pool) {
                p.keys
                    .insert((info.psn_no.clone(), i64::from(before.year), before.pool));
            }
        }
    }
    p.setl_ids = ids.into_iter().collect();
    p.mdtrt_ids = visits.into_iter().collect();
    p
}

/// One item not applied (nothing written for it): the outcome and why.
struct Refused(i32, String);

fn rejected(detail: impl Into<String>) -> Refused {
    Refused(REJECTED, detail.into())
}

/// A fault of the center, not of the item (a sealed name that does not open): the batch
/// fails whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault(pub String);

impl From<VaultError> for Fault {
    fn from(e: VaultError) -> Self {
        Self(e.0)
    }
}

/// An item's refusal (`R`: its outcome), or a fault of the center that fails the batch.
pub(crate) enum Failure<R> {
    Item(R),
    Batch(Fault),
}

impl From<Refused> for Failure<Refused> {
    fn from(r: Refused) -> Self {
        Self::Item(r)
    }
}

impl<R> From<Fault> for Failure<R> {
    fn from(f: Fault) -> Self {
        Self::Batch(f)
    }
}

/// The batch's items decided in order over `view`: one outcome per item, and the writes.
/// `view` is left as the batch leaves the ledger. Err only for a fault of the center.
pub fn decide(
    center: &Center<'_>,
    sender: &Sender<'_>,
    view: &mut View,
    req: &wire::ForwardRequest,
) -> Result<(Vec<Outcome>, Writes), Fault> {
    let mut batch = Batch {
        view,
        writes: Writes::default(),
        names: HashMap::new(),
    };
    let mut out = Vec::with_capacity(req.items.len());
    let mut conflicted: Option<i64> = None;
    for item in &req.items {
        let result = if let Some(seq) = conflicted {
            Err(Failure::Item(rejected(format!(
                "not applied: item {seq} conflicted"
            ))))
        } else if item.kind == "settle" {
            forward_settle(center, sender, &mut batch, item)
        } else if item.kind == "cancel" {
            forward_cancel(center, sender, &mut batch, item).map_err(Failure::Item)
        } else {
            Err(Failure::Item(rejected(format!(
                "unknown kind {}",
                repr(&item.kind)
            ))))
        };
        let (outcome, detail) = match result {
            Ok(done) => done,
            Err(Failure::Item(Refused(o, d))) => (o, d),
            Err(Failure::Batch(f)) => return Err(f),
        };
        if outcome == CONFLICT {
            conflicted = Some(item.seq);
        }
        out.push(Outcome {
            seq: item.seq,
            outcome,
            detail,
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
    Ok((out, writes))
}

/// The answer (`ForwardResponse`) of the outcomes.
pub fn answer(outcomes: &[Outcome]) -> Vec<u8> {
    wire::ForwardResponse {
        results: outcomes
            .iter()
            .map(|o| wire::ForwardResult {
                seq: o.seq,
                outcome: o.outcome,
                detail: o.detail.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

// ------------------------------------------------------------------------------- settle
fn require_own_ids(
    sender: &Sender<'_>,
    item: &wire::ForwardItem,
    info: &wire::SetlInfo,
) -> Result<(), Refused> {
    let (code, node) = (sender.fixmedins_code, sender.node_id);
    if info.fixmedins_code != code
        || !issued_by(&info.setl_id, "S", code, node)
        || !issued_by(&info.mdtrt_id, "M", code, node)
        || (!item.setl_id.is_empty() && item.setl_id != info.setl_id)
    {
        return Err(rejected(format!(
            "{} (visit {}) is not a settlement of node {node} of {code}",
            info.setl_id, info.mdtrt_id
        )));
    }
    Ok(())
}

/// The SetlInfo amounts (fen) by name, in `server.fundsplit.SETL_AMOUNTS` order.
fn amounts(info: &wire::SetlInfo) -> [(&'static str, i64); 15] {
    [
        ("medfee_sumamt", info.medfee_sumamt),
        ("fulamt_ownpay_amt", info.fulamt_ownpay_amt),
        ("overlmt_amt", info.overlmt_amt),
        ("preselfpay_amt", info.preselfpay_amt),
        ("inscp_scp_amt", info.inscp_scp_amt),
        ("act_pay_dedc", info.act_pay_dedc),
        ("hifp_pay", info.hifp_pay),
        ("cvlserv_pay", info.cvlserv_pay),
        ("hifob_pay", info.hifob_pay),
        ("hifmi_pay", info.hifmi_pay),
        ("maf_pay", info.maf_pay),
        ("fund_pay_sumamt", info.fund_pay_sumamt),
        ("psn_part_amt", info.psn_part_amt),
        ("acct_pay", info.acct_pay),
        ("psn_cash_pay", info.psn_cash_pay),
    ]
}

fn require_sane(
    center: &Center<'_>,
    item: &wire::ForwardItem,
    info: &wire::SetlInfo,
    before: &wire::Accumulator,
    after: &wire::Accumulator,
) -> Result<(), Refused> {
    let max = center.max_visit_fee_fen;
    let named = amounts(info);
    let mut bad: Vec<String> = named
        .iter()
        .filter(|(_, v)| *v < 0)
        .map(|(f, v)| format!("{f} {v}"))
        .collect();
    bad.extend(
        named
            .iter()
            .filter(|(_, v)| *v > max)
            .map(|(f, v)| format!("{f} {v} above {max}")),
    );
    if !(0..=MAX_BALANCE_FEN).contains(&info.balc) {
        bad.push(format!("balc {}", info.balc));
    }
    let parts = i128::from(info.fulamt_ownpay_amt)
        + i128::from(info.overlmt_amt)
        + i128::from(info.preselfpay_amt)
        + i128::from(info.inscp_scp_amt);
    if parts != i128::from(info.medfee_sumamt) {
        bad.push(format!(
            "medfee_sumamt {} is not the sum of its parts {parts}",
            info.medfee_sumamt
        ));
    }
    if info.line_count <= 0 {
        bad.push(format!("line_count {}", info.line_count));
    }
    if !MED_TYPES.contains(&info.med_type) {
        bad.push(format!("med_type {}", info.med_type));
    }
    if !valid_date(i64::from(item.begndate)) {
        bad.push(format!("begndate {}", item.begndate));
    }
    if (before.year, &before.pool) != (after.year, &after.pool) {
        bad.push("accumulators before and after are of another year or pool".into());
    }
    if accumulator_values(before)
        .iter()
        .chain(&accumulator_values(after))
        .any(|&v| v < 0)
    {
        bad.push("accumulators: negative values".into());
    }
    let ms = millis(info.setl_time.as_ref());
    let latest = center.now.saturating_add(DAY_MS);
    if !ms.is_some_and(|ms| (EARLIEST_MS..=latest).contains(&ms)) {
        let shown = ms.map_or_else(|| "beyond i64".to_owned(), |ms| ms.to_string());
        bad.push(format!("setl_time {shown} ms"));
    }
    for (name, text) in [
        ("psn_no", &info.psn_no),
        ("msgid", &info.msgid),
        ("invono", &info.invono),
    ] {
        if !plain(text) {
            bad.push(format!("{name} is not a short printable text"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(rejected(format!("absurd settlement: {}", bad.join("; "))))
    }
}

/// The change of the front-end's accumulators (after - before).
fn their_delta(before: &wire::Accumulator, after: &wire::Accumulator) -> Values {
    let (b, a) = (accumulator_values(before), accumulator_values(after));
    std::array::from_fn(|i| a[i] - b[i])
}

/// None when the center has no settlement of this id; else the fields in which the one
/// it holds differs from the forwarded one (only names: the content is someone else's).
fn held_differences(
    batch: &Batch<'_>,
    sender: &Sender<'_>,
    info: &wire::SetlInfo,
    before: &wire::Accumulator,
    delta: &Values,
) -> Option<Vec<&'static str>> {
    let held = batch.view.settlements.get(&info.setl_id)?;
    let v = &held.values;
    let ms = millis(info.setl_time.as_ref());
    let checks = [
        ("node_id", v.node_id == sender.node_id),
        ("fixmedins_code", v.fixmedins_code == info.fixmedins_code),
        ("mdtrt_id", v.mdtrt_id == info.mdtrt_id),
        ("psn_no", v.psn_no == info.psn_no),
        ("msgid", v.msgid == info.msgid),
        ("setl_time", Some(v.setl_time) == ms),
        ("mode", v.mode == i64::from(LOCAL)),
        ("medfee_sumamt", v.medfee_sumamt == info.medfee_sumamt),
        ("fund_pay_sumamt", v.fund_pay_sumamt == info.fund_pay_sumamt),
        ("acct_pay", v.acct_pay == info.acct_pay),
        ("psn_cash_pay", v.psn_cash_pay == info.psn_cash_pay),
        ("acc_year", v.acc_year == i64::from(before.year)),
        ("acc_pool", v.acc_pool == before.pool),
        ("acc_delta", v.acc_delta.as_ref() == Some(delta)),
    ];
    let mut diff: Vec<&'static str> = checks
        .iter()
        .filter(|(_, same)| !same)
        .map(|(f, _)| *f)
        .collect();
    let mut mine: Vec<(String, i64, i64)> = info
        .setldetail
        .iter()
        .map(|g| (g.fund_pay_type.clone(), g.inscp_scp_amt, g.fund_payamt))
        .collect();
    mine.sort();
    if mine != held.legs {
        diff.push("setldetail");
    }
    Some(diff)
}

/// `(base, paid)` of a leg as Python shows the tuple, or `None`.
fn leg_text(leg: Option<&(i64, i64)>) -> String {
    leg.map_or_else(|| "None".to_owned(), |(b, p)| format!("({b}, {p})"))
}

/// Where a settlement as the front-end computed it (`theirs`) differs from the center's
/// split of the same inputs (`ours`): `server.fundsplit.split_differences`.
pub fn split_differences(theirs: &wire::SetlInfo, ours: &wire::SetlInfo) -> Vec<String> {
    let mut out: Vec<String> = amounts(theirs)
        .iter()
        .zip(amounts(ours))
        .filter(|(t, o)| t.1 != o.1)
        .map(|(t, o)| format!("{} {} (ours {})", t.0, t.1, o.1))
        .collect();
    let ints = [
        ("balc", theirs.balc, ours.balc),
        (
            "psn_type",
            i64::from(theirs.psn_type),
            i64::from(ours.psn_type),
        ),
        (
            "clr_type",
            i64::from(theirs.clr_type),
            i64::from(ours.clr_type),
        ),
    ];
    out.extend(
        ints.iter()
            .filter(|(_, t, o)| t != o)
            .map(|(f, t, o)| format!("{f} {t} (ours {o})")),
    );
    if theirs.rule_id != ours.rule_id {
        out.push(format!(
            "rule_id {} (ours {})",
            theirs.rule_id, ours.rule_id
        ));
    }
    if theirs.policy_version != ours.policy_version {
        out.push(format!(
            "policy_version {} (ours {})",
            theirs.policy_version, ours.policy_version
        ));
    }
    let by_fund = |info: &wire::SetlInfo| -> BTreeMap<String, (i64, i64)> {
        info.setldetail
            .iter()
            .map(|g| (g.fund_pay_type.clone(), (g.inscp_scp_amt, g.fund_payamt)))
            .collect()
    };
    let (legs, mine) = (by_fund(theirs), by_fund(ours));
    if legs.len() != theirs.setldetail.len() {
        out.push("setldetail: a fund appears twice".into());
    }
    let funds: BTreeSet<&String> = legs.keys().chain(mine.keys()).collect();
    for fund in funds {
        let (t, o) = (legs.get(fund), mine.get(fund));
        if t != o {
            out.push(format!(
                "fund {fund} (base, paid) {} (ours {})",
                leg_text(t),
                leg_text(o)
            ));
        }
    }
    out
}

/// The center's name of a person, opened once per batch.
/// A person's name (opened once a batch), for the settlement it is written on.
pub(crate) fn name_of(batch: &mut Batch<'_>, vault: &Vault, psn_no: &str) -> Result<String, Fault> {
    if let Some(n) = batch.names.get(psn_no) {
        return Ok(n.clone());
    }
    let sealed = batch
        .view
        .persons
        .get(psn_no)
        .map(|p| p.psn_name_sealed.clone())
        .unwrap_or_default();
    let name = vault.open_text("psn_name", psn_no, &sealed)?;
    batch.names.insert(psn_no.to_owned(), name.clone());
    Ok(name)
}

/// Where and when a visit of a person the center holds is treated, as the split selects
/// its rule by them (the visit's, and the sending institution's level and region).
pub(crate) struct Treated<'a> {
    pub treatment: u8,
    pub date: i32,
    pub hosp_lv: u32,
    pub admdvs: &'a str,
}

/// The rule's selection for `person`'s visit and the split's person, paying from
/// `acct_balance` when `acct_used` (a stored value out of range is a fault of the center).
pub(crate) fn selected(
    person: &PersonRow,
    psn_no: &str,
    t: &Treated<'_>,
    acct_used: bool,
    acct_balance: i64,
) -> Result<(Selection, Person), Fault> {
    let narrow = |v: i64, what: &str| {
        u32::try_from(v).map_err(|_| Fault(format!("{what} {v} of {psn_no} is out of range")))
    };
    let sel = Selection {
        treatment: t.treatment,
        date: t.date,
        region: slip::region_of(&person.insuplc_admdvs),
        insutype: narrow(person.insutype, "insutype")?,
        psn_type: narrow(person.psn_type, "psn_type")?,
        hosp_lv: t.hosp_lv,
        admission_no: 0,
    };
    let age = slip::age_on(person.brdy, i64::from(t.date));
    let who = Person {
        age: u32::try_from(age).unwrap_or(u32::MAX),
        retired: person.retired,
        civil_servant: person.cvlserv_flag,
        cross_region: slip::cross_region(t.admdvs, &person.insuplc_admdvs, person.cross_region),
        assistance: person.maf_flag,
        acct_used,
        acct_balance,
    };
    Ok((sel, who))
}

/// Why no rule of `policy` covers a visit (as the Python side words it).
pub(crate) fn no_rule(
    insutype: i32,
    med_type: i32,
    person: &PersonRow,
    t: &Treated<'_>,
    policy: &Policy,
) -> String {
    format!(
        "no policy rule covers insutype {insutype}, med_type {med_type}, psn_type {}, \
         hospital level {} on {} (policy version {})",
        person.psn_type, t.hosp_lv, t.date, policy.doc.version
    )
}

/// The settlement as the center splits it, and its accumulator change; REJECTED when it is
/// not what the front-end forwarded.
fn split_again(
    center: &Center<'_>,
    sender: &Sender<'_>,
    batch: &mut Batch<'_>,
    item: &wire::ForwardItem,
    info: &wire::SetlInfo,
    before: &wire::Accumulator,
    theirs: &Values,
) -> Result<(wire::SetlInfo, Values), Failure<Refused>> {
    let Some(person) = batch.view.persons.get(&info.psn_no).cloned() else {
        return Err(rejected(format!(
            "psn_no: no insured person {} at the center",
            info.psn_no
        ))
        .into());
    };
    if i64::from(info.insutype) != person.insutype {
        return Err(rejected(format!(
            "insutype {}: the center has the person under {}",
            info.insutype, person.insutype
        ))
        .into());
    }
    let Some(policy) = center.policies.get(&info.policy_version).copied() else {
        return Err(rejected(format!(
            "policy_version: the center has no policy version {}",
            info.policy_version
        ))
        .into());
    };
    let treatment = treatment_of(info.med_type);
    let treated = Treated {
        treatment,
        date: item.begndate,
        hosp_lv: sender.hosp_lv,
        admdvs: sender.admdvs,
    };
    // The account balance the front-end settled against: what it left plus what it took
    // (the center's own may have moved since, as its accumulators may have).
    let (sel, who) = selected(
        &person,
        &info.psn_no,
        &treated,
        info.acct_pay > 0,
        info.balc + info.acct_pay,
    )?;
    let Some(rule) = policy.select(&sel) else {
        let why = no_rule(info.insutype, info.med_type, &person, &treated, policy);
        return Err(rejected(why).into());
    };
    let year = i64::from(item.begndate).div_euclid(10_000);
    let pool = &policy.rule(rule).accumulator;
    if (i64::from(before.year), &before.pool) != (year, pool) {
        return Err(rejected(format!(
            "accumulators of {} {}: the policy's rule uses {year} {}",
            before.year,
            repr(&before.pool),
            repr(pool)
        ))
        .into());
    }
    let sums = SplitInput {
        medfee_sumamt: info.medfee_sumamt,
        fulamt_ownpay_amt: info.fulamt_ownpay_amt,
        overlmt_amt: info.overlmt_amt,
        preselfpay_amt: info.preselfpay_amt,
        inscp_scp_amt: info.inscp_scp_amt,
    };
    let acc = Accumulators::from_values(accumulator_values(before));
    let (r, legs) = sp::split_with_legs(policy, &sums, &sel, &who, &acc)
        .map_err(|e| rejected(format!("the visit cannot be settled: {e}")))?;
    let psn_name = name_of(batch, center.vault, &info.psn_no)?;
    let parties = Parties {
        mdtrt_id: &info.mdtrt_id,
        psn_no: &info.psn_no,
        psn_name: &psn_name,
        insutype: info.insutype,
        psn_type: i32::try_from(person.psn_type).unwrap_or(i32::MAX),
        med_type: info.med_type,
        treatment,
        fixmedins_code: sender.fixmedins_code,
        invono: &info.invono,
    };
    let ours = slip::setl_info(policy, &parties, &sums, info.line_count, &r, legs);
    let after = r.acc.values();
    let before_values = accumulator_values(before);
    let delta: Values = std::array::from_fn(|i| after[i] - before_values[i]);
    let mut diff = split_differences(info, &ours);
    for (i, f) in Accumulators::FIELDS.iter().enumerate() {
        if theirs[i] != delta[i] {
            diff.push(format!(
                "accumulator change {f} {} (ours {})",
                theirs[i], delta[i]
            ));
        }
    }
    if !diff.is_empty() {
        return Err(rejected(format!(
            "does not split again the same at the center: {}",
            diff.join("; ")
        ))
        .into());
    }
    let ours = wire::SetlInfo {
        setl_id: info.setl_id.clone(),
        msgid: info.msgid.clone(),
        setl_time: info.setl_time,
        offline: info.offline,
        catalog_version: info.catalog_version,
        categories: info.categories.clone(),
        state: SETTLED,
        mode: LOCAL,
        ..ours
    };
    Ok((ours, delta))
}

fn forward_settle(
    center: &Center<'_>,
    sender: &Sender<'_>,
    batch: &mut Batch<'_>,
    item: &wire::ForwardItem,
) -> Result<(i32, String), Failure<Refused>> {
    let info = item.setlinfo.clone().unwrap_or_default();
    let before = item.accumulators_before.clone().unwrap_or_default();
    let after = item.accumulators_after.clone().unwrap_or_default();
    require_own_ids(sender, item, &info)?;
    // wrapping: the values are not known to be sane yet (a wrapped change differs anyway)
    let (b, a) = (accumulator_values(&before), accumulator_values(&after));
    let theirs_delta: Values = std::array::from_fn(|i| a[i].wrapping_sub(b[i]));
    if let Some(differs) = held_differences(batch, sender, &info, &before, &theirs_delta) {
        if !differs.is_empty() {
            return Err(Refused(
                CONFLICT,
                format!("{} is held with other {}", info.setl_id, differs.join(", ")),
            )
            .into());
        }
        return Ok((DUPLICATE, info.setl_id.clone()));
    }
    require_sane(center, item, &info, &before, &after)?;
    let delta_theirs = their_delta(&before, &after);
    if let Some(active) = batch.view.active.get(&info.mdtrt_id) {
        // e.g. an offline settle after a center call that did commit
        return Ok((
            REJECTED,
            format!("visit {} is already settled as {active}", info.mdtrt_id),
        ));
    }
    let (ours, delta) = split_again(center, sender, batch, item, &info, &before, &delta_theirs)?;
    let key: Key = (
        ours.psn_no.clone(),
        i64::from(before.year),
        before.pool.clone(),
    );
    let theirs = accumulator_values(&before);
    require_no_credit(batch, &key, &ours, &theirs)?;
    record(center, sender, batch, &key, &ours, delta)?;
    Ok(applied(center, batch, &key, &ours, &theirs, &delta))
}

/// The re-split takes the front-end's accumulators and balance as they were when it
/// settled; a front-end may not claim the person had used more than the center knows of
/// nor had more in the account than the center holds (forwarded.py says more).
fn require_no_credit(
    batch: &Batch<'_>,
    key: &Key,
    ours: &wire::SetlInfo,
    theirs: &Values,
) -> Result<(), Refused> {
    let current = batch.current(key);
    let claimed: Vec<String> = Accumulators::FIELDS
        .iter()
        .enumerate()
        .filter(|(i, _)| theirs[*i] > current[*i])
        .map(|(i, f)| format!("{f} {} > {}", theirs[i], current[i]))
        .collect();
    if !claimed.is_empty() {
        return Err(rejected(format!(
            "settled against more use of the year than the center holds: {}",
            claimed.join("; ")
        )));
    }
    if ours.acct_pay != 0 {
        let balc = batch.view.balances.get(&ours.psn_no).copied();
        if balc.map_or(true, |b| ours.acct_pay > b) {
            return Err(rejected(format!(
                "account pays {}, more than the center's balance {}",
                ours.acct_pay,
                balc.unwrap_or(0)
            )));
        }
    }
    Ok(())
}

/// The center's ledger row of a checked forwarded settlement, and its legs.
fn record(
    center: &Center<'_>,
    sender: &Sender<'_>,
    batch: &mut Batch<'_>,
    key: &Key,
    ours: &wire::SetlInfo,
    delta: Values,
) -> Result<(), Fault> {
    let setl_ms = millis(ours.setl_time.as_ref()).unwrap_or_default();
    let info = center
        .vault
        .seal("setlinfo", &ours.setl_id, &ours.encode_to_vec())?;
    let row = NewSettlement {
        setl_id: ours.setl_id.clone(),
        node_id: sender.node_id.to_owned(),
        fixmedins_code: ours.fixmedins_code.clone(),
        mdtrt_id: ours.mdtrt_id.clone(),
        psn_no: ours.psn_no.clone(),
        insutype: i64::from(ours.insutype),
        clr_type: i64::from(ours.clr_type),
        msgid: ours.msgid.clone(),
        invono: ours.invono.clone(),
        setl_time: setl_ms,
        setl_date: local_date(setl_ms, center.tz_offset_min),
        state: i64::from(SETTLED),
        mode: i64::from(LOCAL),
        offline: i64::from(ours.offline),
        medfee_sumamt: ours.medfee_sumamt,
        fund_pay_sumamt: ours.fund_pay_sumamt,
        acct_pay: ours.acct_pay,
        psn_cash_pay: ours.psn_cash_pay,
        acc_year: key.1,
        acc_pool: key.2.clone(),
        acc_delta: delta,
        info,
        received_at: center.now,
        cancel_id: None,
        cancel_time: None,
        cancel_date: None,
    };
    let legs = ours
        .setldetail
        .iter()
        .map(|g| (g.fund_pay_type.clone(), g.inscp_scp_amt, g.fund_payamt))
        .collect();
    batch.record(row, legs);
    Ok(())
}

/// Apply the change to the center's accumulators and account; a difference between the
/// center's accumulators before and the front-end's is kept, not overwritten.
fn applied(
    center: &Center<'_>,
    batch: &mut Batch<'_>,
    key: &Key,
    ours: &wire::SetlInfo,
    theirs: &Values,
    delta: &Values,
) -> (i32, String) {
    let current = batch.current(key);
    batch.set_accumulators(key, std::array::from_fn(|i| current[i] + delta[i]));
    if ours.acct_pay != 0 {
        batch.move_balance(&ours.psn_no, -ours.acct_pay);
    }
    if &current != theirs {
        batch.writes.differences.push(Difference {
            setl_id: ours.setl_id.clone(),
            key: key.clone(),
            ours: current,
            theirs: *theirs,
            at: center.now,
        });
        return (
            APPLIED_WITH_DIFFERENCE,
            "the center's accumulators differed".into(),
        );
    }
    (APPLIED, ours.setl_id.clone())
}

// ------------------------------------------------------------------------------- cancel
fn forward_cancel(
    center: &Center<'_>,
    sender: &Sender<'_>,
    batch: &mut Batch<'_>,
    item: &wire::ForwardItem,
) -> Result<(i32, String), Refused> {
    let (code, node) = (sender.fixmedins_code, sender.node_id);
    if !issued_by(&item.setl_id, "S", code, node) {
        return Ok((
            REJECTED,
            format!(
                "cancel of {}, not a settlement of node {node}",
                item.setl_id
            ),
        ));
    }
    if !issued_by(&item.cancel_id, "C", code, node) {
        return Ok((
            REJECTED,
            format!(
                "cancel id {} is not one of node {node}",
                repr(&item.cancel_id)
            ),
        ));
    }
    let at = item.cancel_time_ms;
    if !(EARLIEST_MS..=center.now.saturating_add(DAY_MS)).contains(&at) {
        return Ok((REJECTED, format!("absurd cancel_time_ms {at}")));
    }
    let Some(held) = batch
        .view
        .settlements
        .get(&item.setl_id)
        .filter(|h| h.values.fixmedins_code == code)
    else {
        return Ok((
            REJECTED,
            format!("cancel of {}, which the center does not have", item.setl_id),
        ));
    };
    if held.state != i64::from(SETTLED) {
        if held.cancel_id.as_deref() == Some(item.cancel_id.as_str()) {
            return Ok((DUPLICATE, item.cancel_id.clone()));
        }
        if let Some(other) = held.cancel_id.as_deref() {
            if !other.is_empty() && issued_by(other, "C", code, node) {
                return Err(Refused(
                    CONFLICT,
                    format!("{} is held cancelled by another cancel id", item.setl_id),
                ));
            }
        }
        return Ok((
            REJECTED,
            format!(
                "{} is already cancelled as {}",
                item.setl_id,
                held.cancel_id.as_deref().unwrap_or("None")
            ),
        ));
    }
    let v = &held.values;
    let key: Key = (v.psn_no.clone(), v.acc_year, v.acc_pool.clone());
    let (delta, acct_pay, psn_no) = (
        v.acc_delta.unwrap_or([0; LEN]),
        v.acct_pay,
        v.psn_no.clone(),
    );
    let acc = batch.current(&key);
    batch.set_accumulators(&key, std::array::from_fn(|i| acc[i] - delta[i]));
    if acct_pay != 0 {
        batch.move_balance(&psn_no, acct_pay);
    }
    batch.cancel(
        &item.setl_id,
        &item.cancel_id,
        at,
        local_date(at, center.tz_offset_min),
    );
    Ok((APPLIED, item.cancel_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_only_plain_texts() {
        let settle = |setl: &str, psn: &str, pool: &str| wire::ForwardItem {
            kind: "settle".into(),
            setlinfo: Some(wire::SetlInfo {
                setl_id: setl.into(),
                mdtrt_id: "M1".into(),
                psn_no: psn.into(),
                policy_version: 3,
                ..Default::default()
            }),
            accumulators_before: Some(wire::Accumulator {
                year: 2026,
                pool: pool.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = wire::ForwardRequest {
            header: None,
            items: vec![
                settle("S1", "P1", "outpatient"),
                settle("S\0", "P2", "bad\0"),
                wire::ForwardItem {
                    kind: "cancel".into(),
                    setl_id: "S0".into(),
                    ..Default::default()
                },
            ],
        };
        let p = plan(&req);
        assert_eq!(p.setl_ids, ["S0", "S1"]);
        assert_eq!(p.settle_ids.iter().collect::<Vec<_>>(), ["S1"]);
        assert_eq!(p.mdtrt_ids, ["M1"]);
        assert_eq!(p.psn_nos.iter().collect::<Vec<_>>(), ["P1", "P2"]);
        assert_eq!(
            p.keys.iter().collect::<Vec<_>>(),
            [&("P1".to_owned(), 2026, "outpatient".to_owned())]
        );
        assert_eq!(p.policy_versions.iter().collect::<Vec<_>>(), [&3]);
    }
}
