//! What can go wrong in the store, with the cause kept as a [`std::error::Error::source`].
//! The layers above turn a [`StoreError`] into [`TelosError::Internal`]: the client is told an
//! incident id, the log gets the whole chain (see [`crate::error::chain`]).

use crate::error::TelosError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SurrealDB refused or failed a query.
    #[error("the database failed")]
    Database(#[source] surrealdb::Error),
    /// A row did not have the shape this server writes (or a value could not be written as one).
    #[error("{what} is malformed")]
    Malformed {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A row this server wrote lacks a field it always writes.
    #[error("{0}")]
    Incomplete(String),
    /// The commit log's files could not be written or read.
    #[error("the commit log failed {what}")]
    Log {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The store's runtime dropped or panicked a task (the store is closing).
    #[error("a store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// For `map_err` on a `serde_json` result: `what` names the row or value.
    pub fn malformed(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> StoreError {
        let what = what.into();
        move |source| StoreError::Malformed { what, source }
    }
}

impl From<surrealdb::Error> for StoreError {
    fn from(e: surrealdb::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<StoreError> for TelosError {
    fn from(e: StoreError) -> Self {
        TelosError::Internal(crate::error::chain(&e))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_keeps_its_cause_for_the_log() {
        let bad = serde_json::from_str::<u64>("\"x\"").unwrap_err();
        let e = StoreError::malformed("an attempt row")(bad);
        let told = TelosError::from(e).to_string();
        assert!(
            told.starts_with("an attempt row is malformed: invalid type"),
            "{told}"
        );
    }
}
