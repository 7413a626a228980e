//! medsettle's settlement core: policy model, catalog index and matching, fee preprocessing
//! and fund split, as pure functions over plain data (no I/O, no clocks).
//!
//! Money is integer fen (`i64`), ratios are basis points, quantities are 1/10_000 units;
//! products are computed in `i128` and rounded by the policy's rule at named points.
//! The Python bindings (`python` feature, built by maturin) live in `python.rs`.

pub mod catalog;
pub mod columns;
pub mod error;
pub mod gm;
pub mod matching;
pub mod policy;
pub mod preprocess;
pub mod rounding;
pub mod split;

#[cfg(feature = "python")]
mod py_gm;
#[cfg(feature = "python")]
mod py_matching;
#[cfg(feature = "python")]
mod py_settle;
#[cfg(feature = "python")]
mod python;

/// Batches allocate and free output columns of tens of megabytes per call; mimalloc keeps
/// those pages mapped between calls where the system allocator returns them to the kernel
/// and page-faults them back in on the next batch.
#[cfg(feature = "python")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
