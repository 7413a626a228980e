//! Fund split (placeholder while written).
