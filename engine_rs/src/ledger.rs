//! The front-end's hot reads over its SQLite database, beside the pure core (issue 15 moves
//! the settle path here step by step; this is the first step: a visit's fee lines).
//!
//! The ledger never opens the database file itself. It works on the connection the Python
//! store already holds (`python::ledger` borrows its handle), so a front-end process keeps
//! one writer connection, one group commit and one copy of the SQLite library: the crate
//! links the system `libsqlite3` (no `bundled` copy), the same library Python's `sqlite3`
//! module loads, and the binding refuses to attach when the two differ (two copies in one
//! process drop each other's POSIX locks when either closes a descriptor, which can corrupt
//! the file). Reads run inside whatever transaction the connection has open, so they see
//! the batch's own earlier writes.

use rusqlite::Connection;

use crate::gm::sm3;

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

    #[test]
    fn a_visit_without_lines_is_empty() {
        let rows = fee_lines(&db(), 99).unwrap();
        assert!(rows.feedetl_sn.is_empty() && rows.cnt.is_empty());
        assert_eq!(rows.medins_list_codg, (Vec::new(), vec![0]));
    }
}
