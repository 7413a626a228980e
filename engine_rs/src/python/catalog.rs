//! `engine_rs.Catalog` and `engine_rs.CatalogSlot`: one catalog version, and the version
//! in use.

use std::sync::Arc;

use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{
    column_error, get_col, num_col, num_col_or, opt_col, str_col, str_col_or_empty,
};
use super::error::{guard, ColumnError};
use crate::catalog::{Catalog, CatalogSlot, ItemColumns, NO_ITEM};
use crate::columns::StrColumn;

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
    /// Loads a catalog from columns (the layout is `CatalogItems` in engine_rs.pyi).
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
                        return Err(column_error(
                            "selfpay_prop_bp",
                            format!("needs {slots} columns, has {}", shape[1]),
                        ));
                    }
                    a.as_slice()
                        .map_err(|_| column_error("selfpay_prop_bp", "must be C-contiguous"))?
                        .to_vec()
                } else if slots == 1 {
                    num_col::<i32>(&v, "selfpay_prop_bp")?
                } else {
                    return Err(column_error(
                        "selfpay_prop_bp",
                        "expected a 2-d int32 array",
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
            guard("catalog", "load", || {
                let built = Catalog::build(version, cols, selfpay_psn_types, hosp, ins);
                release_free_memory();
                built
            })
        })??;
        Ok(Self {
            inner: Arc::new(built),
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
    fn lookup(&self, code: &str) -> PyResult<Option<usize>> {
        let i = guard("catalog", "lookup", || self.inner.lookup(code))?;
        Ok((i != NO_ITEM).then_some(i as usize))
    }

    /// Index of the item a hospital code maps to, or None.
    fn map_hosp_code(&self, hosp_code: &str) -> PyResult<Option<usize>> {
        let i = guard("catalog", "map_hosp_code", || {
            self.inner.map_hosp_code(hosp_code)
        })?;
        Ok((i != NO_ITEM).then_some(i as usize))
    }

    /// The item at `index` as a dict (for display and tests).
    fn item<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner;
        if index >= c.len() {
            return Err(PyIndexError::new_err("item index out of range"));
        }
        guard("catalog", "item", || {
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
        })?
    }

    /// Codes of many item indices at once (-1 gives "").
    fn codes<'py>(&self, indices: PyReadonlyArray1<'py, i64>) -> PyResult<Vec<String>> {
        // not a dict column: the message names no field (kept as it always was)
        let idx = indices
            .as_slice()
            .map_err(|_| ColumnError::new_err("indices must be contiguous"))?;
        guard("catalog", "codes", || {
            idx.iter()
                .map(|&i| self.code_or_empty(i).to_owned())
                .collect()
        })
    }
}

impl PyCatalog {
    /// The code of item index `i` (the preprocessing's `item`), "" for -1 (unmapped) or an
    /// index outside the catalog.
    pub(crate) fn code_or_empty(&self, i: i64) -> &str {
        match usize::try_from(i) {
            Ok(i) if i < self.inner.len() => self.inner.code(i),
            _ => "",
        }
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
