//! A front-end's settle operation, whole, in one call on the store's connection: the msgid's
//! replay or the work (visit, person, fee lines, preprocessing, rule, accumulators, split,
//! the settlement's writes, the sealed answer) and the audit record, inside the writer's
//! transaction. PreSettle runs the same computation (`compute`) and writes nothing.
//!
//! The checks, their order and their messages are those of the Python operation this
//! replaces (server/frontend/settle.py keeps the center-mode steps around `compute`): a
//! refused settle is refused with the same status and text whichever path served it.

use std::time::Instant;

use prost::Message;
use rusqlite::{Connection, OptionalExtension};

use super::cancel;
use super::center_mode::{keep, Kept};
use super::journal::{self, Journal};
use super::refusal::{LedgerError, Refusal};
use super::vault::Vault;
use super::{accumulators, encode_line_results, fee_lines, record_settlement};
use super::{LegRow, SettlementRow, LINE_RESULT_INTS};
use crate::catalog::Catalog;
use crate::columns::StrView;
use crate::policy::{Policy, Selection};
use crate::preprocess::{self as pre, Lines, Summary, VisitCtx};
use crate::split::{self as sp, Accumulators, Person, SplitInput};
use crate::wire;

use crate::settlement::{self as slip, Parties, LOCAL, SETTLED};

/// What is settled against: this front-end's node, keys and clock settings.
pub struct Node {
    pub node_id: String,
    pub tz_offset_min: i64,
    pub vault: Vault,
    pub audit_key: Vec<u8>,
}

/// Who makes a call (signed in, authenticated before the operation runs), as the audit
/// record names them.
pub struct Who<'a> {
    pub fixmedins_code: &'a str,
    pub opter: &'a str,
    /// The roles the sign-in holds, rendered for the audit record.
    pub roles: &'a str,
    /// The method's path, for the audit record.
    pub rpc: &'a str,
}

/// The caller of a computation: who, their institution's level and region, and the
/// reference data it settles with.
pub struct Caller<'a> {
    pub who: Who<'a>,
    pub hosp_lv: u32,
    pub admdvs: &'a str,
    pub policy: &'a Policy,
    pub catalog: &'a Catalog,
}

/// The emergency plan of a center-mode front-end whose center is unreachable: settle here,
/// marked offline, within these limits unless the policy sets its own.
#[derive(Debug, Clone, Copy)]
pub struct Offline {
    pub max_medfee_fen: i64,
    pub max_per_day: i64,
}

/// A visit as the settle reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitRow {
    pub id: i64,
    pub mdtrt_id: String,
    pub fixmedins_code: String,
    pub psn_no: String,
    pub insutype: i64,
    pub med_type: i64,
    pub treatment: i64,
    pub begndate: i64,
    pub diagnoses: Vec<String>,
    pub state: String,
}

/// A visit's preprocessing and split, before anything is written.
#[derive(Debug, Clone)]
pub struct Computed {
    pub visit: VisitRow,
    /// Without id, time, msgid, state or mode (the settle sets them).
    pub info: wire::SetlInfo,
    pub acc_year: i64,
    pub acc_pool: String,
    pub acc_before: Accumulators,
    pub acc_after: Accumulators,
    /// The settlement's line-results blob (`encode_line_results`).
    pub line_results: Vec<u8>,
    /// Which center settles it in center mode: the person's insured region.
    pub insured_region: String,
    /// The fee lines' digest (center mode: unchanged when the answer comes back?).
    pub lines_digest: [u8; 32],
    /// How long the engine took: preprocessing, then the split (the server's metrics).
    pub timing: Timing,
}

/// The engine's time in a computation, in nanoseconds (`medsettle_engine_seconds` by
/// stage: the metrics convert).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub preprocess_ns: u64,
    pub split_ns: u64,
}

fn nanos_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a call of a batch answered: the answer's bytes, whether it was a replay, and the
/// settlement it made or cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub answer: Vec<u8>,
    pub replayed: bool,
    /// Empty for a replay.
    pub setl_id: String,
    /// The engine's time; None when nothing was computed (a replay, a cancel).
    pub timing: Option<Timing>,
}

impl Answered {
    /// The msgid's stored answer, replayed.
    pub(super) fn replayed(answer: Vec<u8>) -> Self {
        Self {
            answer,
            replayed: true,
            setl_id: String::new(),
            timing: None,
        }
    }
}

/// The settle request's header (absent: empty; the server checked it before).
pub(super) fn header(req: &wire::SettleRequest) -> (&str, &str) {
    req.header
        .as_ref()
        .map_or(("", ""), |h| (h.msgid.as_str(), h.fixmedins_code.as_str()))
}

pub(super) fn load_visit(
    conn: &Connection,
    vault: &Vault,
    who: &Who<'_>,
    mdtrt_id: &str,
) -> Result<VisitRow, LedgerError> {
    if mdtrt_id.is_empty() {
        return Err(Refusal::field("mdtrt_id", "is required").into());
    }
    let row = conn
        .prepare_cached(
            "SELECT id, mdtrt_id, fixmedins_code, psn_no, insutype, med_type, treatment, \
             begndate, dise_codg, state FROM visits WHERE mdtrt_id = ?1",
        )?
        .query_row([mdtrt_id], |r| {
            Ok((
                VisitRow {
                    id: r.get(0)?,
                    mdtrt_id: r.get(1)?,
                    fixmedins_code: r.get(2)?,
                    psn_no: r.get(3)?,
                    insutype: r.get(4)?,
                    med_type: r.get(5)?,
                    treatment: r.get(6)?,
                    begndate: r.get(7)?,
                    diagnoses: Vec::new(),
                    state: r.get(9)?,
                },
                r.get::<_, Vec<u8>>(8)?,
            ))
        })
        .optional()?;
    let Some((mut visit, sealed)) = row.filter(|(v, _)| v.fixmedins_code == who.fixmedins_code)
    else {
        return Err(Refusal::not_found(format!(
            "mdtrt_id: no visit {mdtrt_id} at this institution"
        ))
        .into());
    };
    let text = vault
        .open_text("dise_codg", &visit.mdtrt_id, &sealed)
        .map_err(|e| LedgerError::Internal(e.0))?;
    visit.diagnoses = text
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(visit)
}

/// What the split reads of a person (`server.persons.PersonRow`).
struct PersonRow {
    psn_name: String,
    gend: i64,
    brdy: i64,
    psn_type: i64,
    insuplc_admdvs: String,
    cvlserv_flag: bool,
    maf_flag: bool,
    retired: bool,
    cross_region: i64,
    balc: i64,
}

fn load_person(conn: &Connection, vault: &Vault, psn_no: &str) -> Result<PersonRow, LedgerError> {
    let row = conn
        .prepare_cached(
            "SELECT psn_name, gend, brdy, psn_type, insuplc_admdvs, cvlserv_flag, maf_flag, \
             retired, cross_region, balc FROM persons WHERE psn_no = ?1",
        )?
        .query_row([psn_no], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                PersonRow {
                    psn_name: String::new(),
                    gend: r.get(1)?,
                    brdy: r.get(2)?,
                    psn_type: r.get(3)?,
                    insuplc_admdvs: r.get(4)?,
                    cvlserv_flag: r.get::<_, i64>(5)? != 0,
                    maf_flag: r.get::<_, i64>(6)? != 0,
                    retired: r.get::<_, i64>(7)? != 0,
                    cross_region: r.get(8)?,
                    balc: r.get(9)?,
                },
            ))
        })
        .optional()?;
    // A visit is registered only for a known person, and persons are never deleted.
    let (sealed, mut person) =
        row.ok_or_else(|| LedgerError::Internal(format!("the visit's person {psn_no} is gone")))?;
    person.psn_name = vault
        .open_text("psn_name", psn_no, &sealed)
        .map_err(|e| LedgerError::Internal(e.0))?;
    Ok(person)
}

/// A stored value that must fit a narrower engine type (`what` names it in the error).
pub(super) fn narrow<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T, LedgerError> {
    T::try_from(v).map_err(|_| LedgerError::Internal(format!("{what} {v} is out of range")))
}

fn cannot_settle(e: impl std::fmt::Display) -> LedgerError {
    Refusal::failed_precondition(format!("the visit cannot be settled: {e}")).into()
}

/// Preprocesses and splits a visit's fees; changes nothing.
pub fn compute(
    conn: &Connection,
    node: &Node,
    caller: &Caller<'_>,
    req: &wire::SettleRequest,
) -> Result<Computed, LedgerError> {
    let policy = caller.policy;
    let visit = load_visit(conn, &node.vault, &caller.who, &req.mdtrt_id)?;
    if req.psn_no.is_empty() {
        return Err(Refusal::field("psn_no", "is required").into());
    }
    if req.psn_no != visit.psn_no {
        return Err(Refusal::field("psn_no", "does not match the visit's person").into());
    }
    if req.medfee_sumamt < 0 {
        return Err(Refusal::field("medfee_sumamt", "must not be negative").into());
    }
    if visit.state == "settled" {
        let setl: Option<String> = conn
            .prepare_cached("SELECT setl_id FROM settlements WHERE visit_id = ?1 AND state = 1")?
            .query_row([visit.id], |r| r.get(0))
            .optional()?;
        return Err(Refusal::failed_precondition(format!(
            "mdtrt_id: {} is already settled as {}",
            visit.mdtrt_id,
            setl.as_deref().unwrap_or("?")
        ))
        .into());
    }
    if visit.state != "registered" {
        return Err(Refusal::failed_precondition(format!(
            "mdtrt_id: {} is {}",
            visit.mdtrt_id, visit.state
        ))
        .into());
    }
    let rows = fee_lines(conn, visit.id)?;
    if rows.feedetl_sn.is_empty() {
        return Err(Refusal::failed_precondition(format!(
            "mdtrt_id: {} has no fee lines to settle",
            visit.mdtrt_id
        ))
        .into());
    }
    let person = load_person(conn, &node.vault, &visit.psn_no)?;
    let age = slip::age_on(person.brdy, visit.begndate);
    let ev = VisitCtx {
        treatment: narrow(visit.treatment, "treatment")?,
        psn_type: narrow(person.psn_type, "psn_type")?,
        sex: narrow(person.gend, "gend")?,
        age: narrow(age, "age")?,
        date: narrow(visit.begndate, "begndate")?,
        diagnoses: visit
            .diagnoses
            .iter()
            .map(|d| d.trim().to_owned())
            .collect(),
    };
    let hosp = StrView::new(
        "medins_list_codg",
        &rows.medins_list_codg.0,
        &rows.medins_list_codg.1,
    )
    .map_err(cannot_settle)?;
    let ins = StrView::new(
        "med_list_codg",
        &rows.med_list_codg.0,
        &rows.med_list_codg.1,
    )
    .map_err(cannot_settle)?;
    let lines = Lines {
        medins_list_codg: hosp,
        med_list_codg: Some(ins),
        cnt: &rows.cnt,
        pric: &rows.pric,
        det_item_fee_sumamt: &rows.det_item_fee_sumamt,
        hosp_appr_flag: &rows.hosp_appr_flag,
        fee_date: &rows.fee_date,
        visit: &[],
    };
    let doc = &policy.doc;
    let started = Instant::now();
    // the lines were checked at upload; an error here means the catalog changed since
    let (results, sums) = pre::preprocess(
        caller.catalog,
        &lines,
        std::slice::from_ref(&ev),
        doc.preprocess.line_tolerance_fen,
        doc.rounding.mode,
    )
    .map_err(cannot_settle)?;
    let summary = sums.get(0);
    let preprocess_ns = nanos_since(started);
    if req.medfee_sumamt != summary.medfee_sumamt {
        return Err(Refusal::field(
            "medfee_sumamt",
            format!(
                "{} is not the uploaded lines' total {} ({} lines)",
                req.medfee_sumamt, summary.medfee_sumamt, summary.line_count
            ),
        )
        .into());
    }
    let sel = Selection {
        treatment: ev.treatment,
        date: ev.date,
        region: slip::region_of(&person.insuplc_admdvs),
        insutype: narrow(visit.insutype, "insutype")?,
        psn_type: ev.psn_type,
        hosp_lv: caller.hosp_lv,
        admission_no: 0,
    };
    let Some(rule) = policy.select(&sel) else {
        return Err(Refusal::failed_precondition(format!(
            "no policy rule covers insutype {}, med_type {}, psn_type {}, hospital level {} \
             on {} (policy version {})",
            visit.insutype,
            visit.med_type,
            person.psn_type,
            caller.hosp_lv,
            visit.begndate,
            doc.version
        ))
        .into());
    };
    let acc_year = visit.begndate / 10_000;
    let acc_pool = policy.rule(rule).accumulator.clone();
    let before = accumulators(conn, &visit.psn_no, acc_year, &acc_pool)?
        .unwrap_or_else(|| Accumulators::from_values([0; Accumulators::LEN]));
    let who = Person {
        age: ev.age,
        retired: person.retired,
        civil_servant: person.cvlserv_flag,
        cross_region: slip::cross_region(
            caller.admdvs,
            &person.insuplc_admdvs,
            person.cross_region,
        ),
        assistance: person.maf_flag,
        acct_used: req.acct_used_flag,
        acct_balance: person.balc,
    };
    let started = Instant::now();
    let (r, legs) = sp::split_with_legs(policy, &SplitInput::from(&summary), &sel, &who, &before)
        .map_err(cannot_settle)?;
    let split_ns = nanos_since(started);
    let info = slip::setl_info(
        policy,
        &Parties {
            mdtrt_id: &visit.mdtrt_id,
            psn_no: &visit.psn_no,
            psn_name: &person.psn_name,
            insutype: narrow(visit.insutype, "insutype")?,
            psn_type: narrow(person.psn_type, "psn_type")?,
            med_type: narrow(visit.med_type, "med_type")?,
            treatment: ev.treatment,
            fixmedins_code: caller.who.fixmedins_code,
            invono: &req.invono,
        },
        &SplitInput::from(&summary),
        narrow(summary.line_count, "line_count")?,
        &r,
        legs,
    );
    let info = wire::SetlInfo {
        catalog_version: caller.catalog.version,
        categories: categories(&summary),
        ..info
    };
    let line_results = line_results(
        caller.catalog,
        &results,
        &rows.feedetl_sn,
        &rows.det_item_fee_sumamt,
    )?;
    Ok(Computed {
        visit,
        info,
        acc_year,
        acc_pool,
        acc_before: before,
        acc_after: r.acc,
        line_results,
        insured_region: person.insuplc_admdvs,
        lines_digest: rows.digest,
        timing: Timing {
            preprocess_ns,
            split_ns,
        },
    })
}

fn categories(summary: &Summary) -> Vec<wire::CategorySum> {
    summary
        .by_category
        .iter()
        .enumerate()
        .filter(|(_, sums)| sums.iter().any(|&v| v != 0))
        .map(|(cat, s)| wire::CategorySum {
            // fewer than 2^31 categories
            med_chrgitm_type: cat as i32,
            det_item_fee_sumamt: s[0],
            fulamt_ownpay_amt: s[1],
            overlmt_amt: s[2],
            preselfpay_amt: s[3],
            inscp_scp_amt: s[4],
        })
        .collect()
}

fn line_results(
    catalog: &Catalog,
    r: &pre::LineResults,
    sns: &[String],
    amounts: &[i64],
) -> Result<Vec<u8>, LedgerError> {
    let codes: Vec<&str> = r
        .item
        .iter()
        .map(|&i| match usize::try_from(i) {
            Ok(i) if i < catalog.len() => catalog.code(i),
            _ => "",
        })
        .collect();
    let ints: Vec<[i64; LINE_RESULT_INTS]> = (0..r.item.len())
        .map(|k| {
            [
                i64::from(r.chrgitm_lv[k]),
                i64::from(r.fee_category[k]),
                amounts[k],
                r.fulamt_ownpay_amt[k],
                r.overlmt_amt[k],
                r.preselfpay_amt[k],
                r.inscp_scp_amt[k],
                i64::from(r.flags[k]),
            ]
        })
        .collect();
    encode_line_results(sns, &codes, &ints).map_err(LedgerError::Internal)
}

/// `server.common.local_date`: the yyyymmdd of an instant in the configured local time.
pub fn local_date(ms: i64, tz_offset_min: i64) -> i64 {
    let days = (ms.div_euclid(1000) + tz_offset_min * 60).div_euclid(86_400);
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    y * 10_000 + m * 100 + d
}

pub(super) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // below 10^9
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// PreSettle's answer: the computation as a `SettleResponse`, stamped with the msgid.
pub fn pre_settle(
    conn: &Connection,
    node: &Node,
    caller: &Caller<'_>,
    req: &wire::SettleRequest,
) -> Result<(Vec<u8>, Timing), LedgerError> {
    let mut c = compute(conn, node, caller, req)?;
    c.info.msgid = header(req).0.to_owned();
    let answer = wire::SettleResponse {
        setlinfo: Some(c.info),
    }
    .encode_to_vec();
    Ok((answer, c.timing))
}

fn check_offline(
    conn: &Connection,
    policy: &Policy,
    limits: Offline,
    medfee: i64,
    day: i64,
) -> Result<(), LedgerError> {
    let (max_medfee, max_per_day, source) = match policy.doc.offline {
        Some(o) => (
            o.max_medfee_fen,
            i64::from(o.max_per_day),
            format!("policy {} version {}", policy.doc.id, policy.doc.version),
        ),
        None => (
            limits.max_medfee_fen,
            limits.max_per_day,
            "this front-end's settings".to_owned(),
        ),
    };
    if medfee > max_medfee {
        return Err(Refusal::unavailable(format!(
            "the center is unreachable and {medfee} fen is above the offline limit of \
             {max_medfee} per settlement ({source}); retry when the center is back"
        ))
        .into());
    }
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM settlements WHERE offline = 1 AND setl_date = ?1")?
        .query_row([day], |r| r.get(0))?;
    if n >= max_per_day {
        return Err(Refusal::unavailable(format!(
            "the center is unreachable and today's {max_per_day} offline settlements \
             ({source}) are used up; retry when the center is back"
        ))
        .into());
    }
    Ok(())
}

/// The method a Settle's answer is stored under (center mode's too).
pub const METHOD: &str = "Settle";

/// What a Settle leaves beside its work, shared by the local settle and center mode's
/// keep: the msgid's stored answer replayed, or the settlement recorded with its answer
/// stored under the msgid; and the audit record of either.
pub(super) struct SettleJournal<'a> {
    conn: &'a Connection,
    node: &'a Node,
    journal: Journal<'a>,
}

impl<'a> SettleJournal<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        node: &'a Node,
        who: &'a Who<'a>,
        req: &'a wire::SettleRequest,
        req_hash: &'a [u8],
        now: i64,
    ) -> Self {
        let objects = journal::objects(&[("psn_no", &req.psn_no), ("mdtrt_id", &req.mdtrt_id)]);
        let journal = Journal::new(conn, node, who, METHOD, header(req), req_hash, now, objects);
        Self {
            conn,
            node,
            journal,
        }
    }

    /// The msgid's stored answer, audited as a replay; None when it has none.
    pub(super) fn replay(&self) -> Result<Option<Answered>, LedgerError> {
        Ok(self.journal.replay()?.map(Answered::replayed))
    }

    /// `info`, stamped with the msgid and settled, sealed into `row` and recorded with its
    /// legs, the accumulators and (`forward`) the outbox row; its answer stored with the
    /// msgid and audited.
    pub(super) fn record(
        &self,
        mut row: SettlementRow,
        mut info: wire::SetlInfo,
        before: &Accumulators,
        after: &Accumulators,
        forward: bool,
        timing: Option<Timing>,
    ) -> Result<Answered, LedgerError> {
        let setl_id = row.setl_id.clone();
        info.msgid = self.journal.msgid().to_owned();
        info.state = SETTLED;
        row.info = self
            .node
            .vault
            .seal("setlinfo", &setl_id, &info.encode_to_vec())
            .map_err(|e| LedgerError::Internal(e.0))?;
        let legs: Vec<LegRow> = info
            .setldetail
            .iter()
            .map(|g| LegRow {
                fund_pay_type: g.fund_pay_type.clone(),
                base: g.inscp_scp_amt,
                amount: g.fund_payamt,
            })
            .collect();
        record_settlement(self.conn, &row, &legs, before, after, forward)?;
        let answer = wire::SettleResponse {
            setlinfo: Some(info),
        }
        .encode_to_vec();
        self.journal.answered(&answer, &setl_id)?;
        Ok(Answered {
            answer,
            replayed: false,
            setl_id,
            timing,
        })
    }
}

/// The `settlements` row of `info` settled for `visit` at `at` (ms, local date), with
/// the row id a local settle issued its setl_id from (None: the next one) and the
/// accumulator year and pool it moved, and its line results; its sealed info left empty
/// (`SettleJournal::record` seals it).
pub(super) fn settlement_row(
    info: &wire::SetlInfo,
    visit: &VisitRow,
    req: &wire::SettleRequest,
    at: (i64, i64),
    id: Option<i64>,
    acc: (i64, &str),
    line_results: Vec<u8>,
) -> SettlementRow {
    SettlementRow {
        id,
        setl_id: info.setl_id.clone(),
        fixmedins_code: info.fixmedins_code.clone(),
        mdtrt_id: visit.mdtrt_id.clone(),
        visit_id: visit.id,
        psn_no: visit.psn_no.clone(),
        insutype: i64::from(info.insutype),
        clr_type: i64::from(info.clr_type),
        msgid: header(req).0.to_owned(),
        invono: req.invono.clone(),
        setl_time: at.0,
        setl_date: at.1,
        mode: i64::from(info.mode),
        offline: info.offline,
        medfee_sumamt: info.medfee_sumamt,
        fund_pay_sumamt: info.fund_pay_sumamt,
        acct_pay: info.acct_pay,
        psn_cash_pay: info.psn_cash_pay,
        acc_year: acc.0,
        acc_pool: acc.1.to_owned(),
        info: Vec::new(),
        line_results,
    }
}

/// A local-mode Settle (or, with `offline`, the emergency settle of a center-mode front-end
/// whose center is unreachable), whole: the msgid's stored answer replayed, or the visit
/// computed and recorded with an outbox row for the center, its answer stored; and the
/// audit record of either. Runs inside the caller's transaction (the store's savepoint).
pub fn settle(
    conn: &Connection,
    node: &Node,
    caller: &Caller<'_>,
    req: &wire::SettleRequest,
    req_hash: &[u8],
    now: i64,
    offline: Option<Offline>,
) -> Result<Answered, LedgerError> {
    let journal = SettleJournal::new(conn, node, &caller.who, req, req_hash, now);
    if let Some(replayed) = journal.replay()? {
        return Ok(replayed);
    }
    let c = compute(conn, node, caller, req)?;
    let setl_date = local_date(now, node.tz_offset_min);
    if let Some(limits) = offline {
        check_offline(conn, caller.policy, limits, c.info.medfee_sumamt, setl_date)?;
    }
    let rowid: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM settlements")?
        .query_row([], |r| r.get(0))?;
    let setl_id = format!(
        "S{}{}{:012}",
        caller.who.fixmedins_code, node.node_id, rowid
    );
    let mut info = c.info;
    info.setl_id = setl_id;
    info.setl_time = Some(timestamp(now));
    info.mode = LOCAL;
    info.offline = offline.is_some();
    let acc = (c.acc_year, c.acc_pool.as_str());
    let at = (now, setl_date);
    let row = settlement_row(&info, &c.visit, req, at, Some(rowid), acc, c.line_results);
    journal.record(row, info, &c.acc_before, &c.acc_after, true, Some(c.timing))
}

/// One call of a batch: its request hash, when it arrived, and what it does (borrowed: the
/// caller keeps the decoded requests, on whichever thread the batch runs).
pub struct BatchCall<'a> {
    pub req_hash: &'a [u8],
    pub now: i64,
    pub work: Work<'a>,
}

/// What a call of a batch does, with its request and caller.
pub enum Work<'a> {
    /// Settle here: local mode, or with limits center mode's emergency plan (`settle`).
    Settle {
        req: &'a wire::SettleRequest,
        caller: Caller<'a>,
        offline: Option<Offline>,
    },
    /// Keep what the center settled: center mode (`center_mode::keep`).
    Keep {
        req: &'a wire::SettleRequest,
        who: Who<'a>,
        kept: &'a Kept,
    },
    /// Cancel a settlement of this front-end: local mode (`cancel::cancel_call`).
    Cancel {
        req: &'a wire::CancelSettlementRequest,
        who: Who<'a>,
    },
}

/// SQLite's primary result codes that mean the store itself cannot write, whatever the call
/// (the Python store's `STORE_FAILURES`): the batch that met one fails whole.
pub fn store_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi::ErrorCode::*;
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            OutOfMemory | ReadOnly | SystemIoFailure | DatabaseCorrupt | DiskFull
                | CannotOpen | NotADatabase
        )
    )
}

/// The calls of a batch (settles, center mode's keeps, cancels) in order, each in its own
/// savepoint inside the caller's open transaction: one refused (or failing) is rolled back
/// alone and the rest go on, so two settles of one person in a batch, or a settle and its
/// cancel, see each other's writes exactly as two batches would. A store failure (a full disk, an I/O error), or SQLite rolling the transaction
/// back, fails the whole batch (`Err`): the caller rolls back and answers every call
/// UNAVAILABLE. Nothing here commits.
pub fn settle_batch(
    conn: &Connection,
    node: &Node,
    calls: &[BatchCall<'_>],
) -> Result<Vec<Result<Answered, LedgerError>>, rusqlite::Error> {
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        let (hash, now) = (call.req_hash, call.now);
        let done = match &call.work {
            Work::Settle {
                req,
                caller,
                offline,
            } => settle(conn, node, caller, req, hash, now, *offline),
            Work::Keep { req, who, kept } => keep(conn, node, who, req, hash, now, kept),
            Work::Cancel { req, who } => cancel::cancel_call(conn, node, who, req, hash, now),
        };
        match done {
            Ok(answered) => {
                conn.prepare_cached("RELEASE op")?.execute([])?;
                out.push(Ok(answered));
            }
            Err(LedgerError::Sql(e)) if store_failure(&e) || conn.is_autocommit() => {
                return Err(e);
            }
            Err(e) => {
                conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
                conn.prepare_cached("RELEASE op")?.execute([])?;
                out.push(Err(e));
            }
        }
    }
    Ok(out)
}

/// COMMITs the connection's open transaction (a batch's last step); when SQLite does not,
/// what is left of the transaction is rolled back, so it never lingers half-done.
pub fn commit(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch("COMMIT").inspect_err(|_| {
        if !conn.is_autocommit() {
            // the COMMIT's own error is the one reported
            let _ = conn.execute_batch("ROLLBACK");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_date_is_the_civil_date_in_the_configured_zone() {
        // 2026-12-06 00:30 at UTC+8 is 2026-12-05 16:30 UTC
        let ms = 1_796_488_200_000; // 2026-12-05T16:30:00Z
        assert_eq!(local_date(ms, 0), 20261205);
        assert_eq!(local_date(ms, 480), 20261206);
        assert_eq!(local_date(0, 0), 19700101);
        assert_eq!(local_date(951_782_400_000, 0), 20000229);
    }

    #[test]
    fn ages_and_regions() {
        assert_eq!(slip::age_on(19800615, 20260614), 45);
        assert_eq!(slip::age_on(19800615, 20260615), 46);
        assert_eq!(slip::age_on(20270101, 20260101), 0);
        assert_eq!(slip::region_of("440100"), 440100);
        assert_eq!(slip::region_of(""), 0);
        assert_eq!(slip::region_of("44A100"), 0);
    }
}
