//! `Door`: a hot request read at the door from its wire bytes (`door.rs`): its ids'
//! bounds, its header and its idempotency digest, in one call (server/door.py is its one
//! user). Small and fast: the GIL is kept.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::error::guard;
use crate::door::{Door, Refusal};

#[pyclass(name = "Door", module = "engine_rs", frozen)]
pub struct PyDoor {
    door: Door,
}

/// What `Door.admit` answers: (header, digest) for a request that passes; the decoder's
/// reason (str) for bytes that are not the message; the (field, reason) violations.
#[derive(IntoPyObject)]
pub enum Admission<'py> {
    Passed(Option<[String; 6]>, Bound<'py, PyBytes>),
    Malformed(String),
    Fields(Vec<(String, String)>),
}

#[pymethods]
impl PyDoor {
    #[new]
    fn new(bounds: HashMap<String, usize>, max_violations: usize) -> PyResult<Self> {
        let door = guard("door", "Door", || Door::new(&bounds, max_violations))?;
        Ok(PyDoor { door })
    }

    /// A request of message type `type_name` for `method` (its short name), from `data`.
    fn admit<'py>(
        &self,
        py: Python<'py>,
        type_name: &str,
        method: &str,
        data: &[u8],
    ) -> PyResult<Admission<'py>> {
        let desc = Door::message(type_name)
            .ok_or_else(|| PyValueError::new_err(format!("no message type {type_name}")))?;
        let got = guard("door", "admit", || self.door.admit(&desc, method, data))?;
        Ok(match got {
            Ok(a) => Admission::Passed(a.header, PyBytes::new(py, &a.digest)),
            Err(Refusal::Malformed(reason)) => Admission::Malformed(reason),
            Err(Refusal::Fields(v)) => Admission::Fields(v),
        })
    }
}
