//! Python bindings (`import engine_rs`): thin conversions between numpy columns and the core.
//!
//! Bulk inputs arrive as numpy arrays and Arrow-style string columns `(uint8 data, int64
//! offsets)`; batch work runs with the GIL released. Every core error becomes a typed
//! exception carrying the field (and line or row) it is about; the core never panics on
//! input, and a panic would surface as `pyo3_runtime.PanicException`, not a crash.

use std::sync::Arc;

use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::catalog::{Catalog, CatalogSlot, ItemColumns};
use crate::columns::StrColumn;
use crate::error::EngineError as CoreError;

create_exception!(
    engine_rs,
    EngineError,
    PyValueError,
    "Bad input to the engine."
);
create_exception!(
    engine_rs,
    ColumnError,
    EngineError,
    "A bulk column is malformed."
);
create_exception!(engine_rs, LineError, EngineError, "A fee line is invalid.");
create_exception!(
    engine_rs,
    InputError,
    EngineError,
    "A visit, person or accumulator input is invalid."
);
create_exception!(
    engine_rs,
    PolicyError,
    EngineError,
    "A policy document is invalid."
);
create_exception!(
    engine_rs,
    NoRuleError,
    EngineError,
    "No policy rule matches the selection."
);

/// Converts a core error into the matching Python exception, with attributes set.
pub(crate) fn to_py(py: Python<'_>, e: CoreError) -> PyErr {
    let msg = e.to_string();
    let (err, attrs): (PyErr, Vec<(&str, Py<PyAny>)>) = match e {
        CoreError::Column { field, reason } => (
            ColumnError::new_err(msg),
            vec![
                (
                    "field",
                    field.into_pyobject(py).unwrap().into_any().unbind(),
                ),
                (
                    "reason",
                    reason.into_pyobject(py).unwrap().into_any().unbind(),
                ),
            ],
        ),
        CoreError::Line {
            line,
            field,
            reason,
        } => (
            LineError::new_err(msg),
            vec![
                ("line", line.into_pyobject(py).unwrap().into_any().unbind()),
                (
                    "field",
                    field.into_pyobject(py).unwrap().into_any().unbind(),
                ),
                (
                    "reason",
                    reason.into_pyobject(py).unwrap().into_any().unbind(),
                ),
            ],
        ),
        CoreError::Input { row, field, reason } => (
            InputError::new_err(msg),
            vec![
                ("row", row.into_pyobject(py).unwrap().into_any().unbind()),
                (
                    "field",
                    field.into_pyobject(py).unwrap().into_any().unbind(),
                ),
                (
                    "reason",
                    reason.into_pyobject(py).unwrap().into_any().unbind(),
                ),
            ],
        ),
        CoreError::Policy { path, reason } => (
            PolicyError::new_err(msg),
            vec![
                ("path", path.into_pyobject(py).unwrap().into_any().unbind()),
                (
                    "reason",
                    reason.into_pyobject(py).unwrap().into_any().unbind(),
                ),
            ],
        ),
        CoreError::NoRule { row, selection } => (
            NoRuleError::new_err(msg),
            vec![
                ("row", row.into_pyobject(py).unwrap().into_any().unbind()),
                (
                    "selection",
                    selection.into_pyobject(py).unwrap().into_any().unbind(),
                ),
            ],
        ),
    };
    let value = err.value(py);
    for (k, v) in attrs {
        // Setting attributes on a fresh exception instance cannot fail in practice.
        let _ = value.setattr(k, v);
    }
    err
}

/// A required entry of a column dict.
pub(crate) fn get_col<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?
        .ok_or_else(|| ColumnError::new_err(format!("column {key}: missing")))
}

/// An optional entry of a column dict.
pub(crate) fn opt_col<'py>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    d.get_item(key)
}

/// A numeric column as an owned Vec, with a field-naming error on a wrong dtype or layout.
pub(crate) fn num_col<T: numpy::Element + Copy>(
    v: &Bound<'_, PyAny>,
    key: &str,
) -> PyResult<Vec<T>> {
    let arr: PyReadonlyArray1<'_, T> = v.extract().map_err(|_| {
        ColumnError::new_err(format!(
            "column {key}: expected a 1-d numpy array of {}",
            std::any::type_name::<T>()
        ))
    })?;
    let slice = arr
        .as_slice()
        .map_err(|_| ColumnError::new_err(format!("column {key}: array must be contiguous")))?;
    Ok(slice.to_vec())
}

/// A string column from a `(uint8 data, int64 offsets)` pair.
pub(crate) fn str_col(v: &Bound<'_, PyAny>, key: &str) -> PyResult<StrColumn> {
    let bad = || {
        ColumnError::new_err(format!(
            "column {key}: expected (uint8 data, int64 offsets)"
        ))
    };
    let t = v.cast::<PyTuple>().map_err(|_| bad())?;
    if t.len() != 2 {
        return Err(bad());
    }
    let data: PyReadonlyArray1<'_, u8> = t.get_item(0)?.extract().map_err(|_| bad())?;
    let offs: PyReadonlyArray1<'_, i64> = t.get_item(1)?.extract().map_err(|_| bad())?;
    let data = data.as_slice().map_err(|_| bad())?;
    let offs = offs.as_slice().map_err(|_| bad())?;
    StrColumn::from_parts(key, data, offs).map_err(|e| to_py(v.py(), e))
}

/// An optional string column: absent means n empty strings.
pub(crate) fn str_col_or_empty(d: &Bound<'_, PyDict>, key: &str, n: usize) -> PyResult<StrColumn> {
    match opt_col(d, key)? {
        Some(v) => str_col(&v, key),
        None => Ok(StrColumn::from_strs(&vec![""; n])),
    }
}

fn num_col_or<T: numpy::Element + Copy>(
    d: &Bound<'_, PyDict>,
    key: &str,
    n: usize,
    default: T,
) -> PyResult<Vec<T>> {
    match opt_col(d, key)? {
        Some(v) => num_col(&v, key),
        None => Ok(vec![default; n]),
    }
}

/// Returns memory the allocator holds but no longer uses to the system. A catalog build
/// frees hundreds of megabytes of copies at once; mimalloc would otherwise keep those pages
/// resident (it keeps freed pages for reuse, which is what batch calls want).
fn release_free_memory() {
    // SAFETY: mi_collect only walks and releases the allocator's own free pages; it takes no
    // pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// One catalog version and its mappings, immutable once loaded.
#[pyclass(name = "Catalog", module = "engine_rs", frozen)]
pub struct PyCatalog {
    pub(crate) inner: Arc<Catalog>,
}

#[pymethods]
impl PyCatalog {
    /// Loads a catalog from columns (see server/columns.py for the layout).
    #[staticmethod]
    #[pyo3(signature = (items, mappings=None, *, version=0, selfpay_psn_types=Vec::new()))]
    fn load(
        py: Python<'_>,
        items: &Bound<'_, PyDict>,
        mappings: Option<&Bound<'_, PyDict>>,
        version: i64,
        selfpay_psn_types: Vec<u32>,
    ) -> PyResult<Self> {
        let code = str_col(&get_col(items, "code")?, "code")?;
        let n = code.len();
        let slots = selfpay_psn_types.len() + 1;
        let selfpay_prop_bp = match opt_col(items, "selfpay_prop_bp")? {
            None => vec![0i32; n * slots],
            Some(v) => {
                if let Ok(a) = v.extract::<PyReadonlyArray2<'_, i32>>() {
                    let shape = a.shape();
                    if shape[1] != slots {
                        return Err(ColumnError::new_err(format!(
                            "column selfpay_prop_bp: needs {slots} columns, has {}",
                            shape[1]
                        )));
                    }
                    a.as_slice()
                        .map_err(|_| {
                            ColumnError::new_err("column selfpay_prop_bp: must be C-contiguous")
                        })?
                        .to_vec()
                } else if slots == 1 {
                    num_col::<i32>(&v, "selfpay_prop_bp")?
                } else {
                    return Err(ColumnError::new_err(
                        "column selfpay_prop_bp: expected a 2-d int32 array",
                    ));
                }
            }
        };
        let cols = ItemColumns {
            name: str_col_or_empty(items, "name", n)?,
            spec: str_col_or_empty(items, "spec", n)?,
            dosage_form: str_col_or_empty(items, "dosage_form", n)?,
            manufacturer: str_col_or_empty(items, "manufacturer", n)?,
            kind: num_col_or(items, "kind", n, 1u8)?,
            chrgitm_lv: num_col(&get_col(items, "chrgitm_lv")?, "chrgitm_lv")?,
            fee_category: num_col(&get_col(items, "fee_category")?, "fee_category")?,
            price_cap: num_col_or(items, "price_cap", n, 0i64)?,
            selfpay_prop_bp,
            selfpay_slots: slots,
            inpatient_only: num_col_or(items, "inpatient_only", n, false)?,
            sex: num_col_or(items, "sex", n, 0u8)?,
            age_min: num_col_or(items, "age_min", n, 0u8)?,
            age_max: num_col_or(items, "age_max", n, 255u8)?,
            diagnoses: str_col_or_empty(items, "diagnoses", n)?,
            valid_from: num_col_or(items, "valid_from", n, 0i32)?,
            valid_to: num_col_or(items, "valid_to", n, 0i32)?,
            code,
        };
        let (hosp, ins) = match mappings {
            Some(m) => (
                str_col(&get_col(m, "hosp_code")?, "hosp_code")?,
                str_col(&get_col(m, "ins_code")?, "ins_code")?,
            ),
            None => (StrColumn::default(), StrColumn::default()),
        };
        let built = py.detach(|| {
            let built = Catalog::build(version, cols, selfpay_psn_types, hosp, ins);
            release_free_memory();
            built
        });
        Ok(Self {
            inner: Arc::new(built.map_err(|e| to_py(py, e))?),
        })
    }

    #[getter]
    fn version(&self) -> i64 {
        self.inner.version
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn mapping_count(&self) -> usize {
        self.inner.mapping_count()
    }

    #[getter]
    fn stale_mappings(&self) -> usize {
        self.inner.stale_mappings()
    }

    #[getter]
    fn heap_bytes(&self) -> usize {
        self.inner.heap_bytes()
    }

    /// Index of an insurance code, or None.
    fn lookup(&self, code: &str) -> Option<usize> {
        let i = self.inner.lookup(code);
        (i != crate::catalog::NO_ITEM).then_some(i as usize)
    }

    /// Index of the item a hospital code maps to, or None.
    fn map_hosp_code(&self, hosp_code: &str) -> Option<usize> {
        let i = self.inner.map_hosp_code(hosp_code);
        (i != crate::catalog::NO_ITEM).then_some(i as usize)
    }

    /// The item at `index` as a dict (for display and tests).
    fn item<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner;
        if index >= c.len() {
            return Err(pyo3::exceptions::PyIndexError::new_err(
                "item index out of range",
            ));
        }
        let it = c.hot(index);
        let d = PyDict::new(py);
        d.set_item("code", c.code(index))?;
        d.set_item("name", c.name(index))?;
        d.set_item("spec", c.spec(index))?;
        d.set_item("dosage_form", c.dosage_form(index))?;
        d.set_item("manufacturer", c.manufacturer(index))?;
        d.set_item("kind", c.kind(index))?;
        d.set_item("chrgitm_lv", it.chrgitm_lv)?;
        d.set_item("fee_category", it.fee_category)?;
        d.set_item("price_cap", it.price_cap)?;
        d.set_item(
            "selfpay_prop_bp",
            it.selfpay_bp[..c.selfpay_slots()].to_vec(),
        )?;
        d.set_item("inpatient_only", it.inpatient_only)?;
        d.set_item("sex", it.sex)?;
        d.set_item("age_min", it.age_min)?;
        d.set_item("age_max", it.age_max)?;
        d.set_item("diagnoses", c.diagnoses(index))?;
        d.set_item("valid_from", it.valid_from)?;
        d.set_item("valid_to", it.valid_to)?;
        Ok(d)
    }

    /// Codes of many item indices at once (-1 gives "").
    fn codes<'py>(&self, indices: PyReadonlyArray1<'py, i64>) -> PyResult<Vec<String>> {
        let idx = indices
            .as_slice()
            .map_err(|_| ColumnError::new_err("indices must be contiguous"))?;
        Ok(idx
            .iter()
            .map(|&i| {
                if i >= 0 && (i as usize) < self.inner.len() {
                    self.inner.code(i as usize).to_owned()
                } else {
                    String::new()
                }
            })
            .collect())
    }
}

/// The catalog in use, swappable as a whole while calls are in flight.
#[pyclass(name = "CatalogSlot", module = "engine_rs", frozen)]
pub struct PyCatalogSlot {
    slot: CatalogSlot,
}

#[pymethods]
impl PyCatalogSlot {
    #[new]
    fn new(catalog: &PyCatalog) -> Self {
        Self {
            slot: CatalogSlot::new(catalog.inner.clone()),
        }
    }

    /// The current catalog; a caller keeps this snapshot for the whole of its call.
    fn current(&self) -> PyCatalog {
        PyCatalog {
            inner: self.slot.load(),
        }
    }

    /// Installs `catalog` and returns the version it replaced.
    fn swap(&self, catalog: &PyCatalog) -> PyCatalog {
        PyCatalog {
            inner: self.slot.swap(catalog.inner.clone()),
        }
    }
}

#[pymodule]
fn engine_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("ColumnError", py.get_type::<ColumnError>())?;
    m.add("LineError", py.get_type::<LineError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("NoRuleError", py.get_type::<NoRuleError>())?;
    m.add_class::<PyCatalog>()?;
    m.add_class::<PyCatalogSlot>()?;
    crate::py_settle::register(m)?;
    crate::py_matching::register(m)?;
    crate::py_gm::register(m)?;
    Ok(())
}

/// An owned int64 column handed to numpy without a copy.
pub(crate) fn i64_array(py: Python<'_>, v: Vec<i64>) -> Bound<'_, numpy::PyArray1<i64>> {
    numpy::PyArray1::from_vec(py, v)
}
