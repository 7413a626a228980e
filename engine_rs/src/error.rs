//! The engine's one error type: every failure names what was wrong and where.

use std::fmt;

/// What went wrong, with enough context for a precise gRPC status upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A bulk column is malformed (length, offsets, encoding, dtype).
    Column { field: String, reason: String },
    /// A fee line is invalid; `line` is its 0-based position in the batch.
    Line {
        line: usize,
        field: &'static str,
        reason: String,
    },
    /// A visit, person or accumulator input is invalid; `row` is its batch position.
    Input {
        row: usize,
        field: &'static str,
        reason: String,
    },
    /// A policy document is invalid at `path` (e.g. `rules[2].basic.bands[1].ratio_bp`).
    Policy { path: String, reason: String },
    /// No policy rule matches the selection.
    NoRule { row: usize, selection: String },
}

impl EngineError {
    pub fn column(field: &str, reason: &str) -> Self {
        Self::Column {
            field: field.to_owned(),
            reason: reason.to_owned(),
        }
    }

    pub fn line(line: usize, field: &'static str, reason: impl Into<String>) -> Self {
        Self::Line {
            line,
            field,
            reason: reason.into(),
        }
    }

    pub fn input(row: usize, field: &'static str, reason: impl Into<String>) -> Self {
        Self::Input {
            row,
            field,
            reason: reason.into(),
        }
    }

    pub fn policy(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Policy {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Column { field, reason } => write!(f, "column {field}: {reason}"),
            Self::Line {
                line,
                field,
                reason,
            } => write!(f, "line {line}: {field}: {reason}"),
            Self::Input { row, field, reason } => write!(f, "row {row}: {field}: {reason}"),
            Self::Policy { path, reason } => write!(f, "policy {path}: {reason}"),
            Self::NoRule { row, selection } => {
                write!(f, "row {row}: no policy rule matches {selection}")
            }
        }
    }
}

impl std::error::Error for EngineError {}
