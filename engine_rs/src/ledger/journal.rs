//! What every state-changing call leaves beside its work, as the ledger writes it: the
//! msgid's stored answer (idempotency) and the audit record with its chain link. The same
//! tables and formats as `server/common.py` (`idempotent`, `replay_of`) and
//! `server/security/audit.py` (`append`, `link`), which write them for the calls still
//! served in Python; a chain mixes records of both and verifies as one.

use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::refusal::{LedgerError, Refusal};
use super::settle::{Node, Who};
use super::vault::Vault;

/// The method name a Reverse leaves on a msgid that never arrived.
pub const REVERSED: &str = "REVERSED";

/// The stored answer of this msgid's earlier call, opened; None when there was none.
/// Refuses the msgid when it was used for another request or burnt by a reversal.
pub fn replay_of(
    conn: &Connection,
    vault: &Vault,
    fixmedins_code: &str,
    msgid: &str,
    method: &str,
    req_hash: &[u8],
) -> Result<Option<Vec<u8>>, LedgerError> {
    let row: Option<(String, Vec<u8>, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT method, req_hash, response FROM idempotency \
             WHERE fixmedins_code = ?1 AND msgid = ?2",
        )?
        .query_row(params![fixmedins_code, msgid], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((stored_method, stored_hash, sealed)) = row else {
        return Ok(None);
    };
    if stored_method == REVERSED {
        return Err(Refusal::failed_precondition(format!(
            "header.msgid: {msgid} was reversed before it arrived; send a new msgid"
        ))
        .into());
    }
    if stored_method != method || stored_hash != req_hash {
        return Err(Refusal::already_exists(format!(
            "header.msgid: {msgid} was already used for a different request ({stored_method}); \
             a retry must resend the same request, a new request needs a new msgid"
        ))
        .into());
    }
    let answer = vault
        .open("response", &answer_owner(fixmedins_code, msgid), &sealed)
        .map_err(|e| LedgerError::Internal(e.0))?;
    Ok(Some(answer))
}

fn answer_owner(fixmedins_code: &str, msgid: &str) -> String {
    format!("{fixmedins_code}|{msgid}")
}

/// Stores `answer` (sealed: it names a person) as this msgid's, with the object it made.
#[allow(clippy::too_many_arguments)]
pub fn store_answer(
    conn: &Connection,
    vault: &Vault,
    fixmedins_code: &str,
    msgid: &str,
    method: &str,
    req_hash: &[u8],
    answer: &[u8],
    reference: &str,
    now: i64,
) -> Result<(), LedgerError> {
    let sealed = vault
        .seal("response", &answer_owner(fixmedins_code, msgid), answer)
        .map_err(|e| LedgerError::Internal(e.0))?;
    conn.prepare_cached("INSERT INTO idempotency VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
        .execute(params![
            fixmedins_code,
            msgid,
            method,
            req_hash,
            sealed,
            reference,
            now
        ])?;
    Ok(())
}

/// One audit record (`audit.Record`): who did what to which objects, with what outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord<'a> {
    pub at: i64,
    pub fixmedins_code: &'a str,
    pub opter: &'a str,
    pub roles: &'a str,
    pub rpc: &'a str,
    pub objects: &'a str,
    pub outcome: &'a str,
}

/// The chain hash of record `seq` of `chain` after `prev` (`audit.link`).
pub fn link(key: &[u8], chain: &str, seq: i64, prev: &[u8], rec: &AuditRecord<'_>) -> [u8; 32] {
    let at = rec.at.to_string();
    let seq = seq.to_string();
    let fields = [
        chain,
        &seq,
        &at,
        rec.fixmedins_code,
        rec.opter,
        rec.roles,
        rec.rpc,
        rec.objects,
        rec.outcome,
    ];
    // HMAC takes a key of any length
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(prev);
    for (k, f) in fields.iter().enumerate() {
        if k > 0 {
            mac.update(b"\x1f");
        }
        mac.update(f.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

const GENESIS: [u8; 32] = [0; 32];

/// Adds `rec` to the end of `chain` in the connection's transaction; returns its seq.
pub fn append_audit(
    conn: &Connection,
    key: &[u8],
    chain: &str,
    rec: &AuditRecord<'_>,
) -> Result<i64, LedgerError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit WHERE chain = ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row([chain], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev) = match last {
        Some(row) => row,
        None => conn
            .prepare_cached("SELECT seq, hash FROM audit_anchor WHERE chain = ?1")?
            .query_row([chain], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, GENESIS.to_vec())),
    };
    let seq = seq + 1;
    let hash = link(key, chain, seq, &prev, rec);
    conn.prepare_cached("INSERT INTO audit VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")?
        .execute(params![
            chain,
            seq,
            rec.at,
            rec.fixmedins_code,
            rec.opter,
            rec.roles,
            rec.rpc,
            rec.objects,
            rec.outcome,
            &hash[..]
        ])?;
    Ok(seq)
}

/// What a state-changing call of a batch leaves beside its work: the msgid's stored answer
/// replayed, audited as a replay; or its answer stored with the msgid and audited with the
/// object it made (`server.common.idempotent` with its `Trail`, for the calls in Python).
pub struct Journal<'a> {
    conn: &'a Connection,
    node: &'a Node,
    who: &'a Who<'a>,
    method: &'a str,
    /// The request header's (msgid, fixmedins_code).
    header: (&'a str, &'a str),
    req_hash: &'a [u8],
    now: i64,
    /// The objects the request names (`objects`).
    objects: String,
}

impl<'a> Journal<'a> {
    #[allow(clippy::too_many_arguments)] // one call's whole identity, named
    pub fn new(
        conn: &'a Connection,
        node: &'a Node,
        who: &'a Who<'a>,
        method: &'a str,
        header: (&'a str, &'a str),
        req_hash: &'a [u8],
        now: i64,
        objects: String,
    ) -> Self {
        Self {
            conn,
            node,
            who,
            method,
            header,
            req_hash,
            now,
            objects,
        }
    }

    pub fn msgid(&self) -> &'a str {
        self.header.0
    }

    fn audit(&self, outcome: &str, objects: &str) -> Result<i64, LedgerError> {
        append_audit(
            self.conn,
            &self.node.audit_key,
            "",
            &AuditRecord {
                at: self.now,
                fixmedins_code: self.header.1,
                opter: self.who.opter,
                roles: self.who.roles,
                rpc: self.who.rpc,
                objects,
                outcome,
            },
        )
    }

    /// The msgid's stored answer, audited as a replay; None when it has none.
    pub fn replay(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        let (msgid, code) = self.header;
        let vault = &self.node.vault;
        let stored = replay_of(self.conn, vault, code, msgid, self.method, self.req_hash)?;
        if stored.is_some() {
            self.audit("REPLAY", &self.objects)?;
        }
        Ok(stored)
    }

    /// `answer` stored as the msgid's, with `reference` (the object the call made), and the
    /// call audited as done.
    pub fn answered(&self, answer: &[u8], reference: &str) -> Result<(), LedgerError> {
        let (msgid, code) = self.header;
        let (vault, method, hash) = (&self.node.vault, self.method, self.req_hash);
        store_answer(
            self.conn, vault, code, msgid, method, hash, answer, reference, self.now,
        )?;
        let with_ref = if self.objects.is_empty() {
            format!("ref={reference}")
        } else {
            format!("{};ref={reference}", self.objects)
        };
        self.audit("OK", &with_ref)?;
        Ok(())
    }
}

/// The longest value a record keeps as it is (`audit.VALUE_MAX`); a longer one is kept as
/// its digest.
const VALUE_MAX: usize = 64;

/// `audit.kept`: the value, or `sha256:` and 16 hex digits of its digest when too long.
pub fn kept(value: &str) -> String {
    if value.chars().count() <= VALUE_MAX {
        return value.to_owned();
    }
    let d = Sha256::digest(value.as_bytes());
    let mut out = String::from("sha256:");
    for b in &d[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `audit.objects_of` for the (name, value) pairs a request names, in `OBJECT_FIELDS`
/// order; empty values are left out.
pub fn objects(named: &[(&str, &str)]) -> String {
    named
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("{n}={}", kept(v)))
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_digests_only_long_values() {
        assert_eq!(kept("M01"), "M01");
        let long = "x".repeat(65);
        let k = kept(&long);
        assert!(k.starts_with("sha256:") && k.len() == 7 + 16);
        assert_eq!(
            objects(&[("psn_no", "P1"), ("mdtrt_id", ""), ("setl_id", "S")]),
            "psn_no=P1;setl_id=S"
        );
    }

    #[test]
    fn the_chain_links_each_record_to_the_one_before() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE audit (chain TEXT, seq INTEGER, at INTEGER, fixmedins_code TEXT, \
             opter TEXT, roles TEXT, rpc TEXT, objects TEXT, outcome TEXT, hash BLOB, \
             PRIMARY KEY (chain, seq)); \
             CREATE TABLE audit_anchor (chain TEXT PRIMARY KEY, seq INTEGER, hash BLOB, \
             pruned_before INTEGER, mac BLOB);",
        )
        .unwrap();
        let rec = AuditRecord {
            at: 5,
            fixmedins_code: "H1",
            opter: "op",
            roles: "clerk",
            rpc: "/x/Settle",
            objects: "psn_no=P1",
            outcome: "OK",
        };
        assert_eq!(append_audit(&conn, b"k", "", &rec).unwrap(), 1);
        assert_eq!(append_audit(&conn, b"k", "", &rec).unwrap(), 2);
        let hashes: Vec<Vec<u8>> = conn
            .prepare("SELECT hash FROM audit ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(hashes[0], link(b"k", "", 1, &GENESIS, &rec).to_vec());
        assert_eq!(hashes[1], link(b"k", "", 2, &hashes[0], &rec).to_vec());
    }
}
