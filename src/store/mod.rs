//! The store: SurrealDB, embedded (`surrealkv://` under the data dir) or remote (`ws://`).
//!
//! SurrealDB's client spawns background tasks on the Tokio runtime it is connected from, and its
//! queries are CPU work. The store therefore owns a small multi-threaded runtime of its own: async
//! callers await a task spawned there, and the script threads (plain OS threads) block on one.
//! Nothing here knows about actors.
//!
//! One concept per file: [`config`] (where the world lives), [`schema`] (the schema files),
//! [`data_dir`] (the lock, the damage marker, the corruption watch), and one repository per
//! table: [`objects`], [`log`] (the commit log group commits append to, checkpointed into the
//! object table), [`feed`] (the change feed backups read and restores apply), [`attempts`]
//! (the kernel's attempt log); memory records live in [`crate::memory::records`].

use std::fs::File;
use std::future::Future;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value as Json;
use surrealdb::Surreal;
use surrealdb::engine::any::{Any, connect};
use surrealdb::opt::auth::Root;

use crate::object::primordial_objects;
pub use error::{Result, StoreError};

pub mod attempts;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod feed;
pub mod log;
pub mod objects;
pub mod schema;

pub use attempts::{Attempt, Failure};
pub use config::StoreConfig;
pub use data_dir::{CorruptionWatch, DAMAGED_MARKER, check_world_expected};
pub use feed::Changes;
pub use log::Checkpoint;
pub use objects::ObjectSummary;
pub use schema::SCHEMA;

use data_dir::{check_not_damaged, lock_data_dir, take_corruption};
use schema::apply_schema;

/// A handle on the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while closing.
    db: Option<Surreal<Any>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Held for the life of the process so a second server on the same data dir fails early.
    _lock: Option<File>,
    /// Where the database files are (for operators and error messages).
    location: String,
    /// Where the commit log's records go.
    log: log::Sink,
    /// The embedded engine's lock file: free again once the engine has closed.
    engine_lock: Option<std::path::PathBuf>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The storage engine closes (flushes, releases its lock) when the last client handle is
        // dropped on a live runtime; then the runtime may stop. Done on a plain thread so it may
        // block even when the store is dropped from async code.
        let (Some(rt), db) = (self.runtime.take(), self.db.take()) else {
            return;
        };
        let engine_lock = self.engine_lock.take();
        let closing = std::thread::spawn(move || {
            rt.block_on(async move {
                drop(db);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                // SurrealKV closes in a task on this runtime, flushing its memtable (seconds
                // for a large one), and lets go of its lock file last: the runtime must not
                // stop before, or the next open replays the whole WAL.
                if let Some(lock) = engine_lock {
                    let started = std::time::Instant::now();
                    while engine_holds(&lock) && started.elapsed() < ENGINE_CLOSE_WAIT {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        });
        let _ = closing.join();
    }
}

/// How long a closing store waits for its engine to finish closing.
const ENGINE_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the embedded engine still holds its lock file (it is open or closing).
fn engine_holds(lock: &std::path::Path) -> bool {
    match File::open(lock) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

impl Store {
    /// Opens (and if needed creates and awakens) the world's database.
    pub fn open(cfg: &StoreConfig) -> anyhow::Result<Store> {
        if cfg.db_url.is_empty() {
            check_world_expected(&cfg.data_dir)?;
        }
        let store = Store::open_empty(cfg)?;
        store.awaken()?;
        Ok(store)
    }

    /// Opens the database and applies the schema, without awakening a world (restores).
    pub fn open_empty(cfg: &StoreConfig) -> anyhow::Result<Store> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("telos-store")
            .enable_all()
            .build()
            .context("starting the store's runtime")?;

        let (endpoint, lock, location, sink, engine_lock) = if cfg.db_url.is_empty() {
            std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
                format!("creating the data directory {}", cfg.data_dir.display())
            })?;
            let dir = cfg
                .data_dir
                .canonicalize()
                .with_context(|| format!("resolving {}", cfg.data_dir.display()))?;
            let lock = lock_data_dir(&dir)?;
            check_not_damaged(&dir)?;
            take_corruption();
            let db_path = dir.join("world");
            (
                format!("surrealkv://{}", db_path.display()),
                Some(lock),
                db_path.display().to_string(),
                if cfg.log_in_database {
                    log::Sink::Tables
                } else {
                    log::Sink::files(dir.join("commit-log"))?
                },
                Some(db_path.join("LOCK")),
            )
        } else {
            (
                cfg.db_url.clone(),
                None,
                cfg.db_url.clone(),
                log::Sink::Tables,
                None,
            )
        };

        let db = runtime.block_on(async {
            // We hold the data dir's own lock, so a locked engine can only be a handle of this
            // process that is still closing (e.g. right after a restore): give it a moment.
            let mut attempts = 0;
            let db = loop {
                match connect(endpoint.as_str()).await {
                    Ok(db) => break db,
                    Err(e) if e.to_string().contains("already locked") && attempts < 30 => {
                        attempts += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) if e.to_string().contains("already locked") => {
                        bail!(
                            "the database at {location} is in use by another process; stop it or choose another TELOS_DATA_DIR"
                        )
                    }
                    Err(e) => bail!("opening the database at {location}: {e}"),
                }
            };
            if !cfg.db_url.is_empty() && !cfg.db_user.is_empty() {
                db.signin(Root {
                    username: cfg.db_user.clone(),
                    password: cfg.db_pass.clone(),
                })
                .await
                .with_context(|| format!("signing in to {location}"))?;
            }
            db.use_ns(cfg.namespace.as_str())
                .use_db(cfg.database.as_str())
                .await
                .context("selecting namespace and database")?;
            anyhow::Ok(db)
        })?;

        if cfg.db_url.is_empty()
            && let Some(detail) = take_corruption()
        {
            let dir = cfg.data_dir.clone();
            let _ = std::fs::write(
                dir.join(DAMAGED_MARKER),
                format!("storage engine reported: {detail}\n"),
            );
            let err = check_not_damaged(&dir)
                .err()
                .unwrap_or_else(|| anyhow!("the database in {} is damaged", dir.display()));
            drop(db);
            runtime.shutdown_background();
            return Err(err);
        }
        let store = Store {
            inner: Arc::new(Inner {
                db: Some(db),
                runtime: Some(runtime),
                _lock: lock,
                location,
                log: sink,
                engine_lock,
            }),
        };
        store.block(|db| async move { apply_schema(&db).await })??;
        store
            .replay_log_blocking()
            .context("replaying the commit log")?;
        Ok(store)
    }

    /// Where the database lives, for logs.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    pub(crate) fn db(&self) -> Surreal<Any> {
        self.inner
            .db
            .clone()
            .expect("the client lives as long as the store")
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.inner
            .runtime
            .as_ref()
            .expect("runtime lives as long as the store")
            .handle()
    }

    /// Runs `f(db)` on the store's runtime and waits for it from a plain (non-async) thread.
    pub fn block<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Surreal<Any>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.handle().spawn(f(self.db()));
        self.handle().block_on(task).map_err(StoreError::Task)
    }

    /// Runs `f(db)` on the store's runtime and awaits it from any async context.
    pub async fn run<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Surreal<Any>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle()
            .spawn(f(self.db()))
            .await
            .map_err(StoreError::Task)
    }

    /// Creates the primordial objects in one transaction if the world is empty.
    fn awaken(&self) -> anyhow::Result<()> {
        if self.load_blocking("traits_obj")?.is_some() {
            return Ok(());
        }
        let objects = primordial_objects();
        tracing::info!(count = objects.len(), "awakening a fresh world");
        self.commit_blocking(&objects, &[], 1)?;
        Ok(())
    }

    /// The world's identity: made once (at the first ask), kept in the database, carried by
    /// every backup, so that an incremental never chains onto another world's full.
    pub async fn world_id(&self) -> Result<String> {
        self.run(|db| async move {
            let mut res = db.query("SELECT VALUE value FROM ONLY meta:world").await?;
            let v: Option<String> = res.take(0)?;
            if let Some(id) = v.filter(|v| !v.is_empty()) {
                return Ok(id);
            }
            let id = uuid::Uuid::new_v4().simple().to_string();
            db.query("UPSERT meta:world SET value = $v RETURN NONE")
                .bind(("v", id.clone()))
                .await?
                .check()?;
            Ok(id)
        })
        .await?
    }

    /// How many rows `table` holds.
    pub(crate) async fn count_rows(&self, table: &'static str) -> Result<u64> {
        self.run(move |db| async move {
            let mut res = db
                .query(format!("SELECT count() AS n FROM {table} GROUP ALL"))
                .await?;
            let rows: Vec<Json> = res.take(0)?;
            Ok(rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0))
        })
        .await?
    }

    /// Sets the world's identity (a restore keeps the identity of the world it restores).
    pub async fn set_world_id(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.run(|db| async move {
            db.query("UPSERT meta:world SET value = $v RETURN NONE")
                .bind(("v", id))
                .await?
                .check()?;
            Ok(())
        })
        .await?
    }
}

/// A table whose deleted rows leave tombstones (`{key: id, seq}`), so that backups carry
/// deletions as they carry writes.
pub(crate) struct Tombstoned {
    pub table: &'static str,
    /// The field the record id is made from.
    pub key: &'static str,
    pub tombstones: &'static str,
    pub write: Write,
}

/// How a [`Tombstoned`] table's rows are written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Rows are rewritten: one bulk `INSERT` that updates these fields of rows that exist.
    Upsert(&'static [&'static str]),
    /// Rows are written once, in one bulk `INSERT` (an existing id is an error): a batch of
    /// memory records is ~15% cheaper to store than with one `CREATE` each.
    Insert,
}

/// Writes `rows` into `t`, deletes the ids in `gone` leaving their tombstones, runs `then`
/// (more statements, or nothing) and records the global sequence number `seq`: one transaction.
/// `gone` holds tombstones, `{key: id, seq}`.
pub(crate) async fn write_tombstoned(
    db: &Surreal<Any>,
    t: &Tombstoned,
    rows: Json,
    gone: Json,
    then: &str,
    seq: u64,
) -> std::result::Result<(), surrealdb::Error> {
    let Tombstoned {
        table,
        key,
        tombstones,
        write,
    } = t;
    let mut rows = rows;
    let write = match rows.as_array_mut() {
        Some(rows) if rows.is_empty() => String::new(),
        Some(rows) => {
            for row in rows.iter_mut() {
                let id = row[*key].clone();
                row["id"] = id;
            }
            match write {
                Write::Insert => format!("INSERT INTO {table} $rows RETURN NONE;"),
                Write::Upsert(fields) => {
                    let update: Vec<String> =
                        fields.iter().map(|f| format!("{f} = $input.{f}")).collect();
                    format!(
                        "INSERT INTO {table} $rows ON DUPLICATE KEY UPDATE {} RETURN NONE;",
                        update.join(", ")
                    )
                }
            }
        }
        None => String::new(),
    };
    let sql = format!(
        "BEGIN TRANSACTION;
         {write}
         FOR $x IN $gone {{
             DELETE type::record('{table}', $x.{key}) RETURN NONE;
             UPSERT type::record('{tombstones}', $x.{key}) CONTENT $x RETURN NONE;
         }};
         {then}
         UPSERT meta:seq SET value = $seq RETURN NONE;
         COMMIT TRANSACTION;"
    );
    db.query(sql)
        .bind(("rows", rows))
        .bind(("gone", gone))
        .bind(("seq", seq as i64))
        .await
        .and_then(|r| r.check())
        .map(|_| ())
}

pub(crate) fn db_err(e: surrealdb::Error) -> StoreError {
    StoreError::Database(e)
}
