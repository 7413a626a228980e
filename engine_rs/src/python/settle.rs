//! Fee preprocessing and fund split: `preprocess`, `preprocess_batch`, `split`,
//! `split_batch`, and the value classes they take and return.
//!
//! `Visit`, `Selection`, `Person`, `Accumulators`, `Summary` and `FundLeg` are the core
//! structs themselves (`#[cfg_attr(feature = "python", pyclass(...))]` where they are
//! declared); this module adds their keyword-only constructors and methods. Batch calls take
//! dicts of numpy columns (int64 for every integer, bool for flags) and return dicts of numpy
//! columns, with the GIL released.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::catalog::PyCatalog;
use super::convert::{
    borrow_i64, borrow_str, column_error, get_col, num_col, opt_col, sized_col_or,
    str_col_or_empty, str_view, StrArrays,
};
use super::error::guard;
use super::policy::PyPolicy;
use crate::error::EngineError;
use crate::ledger;
use crate::policy::Selection;
use crate::preprocess::{self as pre, Lines, Summary, VisitCtx};
use crate::split::{self as sp, accumulator_fields, Accumulators, FundLeg, Person, SplitInput};
use crate::wire;

#[pymethods]
impl VisitCtx {
    #[new]
    #[pyo3(signature = (*, treatment, date, psn_type=0, sex=0, age=0, diagnoses=Vec::new()))]
    fn py_new(
        treatment: u8,
        date: i32,
        psn_type: u32,
        sex: u8,
        age: u32,
        diagnoses: Vec<String>,
    ) -> Self {
        Self {
            treatment,
            psn_type,
            sex,
            age,
            date,
            // trimmed like the comma-separated diagnoses of batch visits
            diagnoses: diagnoses.iter().map(|d| d.trim().to_owned()).collect(),
        }
    }
}

#[pymethods]
impl Selection {
    #[new]
    #[pyo3(signature = (*, treatment, date, region=0, insutype=0, psn_type=0, hosp_lv=0, admission_no=0))]
    fn py_new(
        treatment: u8,
        date: i32,
        region: u32,
        insutype: u32,
        psn_type: u32,
        hosp_lv: u32,
        admission_no: u32,
    ) -> Self {
        Self {
            region,
            insutype,
            psn_type,
            treatment,
            hosp_lv,
            date,
            admission_no,
        }
    }
}

#[pymethods]
impl Person {
    #[new]
    #[pyo3(signature = (*, age=0, retired=false, civil_servant=false, cross_region=0, assistance=false, acct_used=false, acct_balance=0))]
    fn py_new(
        age: u32,
        retired: bool,
        civil_servant: bool,
        cross_region: u8,
        assistance: bool,
        acct_used: bool,
        acct_balance: i64,
    ) -> Self {
        Self {
            age,
            retired,
            civil_servant,
            cross_region,
            assistance,
            acct_used,
            acct_balance,
        }
    }
}

/// The `Accumulators` methods, generated from the one field list (`accumulator_fields!`).
macro_rules! accumulators_pymethods {
    ($($field:ident,)+) => {
        #[pymethods]
        impl Accumulators {
            #[new]
            #[pyo3(signature = (*, $($field = 0),+))]
            #[allow(clippy::too_many_arguments)]
            fn py_new($($field: i64),+) -> Self {
                Self { $($field),+ }
            }

            /// The accumulators as a dict keyed by field name.
            #[allow(clippy::wrong_self_convention)] // a method of a Python class
            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let d = PyDict::new(py);
                for (k, v) in Self::FIELDS.iter().zip(self.values()) {
                    d.set_item(*k, v)?;
                }
                Ok(d)
            }

            fn __repr__(&self) -> String {
                format!("{self:?}")
            }
        }
    };
}
accumulator_fields!(accumulators_pymethods);

#[pymethods]
impl Summary {
    #[new]
    #[pyo3(signature = (*, medfee_sumamt, fulamt_ownpay_amt=0, overlmt_amt=0, preselfpay_amt=0, inscp_scp_amt=0, line_count=0))]
    fn py_new(
        medfee_sumamt: i64,
        fulamt_ownpay_amt: i64,
        overlmt_amt: i64,
        preselfpay_amt: i64,
        inscp_scp_amt: i64,
        line_count: i64,
    ) -> Self {
        Self {
            medfee_sumamt,
            fulamt_ownpay_amt,
            overlmt_amt,
            preselfpay_amt,
            inscp_scp_amt,
            line_count,
            ..Self::default()
        }
    }
}

/// Per-line preprocessing results as numpy columns (the core's `LineResults`, handed to
/// numpy without copies).
#[pyclass(name = "LineResults", module = "engine_rs", frozen)]
pub struct PyLineResults {
    #[pyo3(get)]
    item: Py<PyArray1<i64>>,
    #[pyo3(get)]
    chrgitm_lv: Py<PyArray1<u8>>,
    #[pyo3(get)]
    fee_category: Py<PyArray1<u8>>,
    #[pyo3(get)]
    fulamt_ownpay_amt: Py<PyArray1<i64>>,
    #[pyo3(get)]
    overlmt_amt: Py<PyArray1<i64>>,
    #[pyo3(get)]
    preselfpay_amt: Py<PyArray1<i64>>,
    #[pyo3(get)]
    inscp_scp_amt: Py<PyArray1<i64>>,
    #[pyo3(get)]
    flags: Py<PyArray1<u16>>,
    len: usize,
}

#[pymethods]
impl PyLineResults {
    fn __len__(&self) -> usize {
        self.len
    }
}

impl PyLineResults {
    fn new(py: Python<'_>, r: pre::LineResults) -> Self {
        let pre::LineResults {
            item,
            chrgitm_lv,
            fee_category,
            fulamt_ownpay_amt,
            overlmt_amt,
            preselfpay_amt,
            inscp_scp_amt,
            flags,
        } = r;
        Self {
            len: item.len(),
            item: PyArray1::from_vec(py, item).unbind(),
            chrgitm_lv: PyArray1::from_vec(py, chrgitm_lv).unbind(),
            fee_category: PyArray1::from_vec(py, fee_category).unbind(),
            fulamt_ownpay_amt: PyArray1::from_vec(py, fulamt_ownpay_amt).unbind(),
            overlmt_amt: PyArray1::from_vec(py, overlmt_amt).unbind(),
            preselfpay_amt: PyArray1::from_vec(py, preselfpay_amt).unbind(),
            inscp_scp_amt: PyArray1::from_vec(py, inscp_scp_amt).unbind(),
            flags: PyArray1::from_vec(py, flags).unbind(),
        }
    }
}

/// The outcome of one fund split: the core's `SplitResult` with the rule's names and the
/// fund legs.
#[pyclass(name = "SplitResult", module = "engine_rs", frozen, get_all)]
pub struct PySplitResult {
    rule: u32,
    rule_id: String,
    accumulator_pool: String,
    act_pay_dedc: i64,
    hifp_pay: i64,
    critical_pay: i64,
    critical_fund_pay_type: String,
    cvlserv_pay: i64,
    maf_pay: i64,
    fund_pay_sumamt: i64,
    psn_part_amt: i64,
    acct_pay: i64,
    psn_cash_pay: i64,
    balc: i64,
    accumulators: Py<Accumulators>,
    legs: Vec<Py<FundLeg>>,
}

/// Fee-line columns borrowed from numpy for the length of one call (see `convert`).
struct LineCols<'py> {
    hosp: StrArrays<'py>,
    ins: Option<StrArrays<'py>>,
    cnt: numpy::PyReadonlyArray1<'py, i64>,
    pric: numpy::PyReadonlyArray1<'py, i64>,
    amount: numpy::PyReadonlyArray1<'py, i64>,
    appr: Option<numpy::PyReadonlyArray1<'py, i64>>,
    fee_date: Option<numpy::PyReadonlyArray1<'py, i64>>,
    visit: Option<numpy::PyReadonlyArray1<'py, i64>>,
}

impl<'py> LineCols<'py> {
    /// Borrows the `FeeLines` (or, for a batch, `BatchFeeLines`) columns of `d`.
    fn borrow(d: &Bound<'py, PyDict>, batch: bool) -> PyResult<Self> {
        let req_i64 = |key: &str| borrow_i64(&get_col(d, key)?, key);
        let opt_i64 = |key: &str| opt_col(d, key)?.map(|v| borrow_i64(&v, key)).transpose();
        Ok(Self {
            hosp: borrow_str(&get_col(d, "medins_list_codg")?, "medins_list_codg")?,
            ins: opt_col(d, "med_list_codg")?
                .map(|v| borrow_str(&v, "med_list_codg"))
                .transpose()?,
            cnt: req_i64("cnt")?,
            pric: req_i64("pric")?,
            amount: req_i64("det_item_fee_sumamt")?,
            appr: opt_i64("hosp_appr_flag")?,
            fee_date: opt_i64("fee_date")?,
            visit: if batch { Some(req_i64("visit")?) } else { None },
        })
    }

    /// Preprocesses these lines for `visits`, with the GIL released.
    fn preprocess(
        &self,
        py: Python<'_>,
        what: &str,
        catalog: &PyCatalog,
        policy: &PyPolicy,
        visits: &[VisitCtx],
    ) -> PyResult<(pre::LineResults, pre::Summaries)> {
        let cat = catalog.inner.clone();
        let doc = &policy.inner.doc;
        let (tol, mode) = (doc.preprocess.line_tolerance_fen, doc.rounding.mode);
        // Every slice below was checked contiguous when borrowed.
        let hosp = str_view("medins_list_codg", &self.hosp)?;
        let ins = match &self.ins {
            Some(ins) => Some(str_view("med_list_codg", ins)?),
            None => None,
        };
        let n = hosp.len();
        let zeros;
        let (appr, fee_date) = match (&self.appr, &self.fee_date) {
            (Some(a), Some(f)) => (a.as_slice()?, f.as_slice()?),
            (a, f) => {
                zeros = vec![0i64; n];
                (
                    a.as_ref().map_or(Ok(&zeros[..]), |a| a.as_slice())?,
                    f.as_ref().map_or(Ok(&zeros[..]), |f| f.as_slice())?,
                )
            }
        };
        let lines = Lines {
            medins_list_codg: hosp,
            med_list_codg: ins,
            cnt: self.cnt.as_slice()?,
            pric: self.pric.as_slice()?,
            det_item_fee_sumamt: self.amount.as_slice()?,
            hosp_appr_flag: appr,
            fee_date,
            visit: self.visit.as_ref().map_or(Ok(&[][..]), |v| v.as_slice())?,
        };
        let done = py.detach(|| {
            guard("settle", what, || {
                pre::preprocess(&cat, &lines, visits, tol, mode)
            })
        })??;
        Ok(done)
    }
}

/// Preprocesses the fee lines of one visit.
#[pyfunction]
pub fn preprocess(
    py: Python<'_>,
    catalog: &PyCatalog,
    policy: &PyPolicy,
    lines: &Bound<'_, PyDict>,
    visit: &VisitCtx,
) -> PyResult<(PyLineResults, Summary)> {
    let cols = LineCols::borrow(lines, false)?;
    let (r, sums) = cols.preprocess(
        py,
        "preprocess",
        catalog,
        policy,
        std::slice::from_ref(visit),
    )?;
    Ok((PyLineResults::new(py, r), sums.get(0)))
}

/// The `VisitColumns` of a batch, checked and converted.
fn visit_ctxs(visits: &Bound<'_, PyDict>) -> PyResult<Vec<VisitCtx>> {
    let treatment = num_col::<i64>(&get_col(visits, "treatment")?, "treatment")?;
    let n = treatment.len();
    let date = num_col::<i64>(&get_col(visits, "date")?, "date")?;
    let psn_type = sized_col_or(visits, "psn_type", n, 0i64)?;
    let sex = sized_col_or(visits, "sex", n, 0i64)?;
    let age = sized_col_or(visits, "age", n, 0i64)?;
    let diagnoses = str_col_or_empty(visits, "diagnoses", n)?;
    for (k, len) in [("date", date.len()), ("diagnoses", diagnoses.len())] {
        if len != n {
            return Err(column_error(
                k,
                format!("has {len} rows, treatment has {n}"),
            ));
        }
    }
    let mut ctx = Vec::with_capacity(n);
    for i in 0..n {
        let small = |v: i64, f: &str, max: i64| -> PyResult<i64> {
            let min = i64::from(f == "treatment"); // treatments are 1, 2, 3
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(column_error(f, format!("row {i}: {v} out of range")))
            }
        };
        let diag = diagnoses.get(i);
        ctx.push(VisitCtx {
            treatment: small(treatment[i], "treatment", 3)? as u8,
            psn_type: small(psn_type[i], "psn_type", i64::from(u32::MAX))? as u32,
            sex: small(sex[i], "sex", 2)? as u8,
            age: small(age[i], "age", 150)? as u32,
            date: small(date[i], "date", 99_991_231)? as i32,
            diagnoses: if diag.is_empty() {
                Vec::new()
            } else {
                diag.split(',').map(|s| s.trim().to_owned()).collect()
            },
        });
    }
    Ok(ctx)
}

/// Preprocesses the lines of many visits (`lines["visit"]` indexes `visits`) in one call.
#[pyfunction]
pub fn preprocess_batch<'py>(
    py: Python<'py>,
    catalog: &PyCatalog,
    policy: &PyPolicy,
    lines: &Bound<'py, PyDict>,
    visits: &Bound<'py, PyDict>,
) -> PyResult<(PyLineResults, Bound<'py, PyDict>)> {
    let cols = LineCols::borrow(lines, true)?;
    let ctx = visit_ctxs(visits)?;
    let (r, sums) = cols.preprocess(py, "preprocess_batch", catalog, policy, &ctx)?;
    let out = PyDict::new(py);
    let names = [
        "medfee_sumamt",
        "fulamt_ownpay_amt",
        "overlmt_amt",
        "preselfpay_amt",
        "inscp_scp_amt",
        "line_count",
    ];
    for (k, name) in names.iter().enumerate() {
        let col: Vec<i64> = sums.totals.iter().map(|t| t[k]).collect();
        out.set_item(*name, PyArray1::from_vec(py, col))?;
    }
    let rows = sums.category.len();
    let cat_sums: Bound<'py, PyArray2<i64>> =
        PyArray1::from_vec(py, sums.category_sums).reshape([rows, 5])?;
    out.set_item(
        "category_visit",
        PyArray1::from_vec(py, sums.category_visit),
    )?;
    out.set_item("category", PyArray1::from_vec(py, sums.category))?;
    out.set_item("category_sums", cat_sums)?;
    Ok((PyLineResults::new(py, r), out))
}

/// Splits one settlement, with every fund leg and its derivation.
#[pyfunction]
pub fn split(
    py: Python<'_>,
    policy: &PyPolicy,
    summary: &Summary,
    selection: &Selection,
    person: &Person,
    accumulators: &Accumulators,
) -> PyResult<PySplitResult> {
    let p = &policy.inner;
    let (r, legs) = guard("settle", "split", || {
        sp::split_with_legs(
            p,
            &SplitInput::from(summary),
            selection,
            person,
            accumulators,
        )
    })??;
    let rule = p.rule(r.rule as usize);
    Ok(PySplitResult {
        rule: r.rule,
        rule_id: rule.id.clone(),
        accumulator_pool: rule.accumulator.clone(),
        act_pay_dedc: r.act_pay_dedc,
        hifp_pay: r.hifp_pay,
        critical_pay: r.critical_pay,
        critical_fund_pay_type: rule
            .critical
            .as_ref()
            .map(|c| c.fund_pay_type.clone())
            .unwrap_or_default(),
        cvlserv_pay: r.cvlserv_pay,
        maf_pay: r.maf_pay,
        fund_pay_sumamt: r.fund_pay_sumamt,
        psn_part_amt: r.psn_part_amt,
        acct_pay: r.acct_pay,
        psn_cash_pay: r.psn_cash_pay,
        balc: r.balc,
        accumulators: Py::new(py, r.acc)?,
        legs: legs
            .into_iter()
            .map(|l| Py::new(py, l))
            .collect::<PyResult<_>>()?,
    })
}

/// Output columns of `split_batch` before the `new_<accumulator>` ones, in order.
const SPLIT_OUT: [&str; 11] = [
    "rule",
    "act_pay_dedc",
    "hifp_pay",
    "critical_pay",
    "cvlserv_pay",
    "maf_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "balc",
];

/// Splits many settlements at once from columns; rows are independent (each carries its own
/// accumulators). Returns result columns plus `new_<accumulator>` columns.
#[pyfunction]
pub fn split_batch<'py>(
    py: Python<'py>,
    policy: &PyPolicy,
    columns: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let medfee = num_col::<i64>(&get_col(columns, "medfee_sumamt")?, "medfee_sumamt")?;
    let n = medfee.len();
    let int = |k: &str| sized_col_or(columns, k, n, 0i64);
    let flag = |k: &str| sized_col_or(columns, k, n, false);
    let (fulamt, overlmt, presp, inscp) = (
        int("fulamt_ownpay_amt")?,
        int("overlmt_amt")?,
        int("preselfpay_amt")?,
        int("inscp_scp_amt")?,
    );
    let (region, insutype, psn_type, treatment, hosp_lv, date, adm) = (
        int("region")?,
        int("insutype")?,
        int("psn_type")?,
        int("treatment")?,
        int("hosp_lv")?,
        int("date")?,
        int("admission_no")?,
    );
    let (age, cross, balance) = (int("age")?, int("cross_region")?, int("acct_balance")?);
    let (retired, cs, assist, acct_used) = (
        flag("retired")?,
        flag("civil_servant")?,
        flag("assistance")?,
        flag("acct_used")?,
    );
    let accs: Vec<Vec<i64>> = Accumulators::FIELDS
        .iter()
        .map(|k| int(k))
        .collect::<PyResult<_>>()?;
    let p = &policy.inner;
    let run = || -> Result<Vec<Vec<i64>>, EngineError> {
        let mut out: Vec<Vec<i64>> = (0..SPLIT_OUT.len() + Accumulators::LEN)
            .map(|_| Vec::with_capacity(n))
            .collect();
        let mut scratch = Vec::with_capacity(8);
        let out_of_range = |row: usize, f: &'static str| EngineError::input(row, f, "out of range");
        let u32_of = |row: usize, f: &'static str, v: i64| {
            u32::try_from(v).map_err(|_| out_of_range(row, f))
        };
        for i in 0..n {
            let sel = Selection {
                region: u32_of(i, "region", region[i])?,
                insutype: u32_of(i, "insutype", insutype[i])?,
                psn_type: u32_of(i, "psn_type", psn_type[i])?,
                treatment: u8::try_from(treatment[i]).map_err(|_| out_of_range(i, "treatment"))?,
                hosp_lv: u32_of(i, "hosp_lv", hosp_lv[i])?,
                date: i32::try_from(date[i]).map_err(|_| out_of_range(i, "date"))?,
                admission_no: u32_of(i, "admission_no", adm[i])?,
            };
            let person = Person {
                age: u32_of(i, "age", age[i])?,
                retired: retired[i],
                civil_servant: cs[i],
                cross_region: u8::try_from(cross[i])
                    .map_err(|_| out_of_range(i, "cross_region"))?,
                assistance: assist[i],
                acct_used: acct_used[i],
                acct_balance: balance[i],
            };
            let acc = Accumulators::from_values(std::array::from_fn(|k| accs[k][i]));
            let s = SplitInput {
                medfee_sumamt: medfee[i],
                fulamt_ownpay_amt: fulamt[i],
                overlmt_amt: overlmt[i],
                preselfpay_amt: presp[i],
                inscp_scp_amt: inscp[i],
            };
            let r = sp::split(i, p, &s, &sel, &person, &acc, &mut scratch, None)?;
            let vals = [
                i64::from(r.rule),
                r.act_pay_dedc,
                r.hifp_pay,
                r.critical_pay,
                r.cvlserv_pay,
                r.maf_pay,
                r.fund_pay_sumamt,
                r.psn_part_amt,
                r.acct_pay,
                r.psn_cash_pay,
                r.balc,
            ];
            for (col, v) in out.iter_mut().zip(vals.into_iter().chain(r.acc.values())) {
                col.push(v);
            }
        }
        Ok(out)
    };
    let cols = py.detach(|| guard("settle", "split_batch", run))??;
    let d = PyDict::new(py);
    let names = SPLIT_OUT
        .iter()
        .map(|s| s.to_string())
        .chain(Accumulators::FIELDS.iter().map(|f| format!("new_{f}")));
    for (name, col) in names.zip(cols) {
        d.set_item(name, PyArray1::from_vec(py, col))?;
    }
    Ok(d)
}

/// Each line's catalog code and its eight result integers (`ledger::LINE_RESULT_INTS`
/// order: class, category, amount, full self-pay, over cap, pre-self-pay, in scope, flags),
/// from the preprocessing results and the lines' amounts.
fn line_rows<'c>(
    py: Python<'_>,
    catalog: &'c PyCatalog,
    lines: &PyLineResults,
    n_sns: usize,
    amounts: &[i64],
) -> PyResult<(Vec<&'c str>, Vec<[i64; ledger::LINE_RESULT_INTS]>)> {
    let n = lines.len;
    if amounts.len() != n || n_sns != n {
        return Err(
            EngineError::column("det_item_fee_sumamt", "differs in length from the lines").into(),
        );
    }
    let item = lines.item.bind(py).readonly();
    let lv = lines.chrgitm_lv.bind(py).readonly();
    let cat = lines.fee_category.bind(py).readonly();
    let fulamt = lines.fulamt_ownpay_amt.bind(py).readonly();
    let overlmt = lines.overlmt_amt.bind(py).readonly();
    let presel = lines.preselfpay_amt.bind(py).readonly();
    let inscp = lines.inscp_scp_amt.bind(py).readonly();
    let flags = lines.flags.bind(py).readonly();
    let (item, lv, cat, fulamt, overlmt, presel, inscp, flags) = (
        item.as_array(),
        lv.as_array(),
        cat.as_array(),
        fulamt.as_array(),
        overlmt.as_array(),
        presel.as_array(),
        inscp.as_array(),
        flags.as_array(),
    );
    let codes = item.iter().map(|&i| catalog.code_or_empty(i)).collect();
    let ints = (0..n)
        .map(|k| {
            [
                i64::from(lv[k]),
                i64::from(cat[k]),
                amounts[k],
                fulamt[k],
                overlmt[k],
                presel[k],
                inscp[k],
                i64::from(flags[k]),
            ]
        })
        .collect();
    Ok((codes, ints))
}

fn contiguous<'a>(a: &'a PyReadonlyArray1<'_, i64>, key: &str) -> PyResult<&'a [i64]> {
    a.as_slice()
        .map_err(|_| EngineError::column(key, "must be a contiguous int64 array").into())
}

/// A settlement's line-results blob (`ledger::encode_line_results`) straight from the
/// preprocessing results: each line's catalog code, classes, amounts and flags, with its
/// feedetl_sn and its amount `det_item_fee_sumamt`.
#[pyfunction]
pub fn line_results_blob<'py>(
    py: Python<'py>,
    catalog: &PyCatalog,
    lines: &PyLineResults,
    feedetl_sn: Vec<String>,
    det_item_fee_sumamt: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let amounts = contiguous(&det_item_fee_sumamt, "det_item_fee_sumamt")?;
    let (codes, ints) = line_rows(py, catalog, lines, feedetl_sn.len(), amounts)?;
    let blob = ledger::encode_line_results(&feedetl_sn, &codes, &ints)
        .map_err(|reason| EngineError::column("feedetl_sn", &reason))?;
    Ok(PyBytes::new(py, &blob))
}

/// The `results` of an `UploadFeesResponse` (field 5, its last: appended to the serialised
/// rest of the response, the bytes are the whole message as protobuf would write it), one
/// `FeeLineResult` a line, from the preprocessing results.
#[pyfunction]
pub fn fee_line_results<'py>(
    py: Python<'py>,
    catalog: &PyCatalog,
    lines: &PyLineResults,
    feedetl_sn: Vec<String>,
    det_item_fee_sumamt: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let amounts = contiguous(&det_item_fee_sumamt, "det_item_fee_sumamt")?;
    let (codes, ints) = line_rows(py, catalog, lines, feedetl_sn.len(), amounts)?;
    let results: Vec<wire::FeeLineResult> = feedetl_sn
        .into_iter()
        .zip(codes)
        .zip(ints)
        .map(|((sn, code), [lv, cat, amt, ful, over, pre, inscp, fl])| {
            wire::FeeLineResult {
                feedetl_sn: sn,
                det_item_fee_sumamt: amt,
                fulamt_ownpay_amt: ful,
                overlmt_amt: over,
                preselfpay_amt: pre,
                inscp_scp_amt: inscp,
                // u8 and u16 columns widened above: they fit
                chrgitm_lv: lv as i32,
                med_chrgitm_type: cat as i32,
                med_list_codg: code.to_owned(),
                flags: fl as u32,
            }
        })
        .collect();
    let mut buf = Vec::new();
    prost::encoding::message::encode_repeated(UPLOAD_RESULTS_TAG, &results, &mut buf);
    Ok(PyBytes::new(py, &buf))
}

/// `UploadFeesResponse.results`.
const UPLOAD_RESULTS_TAG: u32 = 5;
