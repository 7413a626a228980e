//! The Python bindings (`import engine_rs`): the one place the Rust/Python boundary is
//! declared. The pure core (every module outside `python/`) knows nothing of Python; this
//! tree depends on it and on nothing else, and its modules form no cycle:
//!
//! ```text
//! mod.rs       the #[pymodule]: every class, function, exception and constant, listed once
//! ├── error    core errors -> Python exceptions (`impl From<_> for PyErr`), the panic guard
//! ├── convert  the column readers: numpy arrays and (data, offsets) string columns
//! ├── catalog  Catalog, CatalogSlot                       (error, convert)
//! ├── policy   Policy                                     (error)
//! ├── settle   preprocess(_batch), split(_batch), Visit, Selection, Person, Accumulators,
//! │            Summary, LineResults, FundLeg, SplitResult (error, convert, catalog, policy)
//! ├── matching Matcher                                    (error, convert, catalog)
//! ├── gm       sm3, hmac_sm3, sm2_*, sm4_*                (error)
//! ├── door     Door: a hot request's bounds, header and digest from its bytes (error)
//! ├── ledger   Ledger, LedgerNode: the settle operation and the ledger's reads and writes
//! │            on a Python sqlite3 connection              (error, catalog, policy)
//! └── center   CenterNode, ForwardBatch, ForwardDecision: the center's decision over a
//!              forwarded batch, on the rows the server read (error, policy)
//! ```
//!
//! Value types that cross unchanged (`Visit` = `preprocess::VisitCtx`, `Selection`,
//! `Person`, `Accumulators`, `Summary`, `FundLeg`) are the core structs themselves, made
//! classes by `#[cfg_attr(feature = "python", pyo3::pyclass(...))]` where they are declared;
//! `settle` adds their constructors. Wrappers (`Catalog`, `Policy`, `Matcher`, ...) hold a
//! core value. A new binding area (e.g. a transaction ledger beside the core) is one more
//! module here and one more block in `engine_rs` below.
//!
//! Bulk inputs arrive as dicts of numpy arrays and Arrow-style string columns `(uint8 data,
//! int64 offsets)` (typed as TypedDicts in `engine_rs.pyi`); batch work runs with the GIL
//! released. Every core error becomes a typed exception carrying the field (and line or
//! row) it is about.
//!
//! # Panic policy
//!
//! The core does not panic on input: every bad input is an `EngineError`. A panic is a bug
//! (an overflow check, a broken invariant). Every binding that runs core work — parsing,
//! building, looking up, matching, preprocessing, splitting, signing, encrypting — runs it
//! inside `error::guard`, which catches the panic and raises
//! `engine_rs.EngineError("<area>: internal error in <what>")`: an ordinary `Exception` the
//! server maps, audits and answers like any engine error, where PyO3's own
//! `pyo3_runtime.PanicException` derives from `BaseException` and would escape its handlers.
//! Getters that return a stored value or a length, and constructors that only store their
//! arguments, run no core code and are not wrapped. Nothing here calls `unwrap`/`expect`.

mod catalog;
mod center;
mod convert;
mod door;
mod error;
mod gm;
mod ledger;
mod matching;
mod policy;
mod settle;
mod upload;

use pyo3::prelude::*;

/// Batches allocate and free output columns of tens of megabytes per call; mimalloc keeps
/// those pages mapped between calls where the system allocator returns them to the kernel
/// and page-faults them back in on the next batch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn engine_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // EngineError and its subclasses, CryptoError included
    error::register(m)?;

    // catalog
    m.add_class::<catalog::PyCatalog>()?;
    m.add_class::<catalog::PyCatalogSlot>()?;

    // policy, preprocessing and fund split
    m.add_class::<policy::PyPolicy>()?;
    m.add_class::<crate::preprocess::VisitCtx>()?;
    m.add_class::<crate::policy::Selection>()?;
    m.add_class::<crate::split::Person>()?;
    m.add_class::<crate::split::Accumulators>()?;
    m.add_class::<crate::preprocess::Summary>()?;
    m.add_class::<settle::PyLineResults>()?;
    m.add_class::<crate::split::FundLeg>()?;
    m.add_class::<settle::PySplitResult>()?;
    m.add_function(wrap_pyfunction!(settle::preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(settle::preprocess_batch, m)?)?;
    m.add_function(wrap_pyfunction!(settle::split, m)?)?;
    m.add_function(wrap_pyfunction!(settle::split_batch, m)?)?;
    m.add_function(wrap_pyfunction!(settle::line_results_blob, m)?)?;
    m.add_function(wrap_pyfunction!(settle::fee_line_results, m)?)?;
    // The funds' names (fund_pay_type -> name): one table, which the center's SetlInfo
    // (server/fundsplit.py) reads too.
    let fund_names: std::collections::HashMap<&str, &str> =
        crate::settlement::FUND_NAMES.iter().copied().collect();
    m.add("FUND_NAMES", fund_names)?;

    // matching
    m.add_class::<matching::PyMatcher>()?;

    // the ledger: hot reads on the front-end store's own connection
    m.add_class::<ledger::PyLedger>()?;
    m.add_class::<ledger::PyLedgerNode>()?;

    // the center: its decision over a batch a front-end forwards
    m.add_class::<center::PyCenterNode>()?;
    m.add_class::<center::PyForwardBatch>()?;
    m.add_class::<center::PyForwardDecision>()?;
    m.add_class::<center::PySummaryDecision>()?;
    let columns: Vec<&str> = crate::center::view::SETTLEMENT_COLUMNS.to_vec();
    m.add("CENTER_SETTLEMENT_COLUMNS", columns)?;

    // the door of the hot requests: read once from their wire bytes
    m.add_class::<door::PyDoor>()?;
    m.add_class::<upload::PyFeeUpload>()?;

    // national cryptography
    m.add("SM2_DEFAULT_UID", crate::gm::DEFAULT_UID)?;
    m.add_function(wrap_pyfunction!(gm::py_sm3, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_hmac_sm3, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_signed_text, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_sm2_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_sm2_sign, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_sm2_verify, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_sm4_encrypt_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(gm::py_sm4_decrypt_blocks, m)?)?;
    Ok(())
}
