//! Store errors, and their mapping onto the Hub's vocabulary.

use polyport_core::HubError;

/// What can go wrong inside the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error (the cluster engine).
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// Filesystem error (creating the data directory).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The data directory's schema is one this release cannot read.
    #[error("schema: {0}")]
    Schema(String),
    /// The writer thread is gone (shut down or crashed).
    #[error("the store's writer has stopped")]
    WriterStopped,
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WriterStopped => HubError::ShuttingDown,
            StoreError::Postgres(e) if pg_unreachable(&e) => HubError::Unavailable(pg_message(&e)),
            other => {
                tracing::error!(error = %other, "store error");
                HubError::Storage(other.to_string())
            }
        }
    }
}

/// A Postgres error with the server's message: the error's own text is only "db error".
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// Whether a Postgres error says the database cannot be reached (the connection failed
/// or the server is going away), rather than that the statement failed: the request
/// may succeed later, and nothing of it was done.
pub(crate) fn pg_unreachable(e: &postgres::Error) -> bool {
    use std::error::Error as _;
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
    })
}
