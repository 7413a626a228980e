//! Fee preprocessing (placeholder while written).
