//! `engine_rs.Policy`: a validated policy version.

use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;

use super::error::guard;
use crate::policy::{Policy, Rule, Selection};

/// A validated policy version.
#[pyclass(name = "Policy", module = "engine_rs", frozen)]
pub struct PyPolicy {
    pub(crate) inner: Policy,
}

#[pymethods]
impl PyPolicy {
    /// Parses and validates a TOML policy; raises PolicyError naming the bad field's path.
    #[staticmethod]
    fn from_toml(text: &str) -> PyResult<Self> {
        let inner = guard("policy", "from_toml", || Policy::from_toml(text))??;
        Ok(Self { inner })
    }

    /// Parses and validates a JSON policy (e.g. the canonical form from `to_json`).
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        let inner = guard("policy", "from_json", || Policy::from_json(text))??;
        Ok(Self { inner })
    }

    /// The canonical JSON form with every default filled in.
    fn to_json(&self) -> PyResult<String> {
        guard("policy", "to_json", || self.inner.to_json())
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
    fn select(&self, selection: &Selection) -> PyResult<Option<usize>> {
        guard("policy", "select", || self.inner.select(selection))
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
    fn rule(&self, index: usize) -> PyResult<&Rule> {
        self.inner
            .doc
            .rules
            .get(index)
            .ok_or_else(|| PyIndexError::new_err("rule index out of range"))
    }
}
