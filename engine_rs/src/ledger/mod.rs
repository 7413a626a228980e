//! The front-end's hot reads and writes over its SQLite database, beside the pure core.
//!
//! - this file: a visit's fee lines, a person's accumulators, the writes that record a
//!   settlement, the line-results blob;
//! - `settle`: the Settle and PreSettle operations whole (issue 15), over the rest, and the
//!   batch that runs settles, center mode's keeps and cancels together;
//! - `cancel`: a settlement's cancel;
//! - `committer`: the thread a batch runs and commits on without the GIL, and its wake-up;
//! - `journal`: the msgid's stored answer and the audit chain;
//! - `vault`: personal data sealed and opened (the format of server/security/pii.py);
//! - `refusal`: how an operation refuses a request, or fails.
//!
//! The ledger never opens the database file itself. It works on the connection the Python
//! store already holds (`python::ledger` borrows its handle), so a front-end process keeps
//! one writer connection, one group commit and one copy of the SQLite library: the crate
//! links the system `libsqlite3` (no `bundled` copy), the same library Python's `sqlite3`
//! module loads, and the binding refuses to attach when the two differ (two copies in one
//! process drop each other's POSIX locks when either closes a descriptor, which can corrupt
//! the file). Reads run inside whatever transaction the connection has open, so they see
//! the batch's own earlier writes.

pub mod cancel;
pub mod center_mode;
pub mod committer;
pub mod journal;
pub mod refusal;
pub mod settle;
pub mod vault;

use std::fmt::Write;
use std::sync::OnceLock;

use rusqlite::{params, Connection, OptionalExtension};

use crate::gm::sm3;
use crate::split::Accumulators;

/// A visit's fee lines as columns, in upload order (`seq`), with a digest of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FeeLineRows {
    pub feedetl_sn: Vec<String>,
    /// Hospital item codes: UTF-8 bytes and n+1 offsets (the engine's string column).
    pub medins_list_codg: (Vec<u8>, Vec<i64>),
    /// Insurance codes the HIS sent (empty: the mapping decides).
    pub med_list_codg: (Vec<u8>, Vec<i64>),
    pub cnt: Vec<i64>,
    pub pric: Vec<i64>,
    pub det_item_fee_sumamt: Vec<i64>,
    pub fee_date: Vec<i64>,
    pub hosp_appr_flag: Vec<i64>,
    /// SM3 over every field of every line (length-prefixed text, little-endian integers):
    /// equal digests mean the lines did not change between two reads.
    pub digest: [u8; 32],
}

const FEE_LINES: &str = "SELECT feedetl_sn, medins_list_codg, med_list_codg, cnt, pric, \
     det_item_fee_sumamt, fee_ocur_date, hosp_appr_flag FROM fee_lines WHERE visit_id = ?1 \
     ORDER BY seq";

fn push_text(col: &mut (Vec<u8>, Vec<i64>), digest_input: &mut Vec<u8>, text: &str) {
    col.0.extend_from_slice(text.as_bytes());
    // a column of a visit's lines is far below i64::MAX bytes
    col.1.push(col.0.len() as i64);
    push_digest_text(digest_input, text);
}

fn push_digest_text(digest_input: &mut Vec<u8>, text: &str) {
    digest_input.extend_from_slice(&(text.len() as u64).to_le_bytes());
    digest_input.extend_from_slice(text.as_bytes());
}

/// The fee lines of visit `visit_id` (the `fee_lines` table of the front-end's schema).
pub fn fee_lines(conn: &Connection, visit_id: i64) -> rusqlite::Result<FeeLineRows> {
    let mut stmt = conn.prepare_cached(FEE_LINES)?;
    let mut rows = stmt.query([visit_id])?;
    let mut out = FeeLineRows {
        medins_list_codg: (Vec::new(), vec![0]),
        med_list_codg: (Vec::new(), vec![0]),
        ..FeeLineRows::default()
    };
    let mut digest_input = Vec::new();
    while let Some(row) = rows.next()? {
        let sn: String = row.get(0)?;
        push_digest_text(&mut digest_input, &sn);
        out.feedetl_sn.push(sn);
        push_text(
            &mut out.medins_list_codg,
            &mut digest_input,
            row.get_ref(1)?.as_str()?,
        );
        push_text(
            &mut out.med_list_codg,
            &mut digest_input,
            row.get_ref(2)?.as_str()?,
        );
        let nums = [
            (&mut out.cnt, 3),
            (&mut out.pric, 4),
            (&mut out.det_item_fee_sumamt, 5),
            (&mut out.fee_date, 6),
            (&mut out.hosp_appr_flag, 7),
        ];
        for (col, idx) in nums {
            let v: i64 = row.get(idx)?;
            digest_input.extend_from_slice(&v.to_le_bytes());
            col.push(v);
        }
    }
    out.digest = sm3(&digest_input);
    Ok(out)
}

/// Fee lines an upload adds to a visit, as columns (one entry per line, in upload order).
pub struct NewFeeLines<'a> {
    pub feedetl_sn: &'a [String],
    pub medins_list_codg: &'a [String],
    pub bilg_dr_codg: &'a [String],
    /// cnt, pric, det_item_fee_sumamt, fee_ocur_date, hosp_appr_flag of each line
    pub nums: &'a [[i64; 5]],
}

const INSERT_FEE_LINE: &str = "INSERT INTO fee_lines (visit_id, feedetl_sn, seq, \
     medins_list_codg, med_list_codg, cnt, pric, det_item_fee_sumamt, fee_ocur_date, \
     bilg_dr_codg, hosp_appr_flag, msgid) VALUES (?1, ?2, ?3, ?4, '', ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Writes an upload's lines to visit `visit_id`, numbered from `first_seq` (the visit's
/// last seq + 1), each marked with the upload's `msgid` (Reverse finds them by it). The
/// HIS's insurance code is not stored: the institution's mapping classifies every line.
/// The caller has checked the lines (their ids unique and new, the columns of one length).
pub fn insert_fee_lines(
    conn: &Connection,
    visit_id: i64,
    first_seq: i64,
    msgid: &str,
    lines: &NewFeeLines<'_>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(INSERT_FEE_LINE)?;
    let columns = lines
        .feedetl_sn
        .iter()
        .zip(lines.medins_list_codg)
        .zip(lines.bilg_dr_codg)
        .zip(lines.nums);
    for (seq, (((sn, code), doctor), n)) in (first_seq..).zip(columns) {
        stmt.execute(rusqlite::params![
            visit_id, sn, seq, code, n[0], n[1], n[2], n[3], doctor, n[4], msgid
        ])?;
    }
    Ok(())
}

/// The accumulator values of a person for a year and pool: the current row, else the loaded
/// (opening) row, else none (the caller starts from zeros).
pub fn accumulators(
    conn: &Connection,
    psn_no: &str,
    year: i64,
    pool: &str,
) -> rusqlite::Result<Option<Accumulators>> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "SELECT {} FROM accumulators WHERE psn_no = ?1 AND year = ?2 AND pool = ?3 \
             ORDER BY opening LIMIT 1",
            Accumulators::FIELDS.join(", ")
        )
    });
    conn.prepare_cached(sql)?
        .query_row(params![psn_no, year, pool], |row| {
            let mut values = [0i64; Accumulators::LEN];
            for (k, v) in values.iter_mut().enumerate() {
                *v = row.get(k)?;
            }
            Ok(Accumulators::from_values(values))
        })
        .optional()
}

/// Sets a person's current accumulators for a year and pool (the opening row, loaded from
/// the center, stays as it was).
pub fn write_accumulators(
    conn: &Connection,
    psn_no: &str,
    year: i64,
    pool: &str,
    values: &[i64; Accumulators::LEN],
) -> rusqlite::Result<()> {
    static SQL: OnceLock<String> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "INSERT OR REPLACE INTO accumulators (psn_no, year, pool, opening, {}) \
             VALUES (?, ?, ?, 0, {})",
            Accumulators::FIELDS.join(", "),
            ["?"; Accumulators::LEN].join(", ")
        )
    });
    let mut acc = conn.prepare_cached(sql)?;
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&psn_no, &year, &pool];
    args.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
    acc.execute(args.as_slice())?;
    Ok(())
}

/// A settlement as `record_settlement` writes it: its `settlements` row (state settled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlementRow {
    /// The row id a local settle issued its setl_id from; None: the next one.
    pub id: Option<i64>,
    pub setl_id: String,
    pub fixmedins_code: String,
    pub mdtrt_id: String,
    pub visit_id: i64,
    pub psn_no: String,
    pub insutype: i64,
    pub clr_type: i64,
    pub msgid: String,
    pub invono: String,
    pub setl_time: i64,
    pub setl_date: i64,
    pub mode: i64,
    pub offline: bool,
    pub medfee_sumamt: i64,
    pub fund_pay_sumamt: i64,
    pub acct_pay: i64,
    pub psn_cash_pay: i64,
    pub acc_year: i64,
    pub acc_pool: String,
    /// The sealed `SetlInfo` (it names a person).
    pub info: Vec<u8>,
    pub line_results: Vec<u8>,
}

/// One fund leg of a settlement: fund, the base it was computed on, the amount paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegRow {
    pub fund_pay_type: String,
    pub base: i64,
    pub amount: i64,
}

/// `{"inpatient_count":1,...}`: accumulator values as the settlements table keeps them.
pub fn accumulators_json(values: &[i64; Accumulators::LEN]) -> String {
    let mut out = String::from("{");
    for (k, (f, v)) in Accumulators::FIELDS.iter().zip(values).enumerate() {
        if k > 0 {
            out.push(',');
        }
        // writing to a String cannot fail
        let _ = write!(out, "\"{f}\":{v}");
    }
    out.push('}');
    out
}

/// Records a settlement inside the connection's open transaction: its row (with the
/// accumulators before it and their change), its fund legs, the person's accumulators and
/// account balance after it, the visit settled, and (`forward`) the outbox row that carries
/// it to the center. Overflow of a change is an error, never a wrap.
pub fn record_settlement(
    conn: &Connection,
    row: &SettlementRow,
    legs: &[LegRow],
    before: &Accumulators,
    after: &Accumulators,
    forward: bool,
) -> rusqlite::Result<()> {
    let (b, a) = (before.values(), after.values());
    let mut delta = [0i64; Accumulators::LEN];
    for (k, d) in delta.iter_mut().enumerate() {
        *d = a[k].checked_sub(b[k]).ok_or_else(|| {
            rusqlite::Error::ToSqlConversionFailure("accumulator change overflows".into())
        })?;
    }
    conn.prepare_cached(
        "INSERT INTO settlements (id, setl_id, fixmedins_code, mdtrt_id, visit_id, psn_no, \
         insutype, clr_type, msgid, invono, setl_time, setl_date, state, mode, offline, \
         medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, acc_year, acc_pool, \
         acc_delta, acc_before, info, line_results) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
         ?9, ?10, ?11, ?12, 1, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
    )?
    .execute(params![
        row.id,
        row.setl_id,
        row.fixmedins_code,
        row.mdtrt_id,
        row.visit_id,
        row.psn_no,
        row.insutype,
        row.clr_type,
        row.msgid,
        row.invono,
        row.setl_time,
        row.setl_date,
        row.mode,
        i64::from(row.offline),
        row.medfee_sumamt,
        row.fund_pay_sumamt,
        row.acct_pay,
        row.psn_cash_pay,
        row.acc_year,
        row.acc_pool,
        accumulators_json(&delta),
        accumulators_json(&b),
        row.info,
        row.line_results,
    ])?;
    let mut leg = conn.prepare_cached("INSERT INTO setl_legs VALUES (?1, ?2, ?3, ?4)")?;
    for l in legs {
        leg.execute(params![row.setl_id, l.fund_pay_type, l.base, l.amount])?;
    }
    write_accumulators(conn, &row.psn_no, row.acc_year, &row.acc_pool, &a)?;
    if row.acct_pay != 0 {
        conn.prepare_cached("UPDATE persons SET balc = balc - ?1 WHERE psn_no = ?2")?
            .execute(params![row.acct_pay, row.psn_no])?;
    }
    conn.prepare_cached("UPDATE visits SET state = 'settled' WHERE id = ?1")?
        .execute([row.visit_id])?;
    if forward {
        conn.prepare_cached(
            "INSERT INTO outbox (kind, ref, payload, created_at) \
             VALUES ('settle', ?1, x'', ?2)",
        )?
        .execute(params![row.setl_id, row.setl_time])?;
    }
    Ok(())
}

/// The integer fields of a line's result in the settlement's `line_results` blob, in order.
pub const LINE_RESULT_INTS: usize = 8;

/// A settlement's per-line results as one blob (the layout and its decoder:
/// server/frontend/store/line_results.py): the line count (u32), n rows of eight i64, the
/// byte lengths (u16) of every feedetl_sn and then every med_list_codg, then their bytes.
pub fn encode_line_results(
    sns: &[String],
    codes: &[&str],
    ints: &[[i64; LINE_RESULT_INTS]],
) -> Result<Vec<u8>, String> {
    let n = sns.len();
    if codes.len() != n || ints.len() != n {
        return Err("line result columns differ in length".into());
    }
    let count = u32::try_from(n).map_err(|_| "too many lines".to_owned())?;
    let text_len: usize =
        sns.iter().map(String::len).sum::<usize>() + codes.iter().map(|c| c.len()).sum::<usize>();
    let mut out = Vec::with_capacity(4 + n * (8 * LINE_RESULT_INTS + 4) + text_len);
    out.extend_from_slice(&count.to_le_bytes());
    for row in ints {
        for v in row {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let texts = sns.iter().map(String::as_str).chain(codes.iter().copied());
    for s in texts.clone() {
        let len =
            u16::try_from(s.len()).map_err(|_| format!("{s:.20}...: longer than 65535 bytes"))?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    for s in texts {
        out.extend_from_slice(s.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE fee_lines (visit_id INTEGER NOT NULL, feedetl_sn TEXT NOT NULL,
                seq INTEGER NOT NULL, medins_list_codg TEXT NOT NULL,
                med_list_codg TEXT NOT NULL, cnt INTEGER NOT NULL, pric INTEGER NOT NULL,
                det_item_fee_sumamt INTEGER NOT NULL, fee_ocur_date INTEGER NOT NULL,
                bilg_dr_codg TEXT NOT NULL, hosp_appr_flag INTEGER NOT NULL,
                msgid TEXT NOT NULL, PRIMARY KEY (visit_id, feedetl_sn)) WITHOUT ROWID;
             INSERT INTO fee_lines VALUES (7, 'b', 2, 'H002', '', 20000, 150, 300, 0, '', 0, 'm');
             INSERT INTO fee_lines VALUES (7, 'a', 1, '甲H001', 'X01', 10000, 99, 99, 20260615, '', 1, 'm');
             INSERT INTO fee_lines VALUES (8, 'c', 1, 'H003', '', 10000, 5, 5, 0, '', 0, 'm');",
        )
        .unwrap();
        conn
    }

    #[test]
    fn reads_a_visits_lines_in_upload_order() {
        let rows = fee_lines(&db(), 7).unwrap();
        assert_eq!(rows.feedetl_sn, ["a", "b"]);
        let first = "甲H001".len() as i64;
        assert_eq!(rows.medins_list_codg.1, [0, first, first + 4]);
        assert_eq!(
            &rows.medins_list_codg.0[..first as usize],
            "甲H001".as_bytes()
        );
        assert_eq!(rows.med_list_codg, (b"X01".to_vec(), vec![0, 3, 3]));
        assert_eq!(rows.cnt, [10_000, 20_000]);
        assert_eq!(rows.pric, [99, 150]);
        assert_eq!(rows.det_item_fee_sumamt, [99, 300]);
        assert_eq!(rows.fee_date, [20_260_615, 0]);
        assert_eq!(rows.hosp_appr_flag, [1, 0]);
    }

    #[test]
    fn an_upload_adds_its_lines_after_the_visits_last() {
        let conn = db();
        let sns = ["c".to_string(), "d".to_string()];
        let codes = ["H009".to_string(), "乙H010".to_string()];
        let doctors = ["D1".to_string(), String::new()];
        let lines = NewFeeLines {
            feedetl_sn: &sns,
            medins_list_codg: &codes,
            bilg_dr_codg: &doctors,
            nums: &[[10_000, 7, 7, 20_260_616, 0], [20_000, 5, 10, 0, 2]],
        };
        insert_fee_lines(&conn, 7, 3, "up2", &lines).unwrap();
        let rows = fee_lines(&conn, 7).unwrap();
        assert_eq!(rows.feedetl_sn, ["a", "b", "c", "d"]);
        assert_eq!(rows.det_item_fee_sumamt, [99, 300, 7, 10]);
        assert_eq!(rows.hosp_appr_flag, [1, 0, 0, 2]);
        let stored: Vec<(i64, String, String, String)> = conn
            .prepare("SELECT seq, med_list_codg, bilg_dr_codg, msgid FROM fee_lines WHERE visit_id = 7 AND seq > 2 ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            stored,
            [
                (3, String::new(), "D1".to_string(), "up2".to_string()),
                (4, String::new(), String::new(), "up2".to_string())
            ]
        );
        // a line id the visit has already: the primary key refuses the upload's write
        assert!(insert_fee_lines(&conn, 7, 5, "up3", &lines).is_err());
    }

    #[test]
    fn the_digest_changes_with_any_field_and_only_then() {
        let conn = db();
        let before = fee_lines(&conn, 7).unwrap().digest;
        assert_eq!(fee_lines(&conn, 7).unwrap().digest, before);
        conn.execute("UPDATE fee_lines SET pric = 100 WHERE feedetl_sn = 'a'", [])
            .unwrap();
        assert_ne!(fee_lines(&conn, 7).unwrap().digest, before);
        // text boundaries are part of the digest: moving a character between fields shows
        let conn = db();
        conn.execute(
            "UPDATE fee_lines SET medins_list_codg = 'H00', med_list_codg = '2' \
             WHERE feedetl_sn = 'b'",
            [],
        )
        .unwrap();
        let moved = fee_lines(&conn, 7).unwrap().digest;
        conn.execute(
            "UPDATE fee_lines SET medins_list_codg = 'H0', med_list_codg = '02' \
             WHERE feedetl_sn = 'b'",
            [],
        )
        .unwrap();
        assert_ne!(fee_lines(&conn, 7).unwrap().digest, moved);
    }

    fn books() -> Connection {
        let conn = db();
        conn.execute_batch(&format!(
            "CREATE TABLE accumulators (psn_no TEXT, year INTEGER, pool TEXT, opening INTEGER, \
                {}, PRIMARY KEY (psn_no, year, pool, opening));
             CREATE TABLE settlements (id INTEGER PRIMARY KEY, setl_id TEXT UNIQUE,
                fixmedins_code TEXT, mdtrt_id TEXT, visit_id INTEGER, psn_no TEXT,
                insutype INTEGER, clr_type INTEGER, msgid TEXT, invono TEXT, setl_time INTEGER,
                setl_date INTEGER, state INTEGER, mode INTEGER, offline INTEGER,
                medfee_sumamt INTEGER, fund_pay_sumamt INTEGER, acct_pay INTEGER,
                psn_cash_pay INTEGER, acc_year INTEGER, acc_pool TEXT, acc_delta TEXT,
                acc_before TEXT, info BLOB, line_results BLOB);
             CREATE TABLE setl_legs (setl_id TEXT, fund_pay_type TEXT, base INTEGER,
                amount INTEGER);
             CREATE TABLE persons (psn_no TEXT, balc INTEGER);
             CREATE TABLE visits (id INTEGER PRIMARY KEY, state TEXT);
             CREATE TABLE outbox (id INTEGER PRIMARY KEY, kind TEXT, ref TEXT, payload BLOB,
                created_at INTEGER, sent_at INTEGER);
             INSERT INTO persons VALUES ('P1', 5000);
             INSERT INTO visits VALUES (7, 'registered');",
            Accumulators::FIELDS
                .iter()
                .map(|f| format!("{f} INTEGER"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .unwrap();
        conn
    }

    #[test]
    fn records_a_settlement_and_reads_the_accumulators_back() {
        let conn = books();
        assert_eq!(accumulators(&conn, "P1", 2026, "emp").unwrap(), None);
        let before = Accumulators {
            dedc_paid: 100,
            ..Accumulators::default()
        };
        let after = Accumulators {
            inpatient_count: 1,
            dedc_paid: 1_300,
            hifp_paid: 8_000,
            ..Accumulators::default()
        };
        let row = SettlementRow {
            setl_id: "S1".into(),
            visit_id: 7,
            psn_no: "P1".into(),
            acct_pay: 1_200,
            setl_time: 42,
            acc_year: 2026,
            acc_pool: "emp".into(),
            info: vec![1, 2],
            ..SettlementRow::default()
        };
        let legs = [LegRow {
            fund_pay_type: "310100".into(),
            base: 9_000,
            amount: 8_000,
        }];
        record_settlement(&conn, &row, &legs, &before, &after, true).unwrap();
        assert_eq!(accumulators(&conn, "P1", 2026, "emp").unwrap(), Some(after));
        let (delta, was, id): (String, String, i64) = conn
            .query_row(
                "SELECT acc_delta, acc_before, id FROM settlements WHERE setl_id = 'S1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(id, 1);
        assert!(delta.starts_with("{\"inpatient_count\":1,\"dedc_paid\":1200,\"hifp_paid\":8000,"));
        assert!(was.starts_with("{\"inpatient_count\":0,\"dedc_paid\":100,"));
        let balc: i64 = conn
            .query_row("SELECT balc FROM persons", [], |r| r.get(0))
            .unwrap();
        assert_eq!(balc, 3_800);
        let state: String = conn
            .query_row("SELECT state FROM visits WHERE id = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state, "settled");
        let outbox: (String, String, i64) = conn
            .query_row("SELECT kind, ref, created_at FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(outbox, ("settle".into(), "S1".into(), 42));
        let legs: i64 = conn
            .query_row(
                "SELECT amount FROM setl_legs WHERE setl_id = 'S1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(legs, 8_000);
    }

    #[test]
    fn an_overflowing_change_writes_nothing_of_its_own() {
        let conn = books();
        let before = Accumulators {
            dedc_paid: i64::MIN,
            ..Accumulators::default()
        };
        let row = SettlementRow {
            setl_id: "S2".into(),
            ..SettlementRow::default()
        };
        let err = record_settlement(&conn, &row, &[], &before, &Accumulators::default(), false);
        assert!(err.is_err());
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM settlements", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn line_results_blob_layout() {
        let blob = encode_line_results(
            &["1".into(), "22".into()],
            &["X", ""],
            &[[1, 2, 3, 4, 5, 6, 7, 8], [-1, 0, 0, 0, 0, 0, 0, i64::MAX]],
        )
        .unwrap();
        assert_eq!(&blob[..4], &2u32.to_le_bytes());
        assert_eq!(&blob[4..12], &1i64.to_le_bytes());
        let lens = 4 + 2 * 8 * 8;
        assert_eq!(&blob[lens..lens + 8], &[1, 0, 2, 0, 1, 0, 0, 0]);
        assert_eq!(&blob[lens + 8..], b"122X");
        assert!(encode_line_results(&["1".into()], &[], &[[0; 8]]).is_err());
        assert!(encode_line_results(&["x".repeat(70_000)], &[""], &[[0; 8]]).is_err());
    }

    #[test]
    fn a_visit_without_lines_is_empty() {
        let rows = fee_lines(&db(), 99).unwrap();
        assert!(rows.feedetl_sn.is_empty() && rows.cnt.is_empty());
        assert_eq!(rows.medins_list_codg, (Vec::new(), vec![0]));
    }
}
