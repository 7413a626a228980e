//! Catalog matching: proposes insurance items for a hospital item (owned by the matching work).
