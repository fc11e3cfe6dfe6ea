//! Where the world lives: an embedded database under the data dir, or a SurrealDB server.

use std::path::PathBuf;

/// Where the world lives.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory (embedded database, lock file).
    pub data_dir: PathBuf,
    /// Empty: embedded. Otherwise `ws://host:port` of a SurrealDB server.
    pub db_url: String,
    pub db_user: String,
    pub db_pass: String,
    pub namespace: String,
    pub database: String,
    /// Keep the commit log in database tables even when embedded (as it is on a SurrealDB
    /// server); otherwise an embedded store keeps it in files under the data dir.
    pub log_in_database: bool,
}

impl StoreConfig {
    /// The embedded database in `data_dir` (restores, verifications, benchmarks).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            db_url: String::new(),
            db_user: String::new(),
            db_pass: String::new(),
            namespace: "telos".into(),
            database: "world".into(),
            log_in_database: false,
        }
    }
}
