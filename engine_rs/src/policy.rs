//! Policy model (placeholder while written).
