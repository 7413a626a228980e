//! Python bindings for the policy model, fee preprocessing and fund split.
//!
//! Single-settlement calls take small typed objects (`Visit`, `Selection`, `Person`,
//! `Accumulators`, `Summary`); batch calls take dicts of numpy columns (int64 for every
//! integer, bool for flags) and return dicts of numpy columns, with the GIL released.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::catalog::N_CATEGORIES;
use crate::columns::StrView;
use crate::policy::{Policy, Selection};
use crate::preprocess::{self as pre, Lines, VisitCtx};
use crate::python::{get_col, num_col, opt_col, str_col_or_empty, to_py, ColumnError, PyCatalog};
use crate::split::{self as sp, Accumulators, Person, SplitInput, Trace};

/// A validated policy version.
#[pyclass(name = "Policy", module = "engine_rs", frozen)]
pub struct PyPolicy {
    pub(crate) inner: Policy,
}

#[pymethods]
impl PyPolicy {
    /// Parses and validates a TOML policy; raises PolicyError naming the bad field's path.
    #[staticmethod]
    fn from_toml(py: Python<'_>, text: &str) -> PyResult<Self> {
        Policy::from_toml(text)
            .map(|inner| Self { inner })
            .map_err(|e| to_py(py, e))
    }

    /// Parses and validates a JSON policy (e.g. the canonical form from `to_json`).
    #[staticmethod]
    fn from_json(py: Python<'_>, text: &str) -> PyResult<Self> {
        Policy::from_json(text)
            .map(|inner| Self { inner })
            .map_err(|e| to_py(py, e))
    }

    /// The canonical JSON form with every default filled in.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    #[getter]
    fn id(&self) -> String {
        self.inner.doc.id.clone()
    }

    #[getter]
    fn version(&self) -> u32 {
        self.inner.doc.version
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.doc.name.clone()
    }

    #[getter]
    fn line_tolerance_fen(&self) -> i64 {
        self.inner.doc.preprocess.line_tolerance_fen
    }

    /// (max_medfee_fen, max_per_day) of the emergency plan, or None when the policy has none.
    #[getter]
    fn offline_limits(&self) -> Option<(i64, u32)> {
        self.inner
            .doc
            .offline
            .map(|o| (o.max_medfee_fen, o.max_per_day))
    }

    fn __len__(&self) -> usize {
        self.inner.doc.rules.len()
    }

    /// Index of the first rule matching `selection`, or None.
    fn select(&self, selection: &PySelection) -> Option<usize> {
        self.inner.select(&selection.core())
    }

    /// The id of rule `index`.
    fn rule_id(&self, index: usize) -> PyResult<String> {
        self.rule(index).map(|r| r.id.clone())
    }

    /// The accumulator pool rule `index` reads and advances.
    fn rule_accumulator(&self, index: usize) -> PyResult<String> {
        self.rule(index).map(|r| r.accumulator.clone())
    }
}

impl PyPolicy {
    fn rule(&self, index: usize) -> PyResult<&crate::policy::Rule> {
        self.inner
            .doc
            .rules
            .get(index)
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("rule index out of range"))
    }
}

/// What preprocessing needs to know about a visit.
#[pyclass(name = "Visit", module = "engine_rs", frozen, get_all)]
pub struct PyVisit {
    treatment: u8,
    date: i32,
    psn_type: u32,
    sex: u8,
    age: u32,
    diagnoses: Vec<String>,
}

#[pymethods]
impl PyVisit {
    #[new]
    #[pyo3(signature = (*, treatment, date, psn_type=0, sex=0, age=0, diagnoses=Vec::new()))]
    fn new(
        treatment: u8,
        date: i32,
        psn_type: u32,
        sex: u8,
        age: u32,
        diagnoses: Vec<String>,
    ) -> Self {
        // trimmed like the comma-separated diagnoses of batch visits
        let diagnoses = diagnoses.iter().map(|d| d.trim().to_owned()).collect();
        Self {
            treatment,
            date,
            psn_type,
            sex,
            age,
            diagnoses,
        }
    }
}

impl PyVisit {
    fn core(&self) -> VisitCtx {
        let Self {
            treatment,
            date,
            psn_type,
            sex,
            age,
            ref diagnoses,
        } = *self;
        VisitCtx {
            treatment,
            psn_type,
            sex,
            age,
            date,
            diagnoses: diagnoses.clone(),
        }
    }
}

/// What selects the policy rule of a settlement.
#[pyclass(name = "Selection", module = "engine_rs", frozen, get_all)]
pub struct PySelection {
    treatment: u8,
    date: i32,
    region: u32,
    insutype: u32,
    psn_type: u32,
    hosp_lv: u32,
    admission_no: u32,
}

#[pymethods]
impl PySelection {
    #[new]
    #[pyo3(signature = (*, treatment, date, region=0, insutype=0, psn_type=0, hosp_lv=0, admission_no=0))]
    fn new(
        treatment: u8,
        date: i32,
        region: u32,
        insutype: u32,
        psn_type: u32,
        hosp_lv: u32,
        admission_no: u32,
    ) -> Self {
        Self {
            treatment,
            date,
            region,
            insutype,
            psn_type,
            hosp_lv,
            admission_no,
        }
    }
}

impl PySelection {
    pub(crate) fn core(&self) -> Selection {
        let Self {
            treatment,
            date,
            region,
            insutype,
            psn_type,
            hosp_lv,
            admission_no,
        } = *self;
        Selection {
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

/// The person facts a split depends on.
#[pyclass(name = "Person", module = "engine_rs", frozen, get_all)]
pub struct PyPerson {
    age: u32,
    retired: bool,
    civil_servant: bool,
    cross_region: u8,
    assistance: bool,
    acct_used: bool,
    acct_balance: i64,
}

#[pymethods]
impl PyPerson {
    #[new]
    #[pyo3(signature = (*, age=0, retired=false, civil_servant=false, cross_region=0, assistance=false, acct_used=false, acct_balance=0))]
    fn new(
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

impl PyPerson {
    fn core(&self) -> Person {
        let Self {
            age,
            retired,
            civil_servant,
            cross_region,
            assistance,
            acct_used,
            acct_balance,
        } = *self;
        Person {
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

/// A person's yearly accumulators for one pool.
#[pyclass(name = "Accumulators", module = "engine_rs", frozen, eq, get_all)]
#[derive(PartialEq)]
pub struct PyAccumulators {
    inpatient_count: i64,
    dedc_paid: i64,
    hifp_paid: i64,
    hifp_base: i64,
    critical_base: i64,
    critical_paid: i64,
    cvlserv_paid: i64,
    maf_paid: i64,
}

#[pymethods]
impl PyAccumulators {
    #[new]
    #[pyo3(signature = (*, inpatient_count=0, dedc_paid=0, hifp_paid=0, hifp_base=0, critical_base=0, critical_paid=0, cvlserv_paid=0, maf_paid=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        inpatient_count: i64,
        dedc_paid: i64,
        hifp_paid: i64,
        hifp_base: i64,
        critical_base: i64,
        critical_paid: i64,
        cvlserv_paid: i64,
        maf_paid: i64,
    ) -> Self {
        Self {
            inpatient_count,
            dedc_paid,
            hifp_paid,
            hifp_base,
            critical_base,
            critical_paid,
            cvlserv_paid,
            maf_paid,
        }
    }
    /// The accumulators as a dict keyed by field name.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in Accumulators::FIELDS.iter().zip(self.core().values()) {
            d.set_item(*k, v)?;
        }
        Ok(d)
    }
    fn __repr__(&self) -> String {
        format!("{:?}", self.core())
    }
}

impl PyAccumulators {
    pub(crate) fn core(&self) -> Accumulators {
        let &Self {
            inpatient_count,
            dedc_paid,
            hifp_paid,
            hifp_base,
            critical_base,
            critical_paid,
            cvlserv_paid,
            maf_paid,
        } = self;
        Accumulators {
            inpatient_count,
            dedc_paid,
            hifp_paid,
            hifp_base,
            critical_base,
            critical_paid,
            cvlserv_paid,
            maf_paid,
        }
    }

    fn from_core(a: Accumulators) -> Self {
        let Accumulators {
            inpatient_count,
            dedc_paid,
            hifp_paid,
            hifp_base,
            critical_base,
            critical_paid,
            cvlserv_paid,
            maf_paid,
        } = a;
        Self {
            inpatient_count,
            dedc_paid,
            hifp_paid,
            hifp_base,
            critical_base,
            critical_paid,
            cvlserv_paid,
            maf_paid,
        }
    }
}

/// The preprocessing sums of one visit (what center mode sends to the center).
#[pyclass(name = "Summary", module = "engine_rs", frozen, get_all)]
pub struct PySummary {
    medfee_sumamt: i64,
    fulamt_ownpay_amt: i64,
    overlmt_amt: i64,
    preselfpay_amt: i64,
    inscp_scp_amt: i64,
    line_count: i64,
    /// `[category][total, fulamt, overlmt, preselfpay, inscp]`, category 0 = no item.
    by_category: Vec<Vec<i64>>,
}

#[pymethods]
impl PySummary {
    #[new]
    #[pyo3(signature = (*, medfee_sumamt, fulamt_ownpay_amt=0, overlmt_amt=0, preselfpay_amt=0, inscp_scp_amt=0, line_count=0))]
    fn new(
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
            by_category: vec![vec![0; 5]; N_CATEGORIES],
        }
    }
}

impl PySummary {
    fn from_core(s: &pre::Summary) -> Self {
        Self {
            medfee_sumamt: s.medfee_sumamt,
            fulamt_ownpay_amt: s.fulamt_ownpay_amt,
            overlmt_amt: s.overlmt_amt,
            preselfpay_amt: s.preselfpay_amt,
            inscp_scp_amt: s.inscp_scp_amt,
            line_count: s.line_count,
            by_category: s.by_category.iter().map(|r| r.to_vec()).collect(),
        }
    }
}

/// Per-line preprocessing results as numpy columns.
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
        Self {
            len: r.item.len(),
            item: PyArray1::from_vec(py, r.item).unbind(),
            chrgitm_lv: PyArray1::from_vec(py, r.chrgitm_lv).unbind(),
            fee_category: PyArray1::from_vec(py, r.fee_category).unbind(),
            fulamt_ownpay_amt: PyArray1::from_vec(py, r.fulamt_ownpay_amt).unbind(),
            overlmt_amt: PyArray1::from_vec(py, r.overlmt_amt).unbind(),
            preselfpay_amt: PyArray1::from_vec(py, r.preselfpay_amt).unbind(),
            inscp_scp_amt: PyArray1::from_vec(py, r.inscp_scp_amt).unbind(),
            flags: PyArray1::from_vec(py, r.flags).unbind(),
        }
    }
}

/// One fund leg with its derivation.
#[pyclass(name = "FundLeg", module = "engine_rs", frozen, get_all)]
pub struct PyFundLeg {
    fund_pay_type: String,
    base: i64,
    amount: i64,
    setl_proc_info: String,
}

/// The outcome of one fund split.
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
    accumulators: Py<PyAccumulators>,
    legs: Vec<Py<PyFundLeg>>,
}

/// Fee-line columns borrowed from numpy for the length of one call (no copies: a batch can
/// hold millions of lines). Callers must not write to these arrays while the call runs.
struct LineCols<'py> {
    hosp: (PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, i64>),
    ins: Option<(PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, i64>)>,
    cnt: PyReadonlyArray1<'py, i64>,
    pric: PyReadonlyArray1<'py, i64>,
    amount: PyReadonlyArray1<'py, i64>,
    appr: Option<PyReadonlyArray1<'py, i64>>,
    fee_date: Option<PyReadonlyArray1<'py, i64>>,
    visit: Option<PyReadonlyArray1<'py, i64>>,
}

fn borrow_i64<'py>(v: &Bound<'py, PyAny>, key: &str) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let a: PyReadonlyArray1<'py, i64> = v.extract().map_err(|_| {
        ColumnError::new_err(format!("column {key}: expected a 1-d numpy array of int64"))
    })?;
    if a.as_slice().is_err() {
        return Err(ColumnError::new_err(format!(
            "column {key}: array must be contiguous"
        )));
    }
    Ok(a)
}

fn borrow_str<'py>(
    v: &Bound<'py, PyAny>,
    key: &str,
) -> PyResult<(PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, i64>)> {
    let bad = || {
        ColumnError::new_err(format!(
            "column {key}: expected (uint8 data, int64 offsets)"
        ))
    };
    let t = v.cast::<pyo3::types::PyTuple>().map_err(|_| bad())?;
    if t.len() != 2 {
        return Err(bad());
    }
    let data: PyReadonlyArray1<'py, u8> = t.get_item(0)?.extract().map_err(|_| bad())?;
    let offs: PyReadonlyArray1<'py, i64> = t.get_item(1)?.extract().map_err(|_| bad())?;
    if data.as_slice().is_err() || offs.as_slice().is_err() {
        return Err(bad());
    }
    Ok((data, offs))
}

fn opt_i64<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<PyReadonlyArray1<'py, i64>>> {
    opt_col(d, key)?.map(|v| borrow_i64(&v, key)).transpose()
}

fn line_cols<'py>(d: &Bound<'py, PyDict>, batch: bool) -> PyResult<LineCols<'py>> {
    Ok(LineCols {
        hosp: borrow_str(&get_col(d, "medins_list_codg")?, "medins_list_codg")?,
        ins: opt_col(d, "med_list_codg")?
            .map(|v| borrow_str(&v, "med_list_codg"))
            .transpose()?,
        cnt: borrow_i64(&get_col(d, "cnt")?, "cnt")?,
        pric: borrow_i64(&get_col(d, "pric")?, "pric")?,
        amount: borrow_i64(&get_col(d, "det_item_fee_sumamt")?, "det_item_fee_sumamt")?,
        appr: opt_i64(d, "hosp_appr_flag")?,
        fee_date: opt_i64(d, "fee_date")?,
        visit: if batch {
            Some(borrow_i64(&get_col(d, "visit")?, "visit")?)
        } else {
            None
        },
    })
}

/// An optional int64 column of `n` rows (absent = zeros); a wrong length is a ColumnError.
fn int_col_or_zero(d: &Bound<'_, PyDict>, key: &str, n: usize) -> PyResult<Vec<i64>> {
    match opt_col(d, key)? {
        Some(v) => sized(num_col::<i64>(&v, key)?, key, n),
        None => Ok(vec![0; n]),
    }
}

/// `col` if it has `n` rows, else a ColumnError naming it.
fn sized<T>(col: Vec<T>, key: &str, n: usize) -> PyResult<Vec<T>> {
    if col.len() == n {
        Ok(col)
    } else {
        Err(ColumnError::new_err(format!(
            "column {key}: has {} rows, expected {n}",
            col.len()
        )))
    }
}

fn bool_col_or_false(d: &Bound<'_, PyDict>, key: &str, n: usize) -> PyResult<Vec<bool>> {
    match opt_col(d, key)? {
        Some(v) => sized(num_col::<bool>(&v, key)?, key, n),
        None => Ok(vec![false; n]),
    }
}

fn run_preprocess(
    py: Python<'_>,
    catalog: &PyCatalog,
    policy: &PyPolicy,
    cols: &LineCols<'_>,
    visits: &[VisitCtx],
) -> PyResult<(pre::LineResults, pre::Summaries)> {
    let cat = catalog.inner.clone();
    let doc = &policy.inner.doc;
    let (tol, mode) = (doc.preprocess.line_tolerance_fen, doc.rounding.mode);
    // Every slice below was checked contiguous when borrowed.
    let hosp = StrView::new(
        "medins_list_codg",
        cols.hosp.0.as_slice()?,
        cols.hosp.1.as_slice()?,
    )
    .map_err(|e| to_py(py, e))?;
    let ins = match &cols.ins {
        Some((d, o)) => Some(
            StrView::new("med_list_codg", d.as_slice()?, o.as_slice()?)
                .map_err(|e| to_py(py, e))?,
        ),
        None => None,
    };
    let n = hosp.len();
    let zeros;
    let (appr, fee_date) = match (&cols.appr, &cols.fee_date) {
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
        cnt: cols.cnt.as_slice()?,
        pric: cols.pric.as_slice()?,
        det_item_fee_sumamt: cols.amount.as_slice()?,
        hosp_appr_flag: appr,
        fee_date,
        visit: cols.visit.as_ref().map_or(Ok(&[][..]), |v| v.as_slice())?,
    };
    py.detach(|| pre::preprocess(&cat, &lines, visits, tol, mode))
        .map_err(|e| to_py(py, e))
}

/// Preprocesses the fee lines of one visit.
#[pyfunction]
pub fn preprocess(
    py: Python<'_>,
    catalog: &PyCatalog,
    policy: &PyPolicy,
    lines: &Bound<'_, PyDict>,
    visit: &PyVisit,
) -> PyResult<(PyLineResults, PySummary)> {
    let cols = line_cols(lines, false)?;
    let (r, sums) = run_preprocess(
        py,
        catalog,
        policy,
        &cols,
        std::slice::from_ref(&visit.core()),
    )?;
    Ok((
        PyLineResults::new(py, r),
        PySummary::from_core(&sums.get(0)),
    ))
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
    let cols = line_cols(lines, true)?;
    let treatment = num_col::<i64>(&get_col(visits, "treatment")?, "treatment")?;
    let n = treatment.len();
    let date = num_col::<i64>(&get_col(visits, "date")?, "date")?;
    let psn_type = int_col_or_zero(visits, "psn_type", n)?;
    let sex = int_col_or_zero(visits, "sex", n)?;
    let age = int_col_or_zero(visits, "age", n)?;
    let diagnoses = str_col_or_empty(visits, "diagnoses", n)?;
    for (k, len) in [("date", date.len()), ("diagnoses", diagnoses.len())] {
        if len != n {
            return Err(ColumnError::new_err(format!(
                "column {k}: has {len} rows, treatment has {n}"
            )));
        }
    }
    let mut ctx = Vec::with_capacity(n);
    for i in 0..n {
        let small = |v: i64, f: &str, max: i64| -> PyResult<i64> {
            let min = i64::from(f == "treatment"); // treatments are 1, 2, 3
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(ColumnError::new_err(format!(
                    "column {f}: row {i}: {v} out of range"
                )))
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
    let (r, sums) = run_preprocess(py, catalog, policy, &cols, &ctx)?;
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

fn split_input(s: &PySummary) -> SplitInput {
    SplitInput {
        medfee_sumamt: s.medfee_sumamt,
        fulamt_ownpay_amt: s.fulamt_ownpay_amt,
        overlmt_amt: s.overlmt_amt,
        preselfpay_amt: s.preselfpay_amt,
        inscp_scp_amt: s.inscp_scp_amt,
    }
}

/// Splits one settlement, with every fund leg and its derivation.
#[pyfunction]
pub fn split(
    py: Python<'_>,
    policy: &PyPolicy,
    summary: &PySummary,
    selection: &PySelection,
    person: &PyPerson,
    accumulators: &PyAccumulators,
) -> PyResult<PySplitResult> {
    let p = &policy.inner;
    let mut trace = Trace::default();
    let mut scratch = Vec::new();
    let r = sp::split(
        0,
        p,
        &split_input(summary),
        &selection.core(),
        &person.core(),
        &accumulators.core(),
        &mut scratch,
        Some(&mut trace),
    )
    .map_err(|e| to_py(py, e))?;
    let rule = p.rule(r.rule as usize);
    let legs = sp::legs(p, &r, &trace, &selection.core())
        .into_iter()
        .map(|l| {
            Py::new(
                py,
                PyFundLeg {
                    fund_pay_type: l.fund_pay_type,
                    base: l.base,
                    amount: l.amount,
                    setl_proc_info: l.setl_proc_info,
                },
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
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
        accumulators: Py::new(py, PyAccumulators::from_core(r.acc))?,
        legs,
    })
}

/// Output columns of `split_batch`, in order.
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
    let int = |k: &str| int_col_or_zero(columns, k, n);
    let flag = |k: &str| bool_col_or_false(columns, k, n);
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
    let result = py.detach(|| -> Result<Vec<Vec<i64>>, crate::error::EngineError> {
        let mut out: Vec<Vec<i64>> = (0..SPLIT_OUT.len() + 8)
            .map(|_| Vec::with_capacity(n))
            .collect();
        let mut scratch = Vec::with_capacity(8);
        let u32_of = |row: usize, f: &'static str, v: i64| {
            u32::try_from(v).map_err(|_| crate::error::EngineError::input(row, f, "out of range"))
        };
        for i in 0..n {
            let sel = Selection {
                region: u32_of(i, "region", region[i])?,
                insutype: u32_of(i, "insutype", insutype[i])?,
                psn_type: u32_of(i, "psn_type", psn_type[i])?,
                treatment: u8::try_from(treatment[i]).map_err(|_| {
                    crate::error::EngineError::input(i, "treatment", "out of range")
                })?,
                hosp_lv: u32_of(i, "hosp_lv", hosp_lv[i])?,
                date: i32::try_from(date[i])
                    .map_err(|_| crate::error::EngineError::input(i, "date", "out of range"))?,
                admission_no: u32_of(i, "admission_no", adm[i])?,
            };
            let person = Person {
                age: u32_of(i, "age", age[i])?,
                retired: retired[i],
                civil_servant: cs[i],
                cross_region: u8::try_from(cross[i]).map_err(|_| {
                    crate::error::EngineError::input(i, "cross_region", "out of range")
                })?,
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
    });
    let cols = result.map_err(|e| to_py(py, e))?;
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

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPolicy>()?;
    m.add_class::<PyVisit>()?;
    m.add_class::<PySelection>()?;
    m.add_class::<PyPerson>()?;
    m.add_class::<PyAccumulators>()?;
    m.add_class::<PySummary>()?;
    m.add_class::<PyLineResults>()?;
    m.add_class::<PyFundLeg>()?;
    m.add_class::<PySplitResult>()?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_batch, m)?)?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(split_batch, m)?)?;
    Ok(())
}
