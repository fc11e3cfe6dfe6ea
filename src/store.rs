//! The store: SurrealDB, embedded (`surrealkv://` under the data dir) or remote (`ws://`).
//!
//! SurrealDB's client spawns background tasks on the Tokio runtime it is connected from, and its
//! queries are CPU work. The store therefore owns a small multi-threaded runtime of its own: async
//! callers await a task spawned there, and the script threads (plain OS threads) block on one.
//! Nothing here knows about actors.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value as Json, json};
use surrealdb::Surreal;
use surrealdb::engine::any::{Any, connect};
use surrealdb::opt::auth::Root;

use crate::error::{Result, TelosError};
use crate::object::{ObjectState, primordial_objects};

/// The schema files, applied in this order at every start (each is idempotent).
pub const SCHEMA: &[(&str, &str)] = &[
    (
        "001_objects.surql",
        include_str!("../schema/001_objects.surql"),
    ),
    (
        "002_backups.surql",
        include_str!("../schema/002_backups.surql"),
    ),
    (
        "003_memory.surql",
        include_str!("../schema/003_memory.surql"),
    ),
    (
        "004_kernel.surql",
        include_str!("../schema/004_kernel.surql"),
    ),
    (
        "005_memory_origin.surql",
        include_str!("../schema/005_memory_origin.surql"),
    ),
];

/// The fields of an object row, as backups carry them.
const ROW_FIELDS: &str = "oid, name, parents, doc, version, seq";

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
        }
    }
}

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
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The storage engine closes (flushes, releases its lock) when the last client handle is
        // dropped on a live runtime; then the runtime may stop. Done on a plain thread so it may
        // block even when the store is dropped from async code.
        let (Some(rt), db) = (self.runtime.take(), self.db.take()) else {
            return;
        };
        let closing = std::thread::spawn(move || {
            rt.block_on(async move {
                drop(db);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        });
        let _ = closing.join();
    }
}

/// A summary row of the object list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObjectSummary {
    pub oid: String,
    pub name: String,
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

        let (endpoint, lock, location) = if cfg.db_url.is_empty() {
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
            )
        } else {
            (cfg.db_url.clone(), None, cfg.db_url.clone())
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
            }),
        };
        store.block(|db| async move { apply_schema(&db).await })??;
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
        self.handle()
            .block_on(task)
            .map_err(|e| TelosError::Internal(format!("store task failed: {e}")))
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
            .map_err(|e| TelosError::Internal(format!("store task failed: {e}")))
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

    /// Loads one object, or `None` when there is no such object.
    pub fn load_blocking(&self, oid: &str) -> Result<Option<ObjectState>> {
        let oid = oid.to_string();
        self.block(|db| load(db, oid))?
    }

    pub async fn load(&self, oid: &str) -> Result<Option<ObjectState>> {
        let oid = oid.to_string();
        self.run(|db| load(db, oid)).await?
    }

    /// Writes `objects` (each with its new version) and deletes `deleted`, all in one
    /// transaction stamped with the global sequence number `seq`.
    pub fn commit_blocking(
        &self,
        objects: &[ObjectState],
        deleted: &[String],
        seq: u64,
    ) -> Result<()> {
        let (rows, gone) = commit_rows(objects, deleted, seq);
        self.block(move |db| commit(db, rows, gone, seq))?
    }

    /// [`Store::commit_blocking`] for async callers.
    pub async fn commit_async(&self, objects: Vec<ObjectState>, seq: u64) -> Result<()> {
        let (rows, gone) = commit_rows(&objects, &[], seq);
        self.run(move |db| commit(db, rows, gone, seq)).await?
    }

    /// The sequence number of the last commit (0 for a new database).
    pub fn current_seq_blocking(&self) -> Result<u64> {
        self.block(|db| async move {
            let mut res = db
                .query("SELECT VALUE value FROM ONLY meta:seq")
                .await
                .map_err(db_err)?;
            let v: Option<i64> = res.take(0).map_err(db_err)?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })?
    }

    /// The world's identity: made once (at the first ask), kept in the database, carried by
    /// every backup, so that an incremental never chains onto another world's full.
    pub async fn world_id(&self) -> Result<String> {
        self.run(|db| async move {
            let mut res = db
                .query("SELECT VALUE value FROM ONLY meta:world")
                .await
                .map_err(db_err)?;
            let v: Option<String> = res.take(0).map_err(db_err)?;
            if let Some(id) = v.filter(|v| !v.is_empty()) {
                return Ok(id);
            }
            let id = uuid::Uuid::new_v4().simple().to_string();
            db.query("UPSERT meta:world SET value = $v RETURN NONE")
                .bind(("v", id.clone()))
                .await
                .map_err(db_err)?
                .check()
                .map_err(db_err)?;
            Ok(id)
        })
        .await?
    }

    /// Sets the world's identity (a restore keeps the identity of the world it restores).
    pub async fn set_world_id(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.run(|db| async move {
            db.query("UPSERT meta:world SET value = $v RETURN NONE")
                .bind(("v", id))
                .await
                .map_err(db_err)?
                .check()
                .map_err(db_err)?;
            Ok(())
        })
        .await?
    }

    /// Every object written and every object deleted after `after` (0: everything), read in
    /// one transaction so the result is consistent.
    pub async fn changes_since(&self, after: u64) -> Result<Changes> {
        self.run(move |db| async move {
            let sql = format!(
                "BEGIN TRANSACTION;
                 SELECT {ROW_FIELDS} FROM object WHERE seq > $after ORDER BY oid;
                 SELECT oid, seq FROM tombstone WHERE seq > $after ORDER BY oid;
                 SELECT VALUE value FROM ONLY meta:seq;
                 SELECT count() AS n FROM object GROUP ALL;
                 SELECT * OMIT id FROM memory WHERE seq > $after ORDER BY key;
                 SELECT key, seq FROM memory_tombstone WHERE seq > $after ORDER BY key;
                 SELECT count() AS n FROM memory GROUP ALL;
                 COMMIT TRANSACTION;"
            );
            let mut res = db
                .query(sql)
                .bind(("after", after as i64))
                .await
                .map_err(db_err)?;
            let objects: Vec<Json> = res.take(1).map_err(db_err)?;
            let tombstones: Vec<Json> = res.take(2).map_err(db_err)?;
            let seq: Option<i64> = res.take(3).map_err(db_err)?;
            let counts: Vec<Json> = res.take(4).map_err(db_err)?;
            let memories: Vec<Json> = res.take(5).map_err(db_err)?;
            let memory_tombstones: Vec<Json> = res.take(6).map_err(db_err)?;
            let memory_counts: Vec<Json> = res.take(7).map_err(db_err)?;
            let n = |rows: &[Json]| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
            Ok(Changes {
                objects,
                tombstones,
                memories,
                memory_tombstones,
                seq: seq.unwrap_or(0).max(0) as u64,
                total_objects: n(&counts),
                total_memories: n(&memory_counts),
            })
        })
        .await?
    }

    /// Applies backed-up changes: upserts the rows, deletes tombstoned objects, records the
    /// tombstones and the sequence. Used by restores into a fresh database.
    pub async fn apply(&self, changes: Changes) -> Result<()> {
        const BATCH: usize = 500;
        let Changes {
            objects,
            tombstones,
            memories,
            memory_tombstones,
            seq,
            ..
        } = changes;
        self.upsert_batches("memory", "key", memories, BATCH)
            .await?;
        self.run_statement(
            "BEGIN TRANSACTION;
             FOR $t IN $rows {
                 DELETE type::record('memory', $t.key) RETURN NONE;
                 UPSERT type::record('memory_tombstone', $t.key) CONTENT $t RETURN NONE;
             };
             COMMIT TRANSACTION;",
            Json::Array(memory_tombstones),
        )
        .await?;
        self.upsert_batches("object", "oid", objects, BATCH).await?;
        let tombs = Json::Array(tombstones);
        self.run(move |db| async move {
            db.query(
                "BEGIN TRANSACTION;
                 FOR $t IN $tombs {
                     DELETE type::record('object', $t.oid) RETURN NONE;
                     UPSERT type::record('tombstone', $t.oid) CONTENT $t RETURN NONE;
                 };
                 UPSERT meta:seq SET value = $seq RETURN NONE;
                 COMMIT TRANSACTION;",
            )
            .bind(("tombs", tombs))
            .bind(("seq", seq as i64))
            .await
            .and_then(|r| r.check())
            .map_err(db_err)
        })
        .await??;
        Ok(())
    }

    /// Upserts `rows` into `table` (record id from the field `id_field`), `batch` per transaction.
    async fn upsert_batches(
        &self,
        table: &'static str,
        id_field: &'static str,
        rows: Vec<Json>,
        batch: usize,
    ) -> Result<()> {
        let sql = format!(
            "BEGIN TRANSACTION;
             FOR $r IN $rows {{ UPSERT type::record('{table}', $r.{id_field}) CONTENT $r RETURN NONE; }};
             COMMIT TRANSACTION;"
        );
        for chunk in rows.chunks(batch) {
            self.run_statement(&sql, Json::Array(chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Runs one statement with `$rows` bound.
    async fn run_statement(&self, sql: &str, rows: Json) -> Result<()> {
        let sql = sql.to_string();
        self.run(move |db| async move {
            db.query(sql)
                .bind(("rows", rows))
                .await
                .and_then(|r| r.check())
                .map(|_| ())
                .map_err(db_err)
        })
        .await?
    }

    /// One page of the object list, ordered by oid.
    pub async fn list(&self, offset: u64, limit: u64) -> Result<Vec<ObjectSummary>> {
        self.run(move |db| async move {
            let mut res = db
                .query("SELECT oid, name FROM object ORDER BY oid LIMIT $limit START $offset")
                .bind(("limit", limit as i64))
                .bind(("offset", offset as i64))
                .await
                .map_err(db_err)?;
            let rows: Vec<Json> = res.take(0).map_err(db_err)?;
            Ok(rows
                .into_iter()
                .map(|r| ObjectSummary {
                    oid: r["oid"].as_str().unwrap_or_default().to_string(),
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                })
                .collect())
        })
        .await?
    }

    /// How many memory records there are.
    pub async fn memory_count(&self) -> Result<u64> {
        self.run(|db| async move {
            let mut res = db
                .query("SELECT count() AS n FROM memory GROUP ALL")
                .await
                .map_err(db_err)?;
            let rows: Vec<Json> = res.take(0).map_err(db_err)?;
            Ok(rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0))
        })
        .await?
    }

    /// Records one kernel run (learned or failed).
    pub async fn record_attempt(&self, attempt: Json) -> Result<()> {
        self.run(move |db| async move {
            db.query("CREATE attempt CONTENT $a RETURN NONE")
                .bind(("a", attempt))
                .await
                .and_then(|r| r.check())
                .map_err(db_err)
                .map(|_| ())
        })
        .await?
    }

    /// Failed kernel runs of `selector` on `receiver` since `since` (seconds since the epoch).
    pub async fn recent_failures(
        &self,
        receiver: &str,
        selector: &str,
        since: i64,
    ) -> Result<Vec<Json>> {
        let (receiver, selector) = (receiver.to_string(), selector.to_string());
        self.run(move |db| async move {
            let mut res = db
                .query(
                    "SELECT stage, reason, at FROM attempt
                     WHERE receiver = $r AND selector = $s AND ok = false AND at >= $since
                     ORDER BY at",
                )
                .bind(("r", receiver))
                .bind(("s", selector))
                .bind(("since", since))
                .await
                .map_err(db_err)?;
            res.take::<Vec<Json>>(0).map_err(db_err)
        })
        .await?
    }

    /// Every object's oid.
    pub async fn all_oids(&self) -> Result<Vec<String>> {
        self.run(|db| async move {
            let mut res = db
                .query("SELECT VALUE oid FROM object ORDER BY oid")
                .await
                .map_err(db_err)?;
            res.take::<Vec<String>>(0).map_err(db_err)
        })
        .await?
    }

    /// The oids of objects that name `oid` as a parent.
    pub fn children_blocking(&self, oid: &str) -> Result<Vec<String>> {
        let oid = oid.to_string();
        self.block(move |db| async move {
            let mut res = db
                .query("SELECT VALUE oid FROM object WHERE parents CONTAINS $oid LIMIT 10")
                .bind(("oid", oid))
                .await
                .map_err(db_err)?;
            res.take::<Vec<String>>(0).map_err(db_err)
        })?
    }

    /// How many objects the world holds.
    pub async fn count(&self) -> Result<u64> {
        self.run(|db| async move {
            let mut res = db
                .query("SELECT count() AS n FROM object GROUP ALL")
                .await
                .map_err(db_err)?;
            let rows: Vec<Json> = res.take(0).map_err(db_err)?;
            Ok(rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0))
        })
        .await?
    }
}

/// The marker a damaged data directory carries until it is replaced by a restore.
pub const DAMAGED_MARKER: &str = "DAMAGED";

static CORRUPTION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A tracing layer that notices the storage engine reporting corruption.
///
/// SurrealKV, on finding a bad checksum in its write-ahead log, truncates the log at that point
/// and carries on: every commit after the damage would be dropped without an error. Its log
/// events are the only signal it gives, so the server listens for them while opening the
/// database and refuses to start (see [`Store::open`]).
pub struct CorruptionWatch;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CorruptionWatch {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN {
            return;
        }
        // SurrealKV logs through the `log` crate: its target arrives as a `log.target` field.
        #[derive(Default)]
        struct Fields {
            message: String,
            target: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "log.target" {
                    self.target = value.to_string();
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "log.target" => self.target = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let from_kv = meta.target().starts_with("surrealkv") || f.target.starts_with("surrealkv");
        if from_kv && f.message.to_lowercase().contains("corrupt") {
            let mut slot = CORRUPTION.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(f.message);
        }
    }
}

fn take_corruption() -> Option<String> {
    CORRUPTION.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Refuses a data directory marked damaged, with the way out.
fn check_not_damaged(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(DAMAGED_MARKER);
    if let Ok(detail) = std::fs::read_to_string(&marker) {
        bail!(
            "the database in {} is damaged and TelOS will not start on it, so nothing is silently lost ({}). \
             Restore the newest good backup with ./ops/restore.sh (see \"Recovering a damaged database\" in the README); \
             the damaged directory is kept aside",
            dir.display(),
            detail.trim()
        );
    }
    Ok(())
}

/// Refuses to awaken an empty world where one was expected: the data directory is missing or
/// has no database, yet beside it lie the remains of a restore (`DATA.restore-*`) or a data
/// directory moved aside (`DATA.broken-*`). Starting would silently begin a new, empty world.
pub fn check_world_expected(data_dir: &Path) -> anyhow::Result<()> {
    if data_dir.join("world").exists() {
        return Ok(());
    }
    let Some(name) = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Ok(());
    };
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!("{name}.restore-")) || n.starts_with(&format!("{name}.broken-"))
        })
        .collect();
    found.sort();
    if let Some(last) = found.last() {
        bail!(
            "{} holds no world, but {} lies beside it: a restore was interrupted or the data directory was moved aside. \
             Run ./ops/restore.sh again, or move {} back to {}; to really start an empty world, move it elsewhere first",
            data_dir.display(),
            parent.join(last).display(),
            parent.join(last).display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// Takes the data directory's lock file; a second process gets a clear error.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("telos.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "the database in {} is in use by another TelOS process (lock file {} is held); stop that server or choose another TELOS_DATA_DIR",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

pub(crate) fn db_err(e: surrealdb::Error) -> TelosError {
    TelosError::Internal(format!("database: {e}"))
}

async fn apply_schema(db: &Surreal<Any>) -> anyhow::Result<()> {
    for (name, text) in SCHEMA {
        db.query(*text)
            .await
            .and_then(|r| r.check())
            .with_context(|| format!("applying schema file {name}"))?;
    }
    db.query("UPSERT meta:schema SET version = $v, files = $files RETURN NONE")
        .bind(("v", SCHEMA.len() as i64))
        .bind((
            "files",
            SCHEMA
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>(),
        ))
        .await
        .and_then(|r| r.check())
        .context("recording the schema version")?;
    Ok(())
}

async fn load(db: Surreal<Any>, oid: String) -> Result<Option<ObjectState>> {
    let mut res = db
        .query("SELECT doc, version FROM type::record('object', $oid)")
        .bind(("oid", oid.clone()))
        .await
        .map_err(db_err)?;
    let rows: Vec<Json> = res.take(0).map_err(db_err)?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let doc = row["doc"]
        .as_str()
        .ok_or_else(|| TelosError::Internal(format!("object {oid} has no doc")))?;
    let version = row["version"].as_u64().unwrap_or(0);
    ObjectState::from_doc(oid, doc, version).map(Some)
}

/// A consistent read of what changed after some sequence number.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Object rows (oid, name, parents, doc, version, seq).
    pub objects: Vec<Json>,
    /// `{oid, seq}` of deleted objects.
    pub tombstones: Vec<Json>,
    /// Memory records (with their vectors).
    pub memories: Vec<Json>,
    /// `{key, seq}` of forgotten memory records.
    pub memory_tombstones: Vec<Json>,
    /// The sequence number this read is consistent with.
    pub seq: u64,
    /// How many objects the world held at that point.
    pub total_objects: u64,
    /// How many memory records it held.
    pub total_memories: u64,
}

fn commit_rows(objects: &[ObjectState], deleted: &[String], seq: u64) -> (Json, Json) {
    let rows: Vec<Json> = objects
        .iter()
        .map(|o| {
            json!({
                "oid": o.oid,
                "name": o.name(),
                "parents": o.parents(),
                "doc": o.doc_json(),
                "version": o.version,
                "seq": seq,
            })
        })
        .collect();
    (Json::Array(rows), json!(deleted))
}

async fn commit(db: Surreal<Any>, rows: Json, gone: Json, seq: u64) -> Result<()> {
    db.query(
        "BEGIN TRANSACTION;
         FOR $o IN $rows { UPSERT type::record('object', $o.oid) CONTENT $o RETURN NONE; };
         FOR $x IN $gone {
             DELETE type::record('object', $x) RETURN NONE;
             UPSERT type::record('tombstone', $x) CONTENT { oid: $x, seq: $seq } RETURN NONE;
         };
         UPSERT meta:seq SET value = $seq RETURN NONE;
         COMMIT TRANSACTION;",
    )
    .bind(("rows", rows))
    .bind(("gone", gone))
    .bind(("seq", seq as i64))
    .await
    .and_then(|r| r.check())
    .map_err(|e| TelosError::Internal(format!("committing to the database: {e}")))?;
    Ok(())
}
