//! A settlement's cancel (2208/2305) at the front-end, on the store's connection:
//!
//! - `cancellable`: every check this front-end can make (the settlement this institution's,
//!   the visit and person the request names its own, still settled, and the person's latest
//!   in its accumulator year and pool); center mode makes them before it asks the center to
//!   cancel, so a refused cancel changes nothing on either side;
//! - `cancel`: the checks, then the undo: the accumulators and the account balance given
//!   back, the visit open again, the settlement marked cancelled, and the outbox row that
//!   carries the cancel to the center; Reverse and center mode's keep of a cancel call it
//!   inside their own (Python) journal;
//! - `cancel_call`: a local-mode CancelSettlement whole, in a batch beside the settles: the
//!   msgid's stored answer replayed, or the cancel with its answer stored and audited.
//!
//! The checks, their order and their texts are those the Python operation had
//! (server/frontend/settle.py before this moved here); the center refuses out-of-order
//! cancels with the same text (`server.common.out_of_order`).

use std::collections::HashMap;

use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};

use super::journal::{self, Journal};
use super::refusal::{LedgerError, Refusal};
use super::settle::{local_date, timestamp, Answered, Node, Who};
use super::{accumulators, write_accumulators};
use crate::split::Accumulators;
use crate::wire;

/// The method a cancel's answer is stored under.
pub const METHOD: &str = "CancelSettlement";

/// `SettlementState.CANCELLED` (common.proto).
pub const CANCELLED: i32 = 2;

/// A settled settlement as the cancel reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellable {
    pub id: i64,
    pub setl_id: String,
    pub fixmedins_code: String,
    pub visit_id: i64,
    pub psn_no: String,
    /// SettlementMode: 1 local, 2 center.
    pub mode: i64,
    acct_pay: i64,
    acc_year: i64,
    acc_pool: String,
    /// JSON {field: change}: what the settle added to the accumulators.
    acc_delta: String,
    /// The sealed `SetlInfo`.
    info: Vec<u8>,
}

/// The settlement `setl_id` of the caller's institution, when the cancel may undo it now.
pub fn cancellable(
    conn: &Connection,
    who: &Who<'_>,
    setl_id: &str,
    mdtrt_id: &str,
    psn_no: &str,
) -> Result<Cancellable, LedgerError> {
    if setl_id.is_empty() {
        return Err(Refusal::field("setl_id", "is required").into());
    }
    let row = conn
        .prepare_cached(
            "SELECT id, setl_id, fixmedins_code, visit_id, psn_no, mode, acct_pay, acc_year, \
             acc_pool, acc_delta, info, mdtrt_id, state, cancel_id \
             FROM settlements WHERE setl_id = ?1",
        )?
        .query_row([setl_id], |r| {
            Ok((
                Cancellable {
                    id: r.get(0)?,
                    setl_id: r.get(1)?,
                    fixmedins_code: r.get(2)?,
                    visit_id: r.get(3)?,
                    psn_no: r.get(4)?,
                    mode: r.get(5)?,
                    acct_pay: r.get(6)?,
                    acc_year: r.get(7)?,
                    acc_pool: r.get(8)?,
                    acc_delta: r.get(9)?,
                    info: r.get(10)?,
                },
                r.get::<_, String>(11)?,
                r.get::<_, i64>(12)?,
                r.get::<_, Option<String>>(13)?,
            ))
        })
        .optional()?;
    let Some((row, visit, state, cancel_id)) =
        row.filter(|(c, ..)| c.fixmedins_code == who.fixmedins_code)
    else {
        return Err(Refusal::not_found(format!(
            "setl_id: no settlement {setl_id} at this institution"
        ))
        .into());
    };
    if !mdtrt_id.is_empty() && mdtrt_id != visit {
        return Err(Refusal::field(
            "mdtrt_id",
            format!("settlement {setl_id} belongs to visit {visit}"),
        )
        .into());
    }
    if !psn_no.is_empty() && psn_no != row.psn_no {
        return Err(Refusal::field("psn_no", "does not match the settlement's person").into());
    }
    if state != i64::from(crate::settlement::SETTLED) {
        let by = cancel_id.unwrap_or_default();
        return Err(Refusal::failed_precondition(format!(
            "setl_id: {setl_id} is already cancelled ({by})"
        ))
        .into());
    }
    refuse_out_of_order(conn, who.fixmedins_code, &row)?;
    Ok(row)
}

/// A settlement is cancelled only while it is the person's latest in its accumulator year
/// and pool. A later one was priced against the deductible and caps this one moved; undoing
/// this one alone would leave the later one's split wrong (a deductible paid twice or not
/// at all). So the later ones are cancelled first, newest first, then settled again: the
/// refusal names them (those of another institution only by number: their ids are not this
/// caller's to see).
fn refuse_out_of_order(
    conn: &Connection,
    code: &str,
    row: &Cancellable,
) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT setl_id, fixmedins_code FROM settlements WHERE psn_no = ?1 AND acc_year = ?2 \
         AND acc_pool = ?3 AND state = 1 AND id > ?4 ORDER BY id DESC",
    )?;
    let later = stmt
        .query_map(
            params![row.psn_no, row.acc_year, row.acc_pool, row.id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    if later.is_empty() {
        return Ok(());
    }
    Err(out_of_order(&row.setl_id, row.acc_year, &row.acc_pool, &later, code).into())
}

/// `server.common.out_of_order`: the refusal of a cancel while `later` settlements
/// (setl_id, institution, newest first) of the person relied on its accumulators.
pub fn out_of_order(
    setl_id: &str,
    year: i64,
    pool: &str,
    later: &[(String, String)],
    code: &str,
) -> Refusal {
    let mut named: Vec<String> = later
        .iter()
        .filter(|(_, c)| c == code)
        .map(|(s, _)| s.clone())
        .collect();
    let others = later.len() - named.len();
    if others > 0 {
        named.push(format!("{others} at other institutions"));
    }
    Refusal::failed_precondition(format!(
        "setl_id: {setl_id} is not the person's latest settlement of {year} ({pool}); later \
         settlements relied on its accumulators: cancel them first, newest first ({}), then \
         this one, and settle them again",
        named.join(", ")
    ))
}

/// The cancelled settlement's `SetlInfo` (its state, cancel id, msgid and time set) and its
/// cancel id, after the checks (`cancellable`) and the undo, inside the caller's
/// transaction. Every cancel goes to the center through the outbox, retried until it
/// confirms: a local-mode settlement's is news there; a center-mode one's was usually made
/// there first (center mode's cancel), and then the center answers DUPLICATE; but a Reverse
/// of a center-mode Settle is cancelled here first, and this row is what cancels it there.
#[allow(clippy::too_many_arguments)] // the request's fields, named
pub fn cancel(
    conn: &Connection,
    node: &Node,
    who: &Who<'_>,
    setl_id: &str,
    mdtrt_id: &str,
    psn_no: &str,
    msgid: &str,
    now: i64,
) -> Result<(wire::SetlInfo, String), LedgerError> {
    let row = cancellable(conn, who, setl_id, mdtrt_id, psn_no)?;
    let (year, pool) = (row.acc_year, row.acc_pool.as_str());
    let delta = acc_delta(&row)?;
    let current = accumulators(conn, &row.psn_no, year, pool)?.unwrap_or_default();
    let mut restored = current.values();
    for (v, d) in restored.iter_mut().zip(delta) {
        *v = v.checked_sub(d).ok_or_else(|| {
            LedgerError::Internal(format!("{}: an accumulator overflows", row.setl_id))
        })?;
    }
    write_accumulators(conn, &row.psn_no, year, pool, &restored)?;
    if row.acct_pay != 0 {
        conn.prepare_cached("UPDATE persons SET balc = balc + ?1 WHERE psn_no = ?2")?
            .execute(params![row.acct_pay, row.psn_no])?;
    }
    conn.prepare_cached("UPDATE visits SET state = 'registered' WHERE id = ?1")?
        .execute([row.visit_id])?;
    let cancel_id = format!("C{}{}{:012}", row.fixmedins_code, node.node_id, row.id);
    conn.prepare_cached(
        "UPDATE settlements SET state = 2, cancel_id = ?1, cancel_msgid = ?2, cancel_time = ?3, \
         cancel_date = ?4 WHERE id = ?5",
    )?
    .execute(params![
        cancel_id,
        msgid,
        now,
        local_date(now, node.tz_offset_min),
        row.id
    ])?;
    conn.prepare_cached(
        "INSERT INTO outbox (kind, ref, payload, created_at) VALUES ('cancel', ?1, ?2, ?3)",
    )?
    .execute(params![row.setl_id, cancel_id.as_bytes(), now])?;
    let opened = node
        .vault
        .open("setlinfo", &row.setl_id, &row.info)
        .map_err(|e| LedgerError::Internal(e.0))?;
    let mut info = wire::SetlInfo::decode(opened.as_slice())
        .map_err(|e| LedgerError::Internal(format!("{}: stored info: {e}", row.setl_id)))?;
    info.state = CANCELLED;
    info.cancel_id = cancel_id.clone();
    info.cancel_msgid = msgid.to_owned();
    info.cancel_time = Some(timestamp(now));
    Ok((info, cancel_id))
}

/// What the settle added to the accumulators, in `Accumulators::FIELDS` order.
fn acc_delta(row: &Cancellable) -> Result<[i64; Accumulators::LEN], LedgerError> {
    let bad = |why: String| LedgerError::Internal(format!("{}: acc_delta {why}", row.setl_id));
    let map: HashMap<String, i64> =
        serde_json::from_str(&row.acc_delta).map_err(|e| bad(e.to_string()))?;
    let mut out = [0i64; Accumulators::LEN];
    for (v, f) in out.iter_mut().zip(Accumulators::FIELDS) {
        *v = *map.get(f).ok_or_else(|| bad(format!("lacks {f}")))?;
    }
    Ok(out)
}

/// A local-mode CancelSettlement whole (see the module's comment); the answer is a
/// `SettleResponse` with the cancelled settlement.
pub fn cancel_call(
    conn: &Connection,
    node: &Node,
    who: &Who<'_>,
    req: &wire::CancelSettlementRequest,
    req_hash: &[u8],
    now: i64,
) -> Result<Answered, LedgerError> {
    let header = req
        .header
        .as_ref()
        .map_or(("", ""), |h| (h.msgid.as_str(), h.fixmedins_code.as_str()));
    let objects = journal::objects(&[
        ("psn_no", &req.psn_no),
        ("mdtrt_id", &req.mdtrt_id),
        ("setl_id", &req.setl_id),
    ]);
    let journal = Journal::new(conn, node, who, METHOD, header, req_hash, now, objects);
    if let Some(answer) = journal.replay()? {
        return Ok(Answered::replayed(answer));
    }
    let (info, _) = cancel(
        conn,
        node,
        who,
        &req.setl_id,
        &req.mdtrt_id,
        &req.psn_no,
        header.0,
        now,
    )?;
    let answer = wire::SettleResponse {
        setlinfo: Some(info),
    }
    .encode_to_vec();
    journal.answered(&answer, &req.setl_id)?;
    Ok(Answered {
        answer,
        replayed: false,
        setl_id: req.setl_id.clone(),
        timing: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_names_own_settlements_and_counts_the_others() {
        let later = [
            ("S3".to_owned(), "H1".to_owned()),
            ("S2".to_owned(), "H2".to_owned()),
            ("S1b".to_owned(), "H1".to_owned()),
        ];
        let r = out_of_order("S1", 2026, "emp", &later, "H1");
        assert_eq!(r.code, super::super::refusal::Code::FailedPrecondition);
        assert_eq!(
            r.message,
            "setl_id: S1 is not the person's latest settlement of 2026 (emp); later \
             settlements relied on its accumulators: cancel them first, newest first \
             (S3, S1b, 1 at other institutions), then this one, and settle them again"
        );
    }
}
