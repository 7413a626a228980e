//! `engine_rs.Matcher(catalog)`: catalog matching (目录对照 candidates).
//!
//! Index build and batch matching run with the GIL released. Query buffers are pooled so
//! concurrent Python threads each get their own.

use std::sync::{Arc, Mutex};

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::catalog::PyCatalog;
use super::convert::{column_error, str_col};
use super::error::guard;
use crate::matching::{Hit, Matcher, Query, Scratch, MAX_K};

/// Catalog matching (目录对照 candidates) over one catalog version.
#[pyclass(name = "Matcher", module = "engine_rs", frozen)]
pub struct PyMatcher {
    inner: Arc<Matcher>,
    scratch: Mutex<Vec<Scratch>>,
}

fn check_k(k: i64) -> PyResult<usize> {
    usize::try_from(k)
        .ok()
        .filter(|&k| k <= MAX_K)
        .ok_or_else(|| PyValueError::new_err(format!("k must be in 0..={MAX_K}")))
}

impl PyMatcher {
    /// Runs `f` with a pooled scratch buffer, under the panic guard (a buffer a panic left
    /// behind is dropped, not pooled).
    fn with_scratch<R>(
        &self,
        what: &str,
        f: impl FnOnce(&Matcher, &mut Scratch) -> R,
    ) -> PyResult<R> {
        let taken = self.scratch.lock().ok().and_then(|mut p| p.pop());
        let mut scratch = taken.unwrap_or_else(|| self.inner.scratch());
        let r = guard("matcher", what, || f(&self.inner, &mut scratch))?;
        if let Ok(mut pool) = self.scratch.lock() {
            pool.push(scratch);
        }
        Ok(r)
    }
}

#[pymethods]
impl PyMatcher {
    /// Builds the index for `catalog` (GIL released).
    #[new]
    fn new(py: Python<'_>, catalog: &PyCatalog) -> PyResult<Self> {
        let cat = catalog.inner.clone();
        let inner = py.detach(|| guard("matcher", "index build", || Matcher::build(cat)))?;
        Ok(Self {
            inner: Arc::new(inner),
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Items indexed.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The best `k` catalog items for one hospital item: [(insurance code, score)], best first.
    #[pyo3(name = "match", signature = (name, spec="", dosage_form="", manufacturer="", k=5))]
    fn match_one(
        &self,
        py: Python<'_>,
        name: &str,
        spec: &str,
        dosage_form: &str,
        manufacturer: &str,
        k: i64,
    ) -> PyResult<Vec<(String, f32)>> {
        let k = check_k(k)?;
        let q = Query {
            name,
            spec,
            dosage_form,
            manufacturer,
        };
        let hits = py.detach(|| {
            self.with_scratch("match", |m, s| {
                let mut out = Vec::with_capacity(k);
                m.search(&q, k, s, &mut out);
                out
            })
        })?;
        let cat = self.inner.catalog();
        Ok(hits
            .iter()
            .map(|h| (cat.code(h.item as usize).to_owned(), h.score))
            .collect())
    }

    /// Matches n hospital items given as string columns; returns item indices (n, k), -1
    /// where fewer than k candidates, and scores (n, k). GIL released for the whole batch.
    #[pyo3(signature = (name, spec, dosage_form, manufacturer, k=5))]
    #[allow(clippy::type_complexity)]
    fn match_many<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
        spec: &Bound<'py, PyAny>,
        dosage_form: &Bound<'py, PyAny>,
        manufacturer: &Bound<'py, PyAny>,
        k: i64,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>)> {
        let k = check_k(k)?;
        let names = str_col(name, "name")?;
        let n = names.len();
        let mut cols = Vec::with_capacity(3);
        for (v, key) in [
            (spec, "spec"),
            (dosage_form, "dosage_form"),
            (manufacturer, "manufacturer"),
        ] {
            let c = str_col(v, key)?;
            if c.len() != n {
                return Err(column_error(
                    key,
                    format!("has {} rows, name has {n}", c.len()),
                ));
            }
            cols.push(c);
        }
        let (idx, scores) = py.detach(|| {
            self.with_scratch("match_many", |m, s| {
                let mut idx = vec![-1i64; n * k];
                let mut scores = vec![0f32; n * k];
                let mut out: Vec<Hit> = Vec::with_capacity(k);
                for i in 0..n {
                    let q = Query {
                        name: names.get(i),
                        spec: cols[0].get(i),
                        dosage_form: cols[1].get(i),
                        manufacturer: cols[2].get(i),
                    };
                    m.search(&q, k, s, &mut out);
                    for (j, h) in out.iter().enumerate() {
                        idx[i * k + j] = h.item as i64;
                        scores[i * k + j] = h.score;
                    }
                }
                (idx, scores)
            })
        })?;
        let idx = PyArray1::from_vec(py, idx).reshape([n, k])?;
        let scores = PyArray1::from_vec(py, scores).reshape([n, k])?;
        Ok((idx, scores))
    }
}
