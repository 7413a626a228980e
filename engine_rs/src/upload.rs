//! A fee upload's lines as they arrive (`UploadFees` in one message, `StreamFees` in
//! several): the checks of each line the front-end makes before the preprocessing, with
//! the Python checks' texts and order, and the columns the preprocessing and the ledger
//! take (server/frontend/services/settlement.py and visits.py; the Python checks this
//! replaced are the tests' oracle, tests/frontend/upload_twin.py).
//!
//! Two kinds of refusal, raised at two points as before: a line whose amount or unit price
//! is beyond the per-line maximum refuses the message as it arrives (`add`); the checks of
//! serials, codes, dates and flags over the whole upload refuse it in the store's
//! transaction, after the visit's own checks (`line_violations`).

use std::collections::HashSet;

use crate::center::checks::valid_date;
use crate::preprocess::CNT_SCALE;
use crate::wire;

/// The longest feedetl_sn, in characters.
const MAX_SN: usize = 64;

/// A field named, and why it is refused.
pub type Violation = (String, String);

/// The lines received so far, as columns, and the whole upload's line checks.
#[derive(Debug, Default)]
pub struct Upload {
    max_line_fen: i64,
    /// Beyond this many violations a request is refused without looking further.
    max_violations: usize,
    pub feedetl_sn: Vec<String>,
    pub medins_list_codg: Vec<String>,
    pub med_list_codg: Vec<String>,
    pub bilg_dr_codg: Vec<String>,
    /// cnt, pric, det_item_fee_sumamt, fee_ocur_date, hosp_appr_flag
    pub nums: Vec<[i64; 5]>,
    seen: HashSet<String>,
    /// The serials', codes', dates' and flags' violations (at most a line past
    /// `max_violations`).
    pub line_violations: Vec<Violation>,
}

impl Upload {
    pub fn new(max_line_fen: i64, max_violations: usize) -> Self {
        Self {
            max_line_fen,
            max_violations: max_violations.max(1),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.nums.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nums.is_empty()
    }

    /// A message's lines added; the violations of their amounts (none: accepted so far).
    pub fn add(&mut self, lines: Vec<wire::FeeLine>) -> Vec<Violation> {
        let amounts = amount_violations(&lines, self.len(), self.max_line_fen, self.max_violations);
        for ln in lines {
            let i = self.len();
            self.check_line(i, &ln);
            self.nums.push([
                ln.cnt,
                ln.pric,
                ln.det_item_fee_sumamt,
                i64::from(ln.fee_ocur_date),
                i64::from(ln.hosp_appr_flag),
            ]);
            self.feedetl_sn.push(ln.feedetl_sn);
            self.medins_list_codg.push(ln.medins_list_codg);
            self.med_list_codg.push(ln.med_list_codg);
            self.bilg_dr_codg.push(ln.bilg_dr_codg);
        }
        amounts
    }

    fn check_line(&mut self, i: usize, ln: &wire::FeeLine) {
        if self.line_violations.len() >= self.max_violations {
            return;
        }
        let v = &mut self.line_violations;
        let sn = &ln.feedetl_sn;
        let fresh = !self.seen.contains(sn);
        if sn.is_empty() || sn.chars().count() > MAX_SN {
            v.push((
                format!("lines[{i}].feedetl_sn"),
                "is required (at most 64 characters)".into(),
            ));
        } else if !fresh {
            v.push((
                format!("lines[{i}].feedetl_sn"),
                format!("{sn} appears twice in this upload"),
            ));
        }
        if fresh {
            self.seen.insert(sn.clone());
        }
        if ln.medins_list_codg.is_empty() {
            v.push((format!("lines[{i}].medins_list_codg"), "is required".into()));
        }
        let date = ln.fee_ocur_date;
        if date != 0 && !valid_date(i64::from(date)) {
            v.push((
                format!("lines[{i}].fee_ocur_date"),
                format!("{date} is not a yyyymmdd date"),
            ));
        }
        if !(0..=2).contains(&ln.hosp_appr_flag) {
            v.push((
                format!("lines[{i}].hosp_appr_flag"),
                "must be 0, 1 or 2".into(),
            ));
        }
    }
}

/// Lines whose amount or unit price is beyond the per-line maximum, or whose cnt x pric
/// would be (`first`: the index of lines[0] in the call). Signs and the agreement of
/// cnt x pric with the amount are the preprocessing's to check.
fn amount_violations(
    lines: &[wire::FeeLine],
    first: usize,
    max_line_fen: i64,
    max_violations: usize,
) -> Vec<Violation> {
    let mut v = Vec::new();
    for (k, ln) in lines.iter().enumerate() {
        let i = first + k;
        if ln.det_item_fee_sumamt > max_line_fen {
            v.push((
                format!("lines[{i}].det_item_fee_sumamt"),
                format!(
                    "{} fen is more than the {max_line_fen} one line may be",
                    ln.det_item_fee_sumamt
                ),
            ));
        }
        let product = i128::from(ln.cnt) * i128::from(ln.pric);
        if ln.pric > max_line_fen {
            v.push((
                format!("lines[{i}].pric"),
                format!("{} fen is more than {max_line_fen} for one unit", ln.pric),
            ));
        } else if ln.cnt > 0
            && ln.pric > 0
            && product > i128::from(max_line_fen) * i128::from(CNT_SCALE)
        {
            v.push((
                format!("lines[{i}].cnt"),
                format!(
                    "cnt x pric is {} fen, more than the {max_line_fen} one line may be",
                    product / i128::from(CNT_SCALE)
                ),
            ));
        }
        if v.len() >= max_violations {
            break;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_VIOLATIONS: usize = 20;

    fn line(sn: &str, code: &str, cnt: i64, pric: i64, amount: i64) -> wire::FeeLine {
        wire::FeeLine {
            feedetl_sn: sn.into(),
            medins_list_codg: code.into(),
            cnt,
            pric,
            det_item_fee_sumamt: amount,
            ..Default::default()
        }
    }

    #[test]
    fn lines_across_messages_are_numbered_and_checked_as_one_upload() {
        let mut up = Upload::new(1_000_000, MAX_VIOLATIONS);
        assert!(up
            .add(vec![
                line("A", "X1", 10_000, 100, 100),
                line("B", "", 10_000, 5, 5)
            ])
            .is_empty());
        let mut bad_date = line("A", "X2", 20_000, 2_000_000, 1);
        bad_date.fee_ocur_date = 20_260_230;
        bad_date.hosp_appr_flag = 3;
        let amounts = up.add(vec![bad_date, line("C", "X3", 3_000_000_000, 400, 1)]);
        assert_eq!(
            amounts,
            [
                (
                    "lines[2].pric".to_owned(),
                    "2000000 fen is more than 1000000 for one unit".to_owned()
                ),
                (
                    "lines[3].cnt".to_owned(),
                    "cnt x pric is 120000000 fen, more than the 1000000 one line may be".to_owned()
                ),
            ]
        );
        let fields: Vec<&str> = up.line_violations.iter().map(|v| v.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "lines[1].medins_list_codg",
                "lines[2].feedetl_sn",
                "lines[2].fee_ocur_date",
                "lines[2].hosp_appr_flag"
            ]
        );
        assert_eq!(up.line_violations[1].1, "A appears twice in this upload");
        assert_eq!(up.len(), 4);
        assert_eq!(up.nums[2], [20_000, 2_000_000, 1, 20_260_230, 3]);
        assert_eq!(up.feedetl_sn, ["A", "B", "A", "C"]);
    }

    #[test]
    fn a_serial_is_counted_in_characters_and_the_checks_stop_past_twenty() {
        let mut up = Upload::new(10, MAX_VIOLATIONS);
        let long: String = "序".repeat(64);
        assert!(up.add(vec![line(&long, "X", 0, 0, 0)]).is_empty());
        assert!(
            up.line_violations.is_empty(),
            "64 characters, 192 bytes: allowed"
        );
        up.add((0..30).map(|_| line("", "", 0, 0, 0)).collect());
        // two violations a line: the line that reaches 20 is the last looked at
        assert_eq!(up.line_violations.len(), 20);
        assert_eq!(up.line_violations[19].0, "lines[10].medins_list_codg");
        let many: Vec<wire::FeeLine> = (0..30).map(|_| line("S", "X", 0, 0, 11)).collect();
        assert_eq!(up.add(many).len(), MAX_VIOLATIONS);
    }
}
