//! Center mode at the front-end, its two steps on the store's connection
//! (server/frontend/center_mode.py):
//!
//! - `prepare`, on a snapshot before the center is asked: the msgid's stored answer, or the
//!   visit computed as a local settle would compute it and the `CenterSettleRequest` that
//!   carries its summary to the center;
//! - `keep`, in the writer's transaction (a batch's savepoint, like `settle::settle`) once
//!   the center has answered: the msgid's stored answer replayed, or the visit and its lines
//!   checked unchanged since they were sent, a pending undo of this settlement void, and the
//!   center's settlement recorded with the center's accumulators as this front-end's cache,
//!   its answer stored with the msgid; and the audit record of either.
//!
//! The checks and texts are those of the local settle (`settle.rs`), which these share.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::journal;
use super::refusal::{LedgerError, Refusal};
use super::settle::{compute, header, load_visit, local_date, narrow, Answered, Caller, Node};
use super::settle::{settlement_row, SettleJournal, Timing, Who, METHOD};
use super::{accumulators, fee_lines};
use crate::settlement::accumulator_values;
use crate::split::Accumulators;
use crate::wire;

/// What the front-end computed before it asked the center (`settle::compute`), and the
/// center's answer.
#[derive(Debug, Clone)]
pub struct Kept {
    pub answer: wire::CenterSettleResponse,
    pub acc_year: i64,
    pub acc_pool: String,
    pub line_results: Vec<u8>,
    /// The fee lines' digest when they were computed (`Asked`): they must not have changed
    /// since.
    pub lines_digest: Vec<u8>,
}

/// What is sent to the center for a settle or a pre-settle, and what the keep will need.
#[derive(Debug, Clone)]
pub struct Asked {
    pub request: wire::CenterSettleRequest,
    /// Which center settles it: the person's insured region.
    pub insured_region: String,
    pub acc_year: i64,
    pub acc_pool: String,
    pub line_results: Vec<u8>,
    pub lines_digest: [u8; 32],
    pub timing: Timing,
}

/// `prepare`'s outcome: this msgid's stored answer, or the question for the center.
#[derive(Debug, Clone)]
pub enum Prepared {
    Replay(Vec<u8>),
    Ask(Box<Asked>),
}

/// The id of a center-mode settlement, the same on every retry of one HIS call (a retry
/// after a crash meets the center's record of it instead of settling twice):
/// `S`, the institution, the node, `H` and 12 hex digits of SHA-256(institution NUL msgid).
pub fn center_setl_id(node_id: &str, fixmedins_code: &str, msgid: &str) -> String {
    let digest = Sha256::digest(format!("{fixmedins_code}\0{msgid}").as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("S{fixmedins_code}{node_id}H{hex}")
}

/// A center-mode Settle's (`req_hash` given: its msgid's stored answer is replayed when
/// there is one) or PreSettle's (None) question for the center, its header naming this
/// front-end machine (`instance_id`); writes nothing.
pub fn prepare(
    conn: &Connection,
    node: &Node,
    caller: &Caller<'_>,
    req: &wire::SettleRequest,
    req_hash: Option<&[u8]>,
    instance_id: &str,
) -> Result<Prepared, LedgerError> {
    let (msgid, code) = header(req);
    if let Some(hash) = req_hash {
        if let Some(answer) = journal::replay_of(conn, &node.vault, code, msgid, METHOD, hash)? {
            return Ok(Prepared::Replay(answer));
        }
    }
    let c = compute(conn, node, caller, req)?;
    let info = c.info;
    let pre = req_hash.is_none();
    let request = wire::CenterSettleRequest {
        header: Some(wire::NodeHeader {
            node_id: node.node_id.clone(),
            fixmedins_code: info.fixmedins_code.clone(),
            msgid: msgid.to_owned(),
            opter: req
                .header
                .as_ref()
                .map(|h| h.opter.clone())
                .unwrap_or_default(),
            instance_id: instance_id.to_owned(),
        }),
        setl_id: if pre {
            String::new()
        } else {
            center_setl_id(&node.node_id, &info.fixmedins_code, msgid)
        },
        mdtrt_id: c.visit.mdtrt_id,
        psn_no: c.visit.psn_no,
        insutype: narrow(c.visit.insutype, "insutype")?,
        med_type: narrow(c.visit.med_type, "med_type")?,
        begndate: narrow(c.visit.begndate, "begndate")?,
        summary: Some(wire::VisitSummary {
            medfee_sumamt: info.medfee_sumamt,
            fulamt_ownpay_amt: info.fulamt_ownpay_amt,
            overlmt_amt: info.overlmt_amt,
            preselfpay_amt: info.preselfpay_amt,
            inscp_scp_amt: info.inscp_scp_amt,
            line_count: info.line_count,
            categories: info.categories,
        }),
        acct_used_flag: req.acct_used_flag,
        invono: req.invono.clone(),
        policy_version: info.policy_version,
        catalog_version: info.catalog_version,
        pre_settle: pre,
    };
    Ok(Prepared::Ask(Box::new(Asked {
        request,
        insured_region: c.insured_region,
        acc_year: c.acc_year,
        acc_pool: c.acc_pool,
        line_results: c.line_results,
        lines_digest: c.lines_digest,
        timing: c.timing,
    })))
}

/// Keep the center's settlement of `req` (see the module's comment). A refusal leaves the
/// center's settlement to the caller to cancel there.
pub fn keep(
    conn: &Connection,
    node: &Node,
    who: &Who<'_>,
    req: &wire::SettleRequest,
    req_hash: &[u8],
    now: i64,
    kept: &Kept,
) -> Result<Answered, LedgerError> {
    let journal = SettleJournal::new(conn, node, who, req, req_hash, now);
    if let Some(replayed) = journal.replay()? {
        return Ok(replayed);
    }
    let info = kept.answer.setlinfo.clone().unwrap_or_default();
    let setl_id = info.setl_id.clone();
    let visit = load_visit(conn, &node.vault, who, &req.mdtrt_id)?;
    if visit.state != "registered" {
        return Err(Refusal::failed_precondition(format!(
            "mdtrt_id: {} is {} here; the center's settlement {setl_id} is cancelled there",
            visit.mdtrt_id, visit.state
        ))
        .into());
    }
    if fee_lines(conn, visit.id)?.digest[..] != kept.lines_digest[..] {
        return Err(Refusal::failed_precondition(format!(
            "mdtrt_id: the fee lines changed while the center settled {setl_id}; it is \
             cancelled there: settle again"
        ))
        .into());
    }
    // The cancel left for a lost answer (center_mode.py): before it is due, this retry
    // keeps the settlement and the cancel is void; once due, the forwarder may be sending
    // it, so the settlement is not kept here (and is cancelled there).
    let undo: Option<(i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT created_at, sent_at FROM outbox WHERE kind = 'undo' AND ref = ?1 \
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([&setl_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((created_at, sent_at)) = undo {
        if sent_at.is_some() || created_at <= now {
            return Err(Refusal::failed_precondition(format!(
                "header.msgid: the answer to this settle was lost and its settlement \
                 {setl_id} is cancelled at the center since; settle again with a new msgid"
            ))
            .into());
        }
    }
    conn.prepare_cached("DELETE FROM outbox WHERE kind = 'undo' AND ref = ?1")?
        .execute(params![&setl_id])?;
    let before =
        accumulators(conn, &visit.psn_no, kept.acc_year, &kept.acc_pool)?.unwrap_or_default();
    let after = kept
        .answer
        .accumulators
        .as_ref()
        .map(|a| Accumulators::from_values(accumulator_values(a)))
        .unwrap_or_default();
    let at = (now, local_date(now, node.tz_offset_min));
    let acc = (kept.acc_year, kept.acc_pool.as_str());
    let row = settlement_row(&info, &visit, req, at, None, acc, kept.line_results.clone());
    journal.record(row, info, &before, &after, false, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_setl_ids_are_those_issued_before() {
        // what the Python side issued for the same arguments until this moved here (a
        // retry across the upgrade must meet the same id at the center)
        assert_eq!(
            center_setl_id("01", "H44010100001", "m1"),
            "SH4401010000101H8bc3bfb4c62a"
        );
        assert_eq!(center_setl_id("02", "H1", "中文-msg"), "SH102H2e742f7d6f85");
    }
}
