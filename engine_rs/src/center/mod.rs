//! The center's decisions, beside the core: what it makes of what front-ends send, over a
//! view of its ledger that the server reads from PostgreSQL and writes back (the server
//! keeps the database; nothing here does I/O).
//!
//! - `forward`: a batch of forwarded settlements and cancels (store-and-forward, local
//!   mode), each checked, split again and decided in order over the batch's view;
//! - `summary`: a batch of center mode's `SettleSummary` calls, each settled in order over
//!   the batch's view;
//! - `view`: that view, what the batch writes, and the writes as COPY text;
//! - `checks`: ids, dates and texts checked as the Python side checks them;
//! - `copy`: rows as PostgreSQL `COPY ... FROM STDIN` text.

pub mod checks;
pub mod copy;
pub mod forward;
pub mod summary;
pub mod view;
