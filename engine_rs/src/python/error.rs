//! The one mapping from the core's errors to Python exceptions, and the panic guard.
//!
//! Every `EngineError` becomes the exception class of its variant with the variant's fields
//! as attributes (`ColumnError.field`, `LineError.line`, ...) and its `Display` text as the
//! message; every `GmError` becomes `CryptoError`. Bindings return `PyResult` and let `?`
//! do the conversion (`impl From<...> for PyErr`), so no binding builds these by hand.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::BoundObject;

use crate::error::EngineError as CoreError;
use crate::gm::GmError;
use crate::ledger::refusal::LedgerError;

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
create_exception!(
    engine_rs,
    CryptoError,
    EngineError,
    "A key, user id or block length the national algorithms cannot take."
);

create_exception!(
    engine_rs,
    Refused,
    PyException,
    "A request a ledger operation refuses: `code` (a grpc.StatusCode name), `message`, and \
     for INVALID_ARGUMENT the `field` and `reason`."
);

/// Registers the exception classes on the module.
pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("ColumnError", py.get_type::<ColumnError>())?;
    m.add("LineError", py.get_type::<LineError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("NoRuleError", py.get_type::<NoRuleError>())?;
    m.add("CryptoError", py.get_type::<CryptoError>())?;
    m.add("Refused", py.get_type::<Refused>())?;
    Ok(())
}

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> Self {
        Python::attach(|py| {
            let msg = e.to_string();
            match e {
                CoreError::Column { field, reason } => with_attrs(
                    py,
                    ColumnError::new_err(msg),
                    [
                        ("field", field.into_any(py)),
                        ("reason", reason.into_any(py)),
                    ],
                ),
                CoreError::Line {
                    line,
                    field,
                    reason,
                } => with_attrs(
                    py,
                    LineError::new_err(msg),
                    [
                        ("line", line.into_any(py)),
                        ("field", field.into_any(py)),
                        ("reason", reason.into_any(py)),
                    ],
                ),
                CoreError::Input { row, field, reason } => with_attrs(
                    py,
                    InputError::new_err(msg),
                    [
                        ("row", row.into_any(py)),
                        ("field", field.into_any(py)),
                        ("reason", reason.into_any(py)),
                    ],
                ),
                CoreError::Policy { path, reason } => with_attrs(
                    py,
                    PolicyError::new_err(msg),
                    [("path", path.into_any(py)), ("reason", reason.into_any(py))],
                ),
                CoreError::NoRule { row, selection } => with_attrs(
                    py,
                    NoRuleError::new_err(msg),
                    [
                        ("row", row.into_any(py)),
                        ("selection", selection.into_any(py)),
                    ],
                ),
            }
        })
    }
}

/// A failed read or write of the ledger, as Python's own `sqlite3` would raise it
/// (`sqlite3.OperationalError`, or `DatabaseError`), so the store handles a full disk or a
/// busy database the same whichever language met it.
pub(crate) fn sqlite_error(what: &str, e: rusqlite::Error) -> PyErr {
    Python::attach(|py| {
        let class = match &e {
            rusqlite::Error::SqliteFailure(..) => "OperationalError",
            _ => "DatabaseError",
        };
        let msg = format!("ledger {what}: {e}");
        let err = match py
            .import("sqlite3")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| cls.call1((msg,)))
        {
            Ok(exc) => PyErr::from_value(exc),
            Err(failed) => return failed,
        };
        // The result code, as Python's own sqlite3 errors carry it: the store tells a full
        // disk or an I/O error (the batch fails) from a bad statement by it.
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => with_attrs(
                py,
                err,
                [
                    ("sqlite_errorcode", f.extended_code.into_any(py)),
                    ("sqlite_errorname", format!("{:?}", f.code).into_any(py)),
                ],
            ),
            _ => err,
        }
    })
}

/// The ledger refused a connection or a call (`EngineError` with the reason).
pub(crate) fn ledger_refused(reason: impl Into<String>) -> PyErr {
    EngineError::new_err(format!("ledger: {}", reason.into()))
}

impl From<GmError> for PyErr {
    fn from(e: GmError) -> Self {
        CryptoError::new_err(e.to_string())
    }
}

/// A ledger operation's failure: a refusal of the request (`Refused`), the store's failure
/// (`sqlite_error`), or a broken invariant (`EngineError`, answered INTERNAL).
pub(crate) fn ledger_error(what: &str, e: LedgerError) -> PyErr {
    match e {
        LedgerError::Refused(r) => Python::attach(|py| {
            let (field, reason) = match r.field {
                Some((f, why)) => (Some(f), Some(why)),
                None => (None, None),
            };
            with_attrs(
                py,
                Refused::new_err(r.message.clone()),
                [
                    ("code", r.code.name().into_any(py)),
                    ("message", r.message.into_any(py)),
                    ("field", field.into_any(py)),
                    ("reason", reason.into_any(py)),
                ],
            )
        }),
        LedgerError::Sql(e) => sqlite_error(what, e),
        LedgerError::Internal(why) => ledger_refused(format!("{what}: {why}")),
    }
}

/// An exception attribute value: the conversions used here cannot fail.
trait IntoAny {
    fn into_any(self, py: Python<'_>) -> Py<PyAny>;
}

impl<T> IntoAny for T
where
    T: for<'py> IntoPyObject<'py, Error = std::convert::Infallible>,
{
    fn into_any(self, py: Python<'_>) -> Py<PyAny> {
        match self.into_pyobject(py) {
            Ok(v) => v.into_any().unbind(),
            Err(never) => match never {},
        }
    }
}

/// `err` with attributes set on its instance (or the error setting one raised).
fn with_attrs<const N: usize>(py: Python<'_>, err: PyErr, attrs: [(&str, Py<PyAny>); N]) -> PyErr {
    let value = err.value(py);
    for (name, v) in attrs {
        if let Err(e) = value.setattr(name, v) {
            return e;
        }
    }
    err
}

/// Runs `f`, turning a panic into `EngineError("{area}: internal error in {what}")` (the
/// panic policy in `python/mod.rs`). `f` may run with the GIL released.
pub(crate) fn guard<R>(area: &str, what: &str, f: impl FnOnce() -> R) -> PyResult<R> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| internal(area, what))
}

/// The exception a caught panic becomes (`guard`; a panic caught on another thread).
pub(crate) fn internal(area: &str, what: &str) -> PyErr {
    EngineError::new_err(format!("{area}: internal error in {what}"))
}
