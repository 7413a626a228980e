//! How a ledger operation fails: a refusal of the caller's request (a gRPC status the
//! server answers with, writing nothing), or a fault of the store or of the ledger itself.

/// The gRPC status of a refusal (the names `grpc.StatusCode` uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    AlreadyExists,
    Unavailable,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A request the ledger refuses: its status, its message, and for INVALID_ARGUMENT the
/// field and reason (`field: reason` is then the message, as `server.errors.field_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    pub field: Option<(String, String)>,
}

impl Refusal {
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            code: Code::InvalidArgument,
            message: format!("{field}: {reason}"),
            field: Some((field.to_owned(), reason)),
        }
    }

    fn with(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::with(Code::NotFound, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::with(Code::FailedPrecondition, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::with(Code::AlreadyExists, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::with(Code::Unavailable, message)
    }
}

/// Why a ledger operation did not complete.
#[derive(Debug)]
pub enum LedgerError {
    /// The caller's request is refused; nothing of it is kept.
    Refused(Refusal),
    /// SQLite failed (the store's own failure handling decides what the batch does).
    Sql(rusqlite::Error),
    /// A broken invariant (stored data that does not open, a missing row): a bug or damage.
    Internal(String),
}

impl From<Refusal> for LedgerError {
    fn from(r: Refusal) -> Self {
        LedgerError::Refused(r)
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Sql(e)
    }
}
