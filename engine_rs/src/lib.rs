//! medsettle's settlement core: policy model, catalog index and matching, fee preprocessing
//! and fund split, as pure functions over plain data (no I/O, no clocks).
//!
//! Money is integer fen (`i64`), ratios are basis points, quantities are 1/10_000 units;
//! products are computed in `i128` and rounded by the policy's rule at named points.
//!
//! The modules above `ledger` are the pure core: they do not depend on pyo3 and build and
//! test without the `python` feature. The Python bindings (`python` feature, built by
//! maturin) live in `python/`, which depends on the core and never the other way round; the
//! core's value types that cross the boundary unchanged carry a
//! `cfg_attr(feature = "python", pyclass)` and nothing else Python-specific.

pub mod catalog;
pub mod columns;
pub mod error;
pub mod gm;
pub mod matching;
pub mod policy;
pub mod preprocess;
pub mod rounding;
pub mod split;

/// Beside the core: the front-end's hot reads (and, as issue 15 goes on, writes) over its
/// SQLite database. The only module with I/O; the core modules above never use it.
pub mod ledger;

#[cfg(feature = "python")]
mod python;
