//! Reading the column dicts (and column arguments) Python hands the engine: the one set of
//! readers every binding uses. The dict layouts are declared as TypedDicts in
//! `engine_rs.pyi`; server/columns.py packs the string columns.
//!
//! A number column is a contiguous 1-d numpy array of one dtype; a string column is an
//! Arrow-style `(uint8 data, int64 offsets)` pair. Readers either borrow the arrays for the
//! length of a call (no copy: a batch can hold millions of fee lines; the caller must not
//! write to them meanwhile) or copy them into an owned `Vec` / `StrColumn`. Every failure is
//! a `ColumnError` naming the column.

use numpy::{Element, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::columns::{StrColumn, StrView};
use crate::error::EngineError;

/// A `ColumnError` about column `key` (message `column {key}: {reason}`).
pub(crate) fn column_error(key: &str, reason: impl Into<String>) -> PyErr {
    EngineError::Column {
        field: key.to_owned(),
        reason: reason.into(),
    }
    .into()
}

/// A required entry of a column dict.
pub(crate) fn get_col<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?.ok_or_else(|| column_error(key, "missing"))
}

/// An optional entry of a column dict.
pub(crate) fn opt_col<'py>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    d.get_item(key)
}

/// A number column borrowed from numpy, checked contiguous (so `as_slice` cannot fail
/// afterwards). `dtype` names the expected element type in the error message.
pub(crate) fn borrow_array<'py, T: Element>(
    v: &Bound<'py, PyAny>,
    key: &str,
    dtype: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    let a: PyReadonlyArray1<'py, T> = v
        .extract()
        .map_err(|_| column_error(key, format!("expected a 1-d numpy array of {dtype}")))?;
    if a.as_slice().is_err() {
        return Err(column_error(key, "array must be contiguous"));
    }
    Ok(a)
}

/// An int64 column borrowed from numpy (fee-line columns).
pub(crate) fn borrow_i64<'py>(
    v: &Bound<'py, PyAny>,
    key: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
    borrow_array(v, key, "int64")
}

/// A number column copied into a `Vec`.
pub(crate) fn num_col<T: Element + Copy>(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Vec<T>> {
    let a = borrow_array::<T>(v, key, std::any::type_name::<T>())?;
    Ok(a.as_slice()?.to_vec())
}

/// An optional number column: absent means `n` copies of `default`.
pub(crate) fn num_col_or<T: Element + Copy>(
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

/// An optional number column of exactly `n` rows: absent means `n` copies of `default`.
pub(crate) fn sized_col_or<T: Element + Copy>(
    d: &Bound<'_, PyDict>,
    key: &str,
    n: usize,
    default: T,
) -> PyResult<Vec<T>> {
    let col = num_col_or(d, key, n, default)?;
    if col.len() == n {
        Ok(col)
    } else {
        Err(column_error(
            key,
            format!("has {} rows, expected {n}", col.len()),
        ))
    }
}

/// A string column's `(data, offsets)` arrays, borrowed and checked contiguous.
pub(crate) type StrArrays<'py> = (PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, i64>);

/// A string column borrowed from a `(uint8 data, int64 offsets)` pair (offsets and UTF-8
/// are checked when it is viewed, by `str_view`).
pub(crate) fn borrow_str<'py>(v: &Bound<'py, PyAny>, key: &str) -> PyResult<StrArrays<'py>> {
    let bad = || column_error(key, "expected (uint8 data, int64 offsets)");
    let t = v.cast::<PyTuple>().map_err(|_| bad())?;
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

/// A validated view of a borrowed string column.
pub(crate) fn str_view<'a>(key: &str, (data, offs): &'a StrArrays<'_>) -> PyResult<StrView<'a>> {
    Ok(StrView::new(key, data.as_slice()?, offs.as_slice()?)?)
}

/// A string column copied (and validated) from a `(uint8 data, int64 offsets)` pair.
pub(crate) fn str_col(v: &Bound<'_, PyAny>, key: &str) -> PyResult<StrColumn> {
    let (data, offs) = borrow_str(v, key)?;
    Ok(StrColumn::from_parts(
        key,
        data.as_slice()?,
        offs.as_slice()?,
    )?)
}

/// An optional string column: absent means n empty strings.
pub(crate) fn str_col_or_empty(d: &Bound<'_, PyDict>, key: &str, n: usize) -> PyResult<StrColumn> {
    match opt_col(d, key)? {
        Some(v) => str_col(&v, key),
        None => Ok(StrColumn::from_strs(&vec![""; n])),
    }
}
