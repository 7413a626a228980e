//! The batch's view of the center's ledger (what `forward` decides over), what the batch
//! writes, and the writes as COPY text: the in-memory side of server/center/store/batch.py.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::copy::Row;
use crate::settlement::SETTLED;
use crate::split::Accumulators;

pub(crate) const LEN: usize = Accumulators::LEN;
pub type Values = [i64; LEN];
/// An accumulator row's key: psn_no, year, pool.
pub type Key = (String, i64, String);

/// `SettlementState.CANCELLED` (common.proto; SETTLED is `settlement::SETTLED`).
pub const CANCELLED: i64 = 2;

/// The columns of a `settlements` row as `settlements_copy` writes them.
pub const SETTLEMENT_COLUMNS: [&str; 26] = [
    "setl_id",
    "node_id",
    "fixmedins_code",
    "mdtrt_id",
    "psn_no",
    "insutype",
    "clr_type",
    "msgid",
    "invono",
    "setl_time",
    "setl_date",
    "state",
    "mode",
    "offline",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "psn_cash_pay",
    "acc_year",
    "acc_pool",
    "acc_delta",
    "info",
    "received_at",
    "cancel_id",
    "cancel_time",
    "cancel_date",
];

/// What a forwarded settlement is compared on when the center already holds its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldValues {
    pub node_id: String,
    pub fixmedins_code: String,
    pub mdtrt_id: String,
    pub psn_no: String,
    pub msgid: String,
    pub setl_time: i64,
    pub mode: i64,
    pub medfee_sumamt: i64,
    pub fund_pay_sumamt: i64,
    pub acct_pay: i64,
    pub psn_cash_pay: i64,
    pub acc_year: i64,
    pub acc_pool: String,
    /// None when the stored change does not name exactly the accumulator fields.
    pub acc_delta: Option<Values>,
}

/// A settlement as the batch sees it: held by the center, or recorded earlier in it.
#[derive(Debug, Clone)]
pub struct Held {
    pub values: HeldValues,
    /// (fund_pay_type, base, amount), sorted.
    pub legs: Vec<(String, i64, i64)>,
    pub state: i64,
    pub cancel_id: Option<String>,
    /// Its row in `Writes::recorded`, when recorded in this batch.
    pub new: Option<usize>,
}

/// A person as the center holds them (a `READ_COLUMNS` row; the name still sealed).
#[derive(Debug, Clone)]
pub struct PersonRow {
    pub psn_name_sealed: Vec<u8>,
    pub gend: i64,
    pub brdy: i64,
    pub psn_type: i64,
    pub insutype: i64,
    pub insuplc_admdvs: String,
    pub cvlserv_flag: bool,
    pub maf_flag: bool,
    pub retired: bool,
    pub cross_region: i64,
}

/// The batch's view of the ledger, as read (and locked) before the items are decided.
#[derive(Debug, Default)]
pub struct View {
    pub settlements: HashMap<String, Held>,
    /// mdtrt_id -> its settled setl_id (this institution's).
    pub active: HashMap<String, String>,
    pub persons: HashMap<String, PersonRow>,
    pub balances: HashMap<String, i64>,
    /// The current row, else the opening one, per key.
    pub accumulators: HashMap<Key, Values>,
    /// Keys with a current row in the database.
    pub stored: HashSet<Key>,
}

/// A new settlement's row (`SETTLEMENT_COLUMNS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSettlement {
    pub setl_id: String,
    pub node_id: String,
    pub fixmedins_code: String,
    pub mdtrt_id: String,
    pub psn_no: String,
    pub insutype: i64,
    pub clr_type: i64,
    pub msgid: String,
    pub invono: String,
    pub setl_time: i64,
    pub setl_date: i64,
    pub state: i64,
    pub mode: i64,
    pub offline: i64,
    pub medfee_sumamt: i64,
    pub fund_pay_sumamt: i64,
    pub acct_pay: i64,
    pub psn_cash_pay: i64,
    pub acc_year: i64,
    pub acc_pool: String,
    pub acc_delta: Values,
    pub info: Vec<u8>,
    pub received_at: i64,
    pub cancel_id: Option<String>,
    pub cancel_time: Option<i64>,
    pub cancel_date: Option<i64>,
}

/// A difference between the center's accumulators and the front-end's, kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub setl_id: String,
    pub key: Key,
    pub ours: Values,
    pub theirs: Values,
    pub at: i64,
}

/// What the batch's items changed, to be written.
#[derive(Debug, Default)]
pub struct Writes {
    pub recorded: Vec<NewSettlement>,
    /// (setl_id, fund_pay_type, base, amount)
    pub legs: Vec<(String, String, i64, i64)>,
    /// Held settlements cancelled: (setl_id, cancel_id, at, date).
    pub cancels: Vec<(String, String, i64, i64)>,
    pub touched: BTreeSet<Key>,
    /// The touched rows' values after the batch, in key order, and whether each exists
    /// in the database (UPDATE) or not yet (INSERT).
    pub accumulator_rows: Vec<(Key, Values, bool)>,
    /// psn_no -> balance change.
    pub moved: BTreeMap<String, i64>,
    pub differences: Vec<Difference>,
}

/// The batch being decided: the view, what is written, the opened names.
pub(crate) struct Batch<'a> {
    pub(crate) view: &'a mut View,
    pub(crate) writes: Writes,
    pub(crate) names: HashMap<String, String>,
}

impl Batch<'_> {
    pub(crate) fn current(&self, key: &Key) -> Values {
        self.view.accumulators.get(key).copied().unwrap_or([0; LEN])
    }

    pub(crate) fn set_accumulators(&mut self, key: &Key, values: Values) {
        self.view.accumulators.insert(key.clone(), values);
        self.writes.touched.insert(key.clone());
    }

    pub(crate) fn move_balance(&mut self, psn_no: &str, change: i64) {
        if let Some(b) = self.view.balances.get_mut(psn_no) {
            *b += change;
            *self.writes.moved.entry(psn_no.to_owned()).or_insert(0) += change;
        }
    }

    pub(crate) fn record(&mut self, row: NewSettlement, legs: Vec<(String, i64, i64)>) {
        let mut sorted = legs.clone();
        sorted.sort();
        let values = HeldValues {
            node_id: row.node_id.clone(),
            fixmedins_code: row.fixmedins_code.clone(),
            mdtrt_id: row.mdtrt_id.clone(),
            psn_no: row.psn_no.clone(),
            msgid: row.msgid.clone(),
            setl_time: row.setl_time,
            mode: row.mode,
            medfee_sumamt: row.medfee_sumamt,
            fund_pay_sumamt: row.fund_pay_sumamt,
            acct_pay: row.acct_pay,
            psn_cash_pay: row.psn_cash_pay,
            acc_year: row.acc_year,
            acc_pool: row.acc_pool.clone(),
            acc_delta: Some(row.acc_delta),
        };
        let held = Held {
            values,
            legs: sorted,
            state: i64::from(SETTLED),
            cancel_id: None,
            new: Some(self.writes.recorded.len()),
        };
        self.view
            .active
            .insert(row.mdtrt_id.clone(), row.setl_id.clone());
        self.view.settlements.insert(row.setl_id.clone(), held);
        for (fund, base, amount) in legs {
            self.writes
                .legs
                .push((row.setl_id.clone(), fund, base, amount));
        }
        self.writes.recorded.push(row);
    }

    pub(crate) fn cancel(&mut self, setl_id: &str, cancel_id: &str, at: i64, date: i64) {
        let Some(held) = self.view.settlements.get_mut(setl_id) else {
            return;
        };
        held.state = CANCELLED;
        held.cancel_id = Some(cancel_id.to_owned());
        if self
            .view
            .active
            .get(&held.values.mdtrt_id)
            .map(String::as_str)
            == Some(setl_id)
        {
            self.view.active.remove(&held.values.mdtrt_id);
        }
        match held.new {
            Some(i) => {
                // recorded in this batch: inserted as cancelled
                let row = &mut self.writes.recorded[i];
                row.state = CANCELLED;
                row.cancel_id = Some(cancel_id.to_owned());
                row.cancel_time = Some(at);
                row.cancel_date = Some(date);
            }
            None => self
                .writes
                .cancels
                .push((setl_id.to_owned(), cancel_id.to_owned(), at, date)),
        }
    }
}

/// `acc_delta` as the JSON object stored (fields in their one order).
pub fn delta_json(values: &Values) -> String {
    let fields: Vec<String> = Accumulators::FIELDS
        .iter()
        .zip(values)
        .map(|(f, v)| format!("\"{f}\": {v}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

impl Writes {
    /// The new settlements as `COPY settlements (SETTLEMENT_COLUMNS) FROM STDIN` text.
    pub fn settlements_copy(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.recorded.len() * 512);
        for s in &self.recorded {
            Row::new(&mut out)
                .text(&s.setl_id)
                .text(&s.node_id)
                .text(&s.fixmedins_code)
                .text(&s.mdtrt_id)
                .text(&s.psn_no)
                .int(s.insutype)
                .int(s.clr_type)
                .text(&s.msgid)
                .text(&s.invono)
                .int(s.setl_time)
                .int(s.setl_date)
                .int(s.state)
                .int(s.mode)
                .int(s.offline)
                .int(s.medfee_sumamt)
                .int(s.fund_pay_sumamt)
                .int(s.acct_pay)
                .int(s.psn_cash_pay)
                .int(s.acc_year)
                .text(&s.acc_pool)
                .text(&delta_json(&s.acc_delta))
                .bytea(&s.info)
                .int(s.received_at)
                .opt_text(s.cancel_id.as_deref())
                .opt_int(s.cancel_time)
                .opt_int(s.cancel_date)
                .end();
        }
        out
    }

    /// The new settlements' fund legs as `COPY setl_legs FROM STDIN` text.
    pub fn legs_copy(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.legs.len() * 48);
        for (setl_id, fund, base, amount) in &self.legs {
            Row::new(&mut out)
                .text(setl_id)
                .text(fund)
                .int(*base)
                .int(*amount)
                .end();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_json_names_every_field_in_order() {
        let j = delta_json(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(j.starts_with("{\"inpatient_count\": 1, \"dedc_paid\": 2"));
        assert!(j.ends_with("\"maf_paid\": 8}"));
    }
}
