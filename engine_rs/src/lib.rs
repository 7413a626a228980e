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
pub mod door;
pub mod error;
pub mod gm;
pub mod matching;
pub mod policy;
pub mod preprocess;
pub mod rounding;
pub mod settlement;
pub mod signing;
pub mod split;
pub mod upload;

/// The wire contract `medsettle.v1` as prost types, generated from proto/ by build.rs (the
/// same files the Python wire package comes from).
#[allow(clippy::all, clippy::pedantic)] // generated code
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/medsettle.v1.rs"));

    /// The same contract's descriptors (build.rs keeps what protox compiled): what reads a
    /// message of any type by its name (signing.rs, door.rs).
    pub fn descriptors() -> &'static prost_reflect::DescriptorPool {
        static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> =
            std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            // the descriptors protox compiled in build.rs: they decode, or the build is broken
            prost_reflect::DescriptorPool::decode(
                &include_bytes!(concat!(env!("OUT_DIR"), "/medsettle.fds"))[..],
            )
            .expect("the build's descriptors decode")
        })
    }

    #[cfg(test)]
    mod tests {
        use prost::Message;

        #[test]
        fn encodes_the_protobuf_wire_format() {
            let r = super::FeeLineResult {
                feedetl_sn: "1".into(),
                det_item_fee_sumamt: 150,
                flags: 1,
                ..Default::default()
            };
            // field 1 "1"; field 2 varint 150; field 10 varint 1; zero fields left out
            assert_eq!(
                r.encode_to_vec(),
                [0x0a, 1, b'1', 0x10, 0x96, 0x01, 0x50, 0x01]
            );
            let back = super::FeeLineResult::decode(&r.encode_to_vec()[..]).unwrap();
            assert_eq!(back, r);
        }
    }
}

/// Beside the core: the front-end's hot reads (and, as issue 15 goes on, writes) over its
/// SQLite database. The only module with I/O; the core modules above never use it.
pub mod ledger;

/// Beside the core: the center's decisions over what front-ends send, over a view of its
/// ledger the server reads (PostgreSQL stays in the server; this module does no I/O).
pub mod center;

#[cfg(feature = "python")]
mod python;
