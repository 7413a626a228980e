//! `engine_rs.CenterNode` and `engine_rs.ForwardBatch`: the center's decision over a batch
//! of forwarded items (center/forward.rs) on the view server/center/store/batch.py reads
//! from PostgreSQL; `ForwardDecision` carries the answer and the writes back.
//!
//! The view arrives as the database's rows (tuples as psycopg fetches them) and is turned
//! into the core's structs here; the decision runs with the GIL released.

use std::collections::HashMap;

use prost::Message;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3::BoundObject;

use super::error::{guard, ledger_error, ledger_refused as refused};
use super::policy::PyPolicy;
use crate::center::forward::{self, Center, Outcome, Plan, Sender};
use crate::center::summary::{self, Remembered};
use crate::center::view::{Held, HeldValues, Key, PersonRow, Values, View, Writes};
use crate::ledger::refusal::LedgerError;
use crate::ledger::vault::Vault;
use crate::policy::Policy;
use crate::split::Accumulators;
use crate::wire;

/// The center's keys and settings for deciding forwarded batches.
#[pyclass(module = "engine_rs", name = "CenterNode", frozen)]
pub struct PyCenterNode {
    vault: Vault,
    tz_offset_min: i64,
    max_visit_fee_fen: i64,
}

#[pymethods]
impl PyCenterNode {
    #[new]
    fn new(
        pii_seal: &[u8],
        pii_version: u8,
        tz_offset_min: i64,
        max_visit_fee_fen: i64,
    ) -> PyResult<Self> {
        let vault = Vault::new(pii_seal, pii_version).map_err(|e| refused(e.0))?;
        Ok(Self {
            vault,
            tz_offset_min,
            max_visit_fee_fen,
        })
    }

    /// A batch of `SettleSummary` calls settled in order (center/summary.rs) over the
    /// persons and accumulator rows server/center/summaries.py read and locked. `calls`:
    /// (CenterSettleRequest bytes, payload hash, now ms, refused by the caller);
    /// `institutions`: code -> (hosp_lv, admdvs) of those the calls name.
    fn settle_summaries(
        &self,
        py: Python<'_>,
        calls: Vec<(Vec<u8>, Vec<u8>, i64, bool)>,
        institutions: HashMap<String, (u32, String)>,
        policies: HashMap<i64, Py<PyPolicy>>,
        persons: Vec<Bound<'_, PyTuple>>,
        accumulators: Vec<Bound<'_, PyTuple>>,
    ) -> PyResult<PySummaryDecision> {
        let mut view = view_of(&[], &[], Vec::new(), &persons, &accumulators)?;
        let calls = calls
            .into_iter()
            .map(|(req, digest, now, refused_here)| {
                let req = wire::CenterSettleRequest::decode(&req[..])
                    .map_err(|e| refused(format!("malformed CenterSettleRequest: {e}")))?;
                Ok(summary::Call {
                    req,
                    digest,
                    now,
                    refused: refused_here,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let institutions = institutions
            .into_iter()
            .map(|(code, (hosp_lv, admdvs))| (code, summary::Institution { hosp_lv, admdvs }))
            .collect();
        let decided = py.detach(|| {
            guard("center", "settle summaries", || {
                let by_version: HashMap<i64, &Policy> =
                    policies.iter().map(|(v, p)| (*v, &p.get().inner)).collect();
                let center = summary::Center {
                    vault: &self.vault,
                    tz_offset_min: self.tz_offset_min,
                    policies: &by_version,
                    institutions: &institutions,
                };
                summary::decide(&center, &mut view, &calls).map(|d| {
                    let json = (
                        summary::settlements_json(&d.writes),
                        summary::legs_json(&d.writes),
                        summary::remembered_json(&d.remembered),
                    );
                    (d, json)
                })
            })
        })?;
        let (d, (settlements, legs, remembered)) =
            decided.map_err(|f| refused(format!("settle summaries: {}", f.0)))?;
        let outcomes = d
            .outcomes
            .into_iter()
            .map(|o| match o {
                summary::Outcome::Answer(a) => Ok(PyBytes::new(py, &a).into_any().unbind()),
                summary::Outcome::Refused(r) => {
                    Ok(ledger_error("settle summaries", LedgerError::Refused(r))
                        .value(py)
                        .clone()
                        .into_any()
                        .unbind())
                }
                summary::Outcome::Theirs => Ok(py.None()),
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PySummaryDecision {
            outcomes,
            writes: d.writes,
            remembered: d.remembered,
            settlements,
            legs,
            remembered_json: remembered,
        })
    }
}

/// What a batch of `SettleSummary` calls decided: each call's outcome, and the writes as
/// server/center/summaries.py `_write` makes them.
#[pyclass(module = "engine_rs", name = "SummaryDecision", frozen)]
pub struct PySummaryDecision {
    outcomes: Vec<Py<PyAny>>,
    writes: Writes,
    remembered: Vec<Remembered>,
    settlements: String,
    legs: String,
    remembered_json: String,
}

#[pymethods]
impl PySummaryDecision {
    /// Per call, in order: its answer (a `CenterSettleResponse`'s bytes), its refusal (a
    /// `Refused`, not raised), or None where the caller's own refusal stands.
    #[getter]
    fn outcomes(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        self.outcomes.iter().map(|o| o.clone_ref(py)).collect()
    }

    /// How many calls settled.
    #[getter]
    fn settled(&self) -> usize {
        self.remembered.len()
    }

    /// The new settlements, as `insert_all` takes them (SETTLEMENT_COLUMNS).
    #[getter]
    fn settlements(&self) -> &str {
        &self.settlements
    }

    /// Their fund legs (LEG_COLUMNS).
    #[getter]
    fn legs(&self) -> &str {
        &self.legs
    }

    /// The settled calls' idempotency records (IDEMPOTENCY_COLUMNS), answers sealed.
    #[getter]
    fn remembered(&self) -> &str {
        &self.remembered_json
    }

    /// As `ForwardDecision.accumulators`.
    #[getter]
    fn accumulators<'py>(&self, py: Python<'py>) -> PyResult<AccumulatorColumns<'py>> {
        accumulator_columns(py, &self.writes)
    }

    /// As `ForwardDecision.moved`.
    #[getter]
    fn moved<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        moved_columns(py, &self.writes)
    }
}

/// A decoded `ForwardRequest` and what its items name (the keys to read before deciding).
#[pyclass(module = "engine_rs", name = "ForwardBatch", frozen)]
pub struct PyForwardBatch {
    req: wire::ForwardRequest,
    plan: Plan,
}

fn item<'py, T: pyo3::conversion::FromPyObjectOwned<'py>>(
    row: &Bound<'py, PyTuple>,
    i: usize,
) -> PyResult<T> {
    row.get_item(i)?.extract::<T>().map_err(Into::into)
}

fn blob(v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    match v.cast::<PyBytes>() {
        Ok(b) => Ok(b.as_bytes().to_vec()),
        // a memoryview or bytearray
        Err(_) => Ok(v
            .call_method0("__bytes__")?
            .cast::<PyBytes>()?
            .as_bytes()
            .to_vec()),
    }
}

/// A stored `acc_delta` (a dict by field name); None unless it names exactly the fields.
fn delta_of(v: &Bound<'_, PyAny>) -> PyResult<Option<Values>> {
    let Ok(d) = v.cast::<PyDict>() else {
        return Ok(None);
    };
    if d.len() != Accumulators::LEN {
        return Ok(None);
    }
    let mut out = [0; Accumulators::LEN];
    for (slot, f) in out.iter_mut().zip(Accumulators::FIELDS) {
        match d.get_item(f)? {
            Some(x) => *slot = x.extract()?,
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

fn values_dict<'py>(py: Python<'py>, v: &Values) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (f, x) in Accumulators::FIELDS.iter().zip(v) {
        d.set_item(*f, x)?;
    }
    Ok(d)
}

/// The view from the rows `LedgerBatch.load` fetched.
fn view_of(
    settlements: &[Bound<'_, PyTuple>],
    legs: &[Bound<'_, PyTuple>],
    active: Vec<(String, String)>,
    persons: &[Bound<'_, PyTuple>],
    accumulators: &[Bound<'_, PyTuple>],
) -> PyResult<View> {
    let mut view = View::default();
    // setl_id, state, cancel_id, then the HELD fields (server/center/store/batch.py)
    for r in settlements {
        let values = HeldValues {
            node_id: item(r, 3)?,
            fixmedins_code: item(r, 4)?,
            mdtrt_id: item(r, 5)?,
            psn_no: item(r, 6)?,
            msgid: item(r, 7)?,
            setl_time: item(r, 8)?,
            mode: item(r, 9)?,
            medfee_sumamt: item(r, 10)?,
            fund_pay_sumamt: item(r, 11)?,
            acct_pay: item(r, 12)?,
            psn_cash_pay: item(r, 13)?,
            acc_year: item(r, 14)?,
            acc_pool: item(r, 15)?,
            acc_delta: delta_of(&r.get_item(16)?)?,
        };
        let held = Held {
            values,
            legs: Vec::new(),
            state: item(r, 1)?,
            cancel_id: item(r, 2)?,
            new: None,
        };
        view.settlements.insert(item(r, 0)?, held);
    }
    for r in legs {
        let setl_id: String = item(r, 0)?;
        if let Some(h) = view.settlements.get_mut(&setl_id) {
            h.legs.push((item(r, 1)?, item(r, 2)?, item(r, 3)?));
        }
    }
    for h in view.settlements.values_mut() {
        h.legs.sort();
    }
    view.active = active.into_iter().collect();
    // READ_COLUMNS (server/persons.py): psn_no, psn_name, psn_cert_no, gend, brdy,
    // psn_type, insutype, insuplc_admdvs, cvlserv_flag, maf_flag, retired, cross_region, balc
    for r in persons {
        let psn_no: String = item(r, 0)?;
        let flag = |i: usize| -> PyResult<bool> { r.get_item(i)?.is_truthy() };
        let person = PersonRow {
            psn_name_sealed: blob(&r.get_item(1)?)?,
            gend: item(r, 3)?,
            brdy: item(r, 4)?,
            psn_type: item(r, 5)?,
            insutype: item(r, 6)?,
            insuplc_admdvs: item(r, 7)?,
            cvlserv_flag: flag(8)?,
            maf_flag: flag(9)?,
            retired: flag(10)?,
            cross_region: item(r, 11)?,
        };
        view.balances.insert(psn_no.clone(), item(r, 12)?);
        view.persons.insert(psn_no, person);
    }
    // psn_no, year, pool, opening, then the fields; the current row (opening 0) first
    for r in accumulators {
        let key: Key = (item(r, 0)?, item(r, 1)?, item(r, 2)?);
        let opening: i64 = item(r, 3)?;
        let mut values = [0; Accumulators::LEN];
        for (k, slot) in values.iter_mut().enumerate() {
            *slot = item(r, 4 + k)?;
        }
        if opening == 0 {
            view.stored.insert(key.clone());
        }
        view.accumulators.entry(key).or_insert(values);
    }
    Ok(view)
}

#[pymethods]
impl PyForwardBatch {
    /// Decodes the request; EngineError when it is not a `ForwardRequest`.
    #[new]
    fn new(request: &[u8]) -> PyResult<Self> {
        let req = wire::ForwardRequest::decode(request)
            .map_err(|e| refused(format!("malformed request message: {e}")))?;
        let plan = guard("center", "forward plan", || forward::plan(&req))?;
        Ok(Self { req, plan })
    }

    /// The settlements the items name (settled or cancelled), sorted.
    #[getter]
    fn setl_ids(&self) -> Vec<String> {
        self.plan.setl_ids.clone()
    }

    /// The ids of the settlements forwarded as settled.
    #[getter]
    fn settle_ids(&self) -> Vec<String> {
        self.plan.settle_ids.iter().cloned().collect()
    }

    #[getter]
    fn mdtrt_ids(&self) -> Vec<String> {
        self.plan.mdtrt_ids.clone()
    }

    #[getter]
    fn psn_nos(&self) -> Vec<String> {
        self.plan.psn_nos.iter().cloned().collect()
    }

    /// The accumulator rows the settlements name: (psn_no, year, pool).
    #[getter]
    fn keys(&self) -> Vec<Key> {
        self.plan.keys.iter().cloned().collect()
    }

    #[getter]
    fn policy_versions(&self) -> Vec<i64> {
        self.plan.policy_versions.iter().copied().collect()
    }

    /// The items decided over the view's rows (as `LedgerBatch.load` fetched them), for
    /// `sender` (fixmedins_code, node_id, hosp_lv, admdvs) at `now` (ms).
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        py: Python<'_>,
        node: &PyCenterNode,
        sender: (String, String, u32, String),
        now: i64,
        policies: HashMap<i64, Py<PyPolicy>>,
        settlements: Vec<Bound<'_, PyTuple>>,
        legs: Vec<Bound<'_, PyTuple>>,
        active: Vec<(String, String)>,
        persons: Vec<Bound<'_, PyTuple>>,
        accumulators: Vec<Bound<'_, PyTuple>>,
    ) -> PyResult<PyForwardDecision> {
        let mut view = view_of(&settlements, &legs, active, &persons, &accumulators)?;
        let (code, node_id, hosp_lv, admdvs) = sender;
        let req = &self.req;
        let decided = py.detach(|| {
            guard("center", "forward", || {
                let by_version: HashMap<i64, &Policy> =
                    policies.iter().map(|(v, p)| (*v, &p.get().inner)).collect();
                let center = Center {
                    vault: &node.vault,
                    tz_offset_min: node.tz_offset_min,
                    max_visit_fee_fen: node.max_visit_fee_fen,
                    policies: &by_version,
                    now,
                };
                let sender = Sender {
                    fixmedins_code: &code,
                    node_id: &node_id,
                    hosp_lv,
                    admdvs: &admdvs,
                };
                forward::decide(&center, &sender, &mut view, req).map(|(outcomes, writes)| {
                    let answer = forward::answer(&outcomes);
                    let copies = (writes.settlements_copy(), writes.legs_copy());
                    (outcomes, writes, answer, copies)
                })
            })
        })?;
        let (outcomes, writes, answer, (settlements_copy, legs_copy)) =
            decided.map_err(|f| refused(format!("forward: {}", f.0)))?;
        let conflicts = outcomes
            .iter()
            .filter(|o| o.outcome == forward::CONFLICT)
            .map(|o| (o.seq, self.named_id(o.seq), o.detail.clone()))
            .collect();
        Ok(PyForwardDecision {
            outcomes,
            writes,
            answer,
            settlements_copy,
            legs_copy,
            conflicts,
        })
    }
}

impl PyForwardBatch {
    /// The settlement id an item names, for the log.
    fn named_id(&self, seq: i64) -> String {
        self.req
            .items
            .iter()
            .find(|i| i.seq == seq)
            .map(|i| {
                if i.setl_id.is_empty() {
                    i.setlinfo
                        .as_ref()
                        .map(|s| s.setl_id.clone())
                        .unwrap_or_default()
                } else {
                    i.setl_id.clone()
                }
            })
            .unwrap_or_default()
    }
}

/// What a batch decided: the answer, and the writes as `LedgerBatch.write` makes them.
#[pyclass(module = "engine_rs", name = "ForwardDecision", frozen)]
pub struct PyForwardDecision {
    outcomes: Vec<Outcome>,
    writes: Writes,
    answer: Vec<u8>,
    settlements_copy: Vec<u8>,
    legs_copy: Vec<u8>,
    conflicts: Vec<(i64, String, String)>,
}

/// Rows of `width` values as `width` column lists, for `unnest`.
fn columns_of<'py>(
    py: Python<'py>,
    width: usize,
    rows: Vec<Vec<Bound<'py, PyAny>>>,
) -> PyResult<Bound<'py, PyList>> {
    let mut cols: Vec<Vec<Bound<'py, PyAny>>> = (0..width).map(|_| Vec::new()).collect();
    for row in rows {
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let lists = cols
        .into_iter()
        .map(|c| PyList::new(py, c))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, lists)
}

fn any<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> PyResult<Bound<'py, PyAny>>
where
    PyErr: From<T::Error>,
{
    Ok(v.into_pyobject(py)?.into_any().into_bound())
}

type AccumulatorColumns<'py> = (Bound<'py, PyList>, Bound<'py, PyList>);

/// The accumulator rows a batch changed, as columns psn_no, year, pool, then the fields:
/// (rows that exist, rows to insert), each in key order.
fn accumulator_columns<'py>(py: Python<'py>, writes: &Writes) -> PyResult<AccumulatorColumns<'py>> {
    let rows = |stored: bool| -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        for (key, v, exists) in &writes.accumulator_rows {
            if *exists != stored {
                continue;
            }
            let mut row: Vec<Bound<'py, PyAny>> =
                vec![any(py, &key.0)?, any(py, key.1)?, any(py, &key.2)?];
            for x in v {
                row.push(any(py, x)?);
            }
            out.push(row);
        }
        columns_of(py, 3 + Accumulators::LEN, out)
    };
    Ok((rows(true)?, rows(false)?))
}

/// A batch's balance changes, as columns psn_no, change (none zero), by psn_no.
fn moved_columns<'py>(py: Python<'py>, writes: &Writes) -> PyResult<Bound<'py, PyList>> {
    let rows = writes
        .moved
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(p, d)| Ok::<_, PyErr>(vec![any(py, p)?, any(py, d)?]));
    columns_of(py, 2, rows.collect::<PyResult<Vec<_>>>()?)
}

#[pymethods]
impl PyForwardDecision {
    /// The `ForwardResponse`, encoded.
    #[getter]
    fn answer<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.answer)
    }

    /// (seq, outcome, detail) of every item, in order.
    #[getter]
    fn outcomes(&self) -> Vec<(i64, i32, String)> {
        self.outcomes
            .iter()
            .map(|o| (o.seq, o.outcome, o.detail.clone()))
            .collect()
    }

    /// (seq, setl_id, detail) of each CONFLICT.
    #[getter]
    fn conflicts(&self) -> Vec<(i64, String, String)> {
        self.conflicts.clone()
    }

    /// How many settlements are new.
    #[getter]
    fn recorded(&self) -> usize {
        self.writes.recorded.len()
    }

    /// The new settlements as COPY text, columns in `SETTLEMENT_COLUMNS` order.
    #[getter]
    fn settlements_copy<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.settlements_copy)
    }

    /// Their fund legs as COPY text: setl_id, fund_pay_type, base, amount.
    #[getter]
    fn legs_copy<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.legs_copy)
    }

    /// Held settlements cancelled: columns setl_id, cancel_id, at, date.
    #[getter]
    fn cancels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = self.writes.cancels.iter().map(|(s, c, at, date)| {
            Ok::<_, PyErr>(vec![any(py, s)?, any(py, c)?, any(py, at)?, any(py, date)?])
        });
        columns_of(py, 4, rows.collect::<PyResult<Vec<_>>>()?)
    }

    /// The accumulator rows changed, as columns psn_no, year, pool, then the fields:
    /// (rows that exist, rows to insert), each in key order.
    #[getter]
    fn accumulators<'py>(&self, py: Python<'py>) -> PyResult<AccumulatorColumns<'py>> {
        accumulator_columns(py, &self.writes)
    }

    /// Balance changes, as columns psn_no, change (none zero), by psn_no.
    #[getter]
    fn moved<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        moved_columns(py, &self.writes)
    }

    /// accumulator_differences rows: setl_id, psn_no, year, pool, ours, theirs, at.
    #[getter]
    fn differences<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.writes
            .differences
            .iter()
            .map(|d| {
                PyTuple::new(
                    py,
                    [
                        any(py, &d.setl_id)?,
                        any(py, &d.key.0)?,
                        any(py, d.key.1)?,
                        any(py, &d.key.2)?,
                        values_dict(py, &d.ours)?.into_any(),
                        values_dict(py, &d.theirs)?.into_any(),
                        any(py, d.at)?,
                    ],
                )
            })
            .collect()
    }
}
