//! `FeeUpload`: a fee upload's messages read by the engine as they arrive (upload.rs):
//! the amounts' refusal of each message, the whole upload's line checks, and the columns
//! (server/frontend/services/settlement.py and visits.py are its users).

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use prost::Message;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::upload::{Upload, Violation};
use crate::wire;

#[pyclass(name = "FeeUpload", module = "engine_rs")]
pub struct PyFeeUpload {
    pub(crate) upload: Upload,
}

#[pymethods]
impl PyFeeUpload {
    #[new]
    fn new(max_line_fen: i64, max_violations: usize) -> Self {
        Self {
            upload: Upload::new(max_line_fen, max_violations),
        }
    }

    /// The lines of an `UploadFeesRequest` (its bytes), added: the (field, reason) of any
    /// line whose amount or unit price is beyond the per-line maximum.
    fn add(&mut self, data: &[u8]) -> PyResult<Vec<Violation>> {
        let req = wire::UploadFeesRequest::decode(data)
            .map_err(|e| PyValueError::new_err(format!("not an UploadFeesRequest: {e}")))?;
        Ok(self.upload.add(req.lines))
    }

    fn __len__(&self) -> usize {
        self.upload.len()
    }

    /// The (field, reason) of the serials, codes, dates and flags refused.
    #[getter]
    fn line_violations(&self) -> Vec<Violation> {
        self.upload.line_violations.clone()
    }

    #[getter]
    fn feedetl_sn(&self) -> Vec<String> {
        self.upload.feedetl_sn.clone()
    }

    #[getter]
    fn medins_list_codg(&self) -> Vec<String> {
        self.upload.medins_list_codg.clone()
    }

    #[getter]
    fn med_list_codg(&self) -> Vec<String> {
        self.upload.med_list_codg.clone()
    }

    #[getter]
    fn bilg_dr_codg(&self) -> Vec<String> {
        self.upload.bilg_dr_codg.clone()
    }

    /// The lines as `preprocess` takes them (`FeeLines`; no insurance code: the
    /// institution's mapping classifies every line).
    #[getter]
    fn columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let u = &self.upload;
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(u.len() + 1);
        offsets.push(0i64);
        for code in &u.medins_list_codg {
            data.extend_from_slice(code.as_bytes());
            // an upload's codes are far below i64::MAX bytes
            offsets.push(data.len() as i64);
        }
        let cols = PyDict::new(py);
        let codes = (
            PyArray1::from_vec(py, data),
            PyArray1::from_vec(py, offsets),
        );
        cols.set_item("medins_list_codg", codes)?;
        let names = [
            "cnt",
            "pric",
            "det_item_fee_sumamt",
            "fee_date",
            "hosp_appr_flag",
        ];
        for (k, name) in names.into_iter().enumerate() {
            let col: Vec<i64> = u.nums.iter().map(|n| n[k]).collect();
            cols.set_item(name, PyArray1::from_vec(py, col))?;
        }
        Ok(cols)
    }

    /// (lines, 5) int64: cnt, pric, det_item_fee_sumamt, fee_ocur_date, hosp_appr_flag.
    #[getter]
    fn nums<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let flat: Vec<i64> = self.upload.nums.iter().flatten().copied().collect();
        PyArray1::from_vec(py, flat).reshape([self.upload.len(), 5])
    }
}
