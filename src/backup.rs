//! The backup format and its operations: take, list, verify, restore, retention.
//!
//! A backup is a directory `BACKUP_DIR/<id>/` holding `objects.jsonl` (object rows),
//! `tombstones.jsonl` (deleted objects) and `manifest.json`. A full backup holds every object;
//! an incremental holds what was written or deleted after the previous backup's sequence number
//! and names its full (`parent`) and its predecessor (`previous`). A backup is written into a
//! temporary directory, every file fsynced, the manifest last, then renamed into place: a crash
//! leaves either a whole backup or none. Restores replay the full and its incrementals in order
//! into a new database directory and check the result before anyone uses it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail, ensure};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::store::{Changes, SCHEMA, Store, StoreConfig};

const OBJECTS: &str = "objects.jsonl";
const TOMBSTONES: &str = "tombstones.jsonl";
const MEMORIES: &str = "memories.jsonl";
const MEMORY_TOMBSTONES: &str = "memory_tombstones.jsonl";
/// The vector index and its sidecar, in full backups (a cache of the records: a restore that
/// lacks them, or finds them stale, rebuilds the index from the records at start).
const INDEX: &str = "memory.usearch";
const INDEX_META: &str = "memory.usearch.meta.json";
const MANIFEST: &str = "manifest.json";
const VERIFIED: &str = "verified.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Kind> {
        match s {
            "full" => Ok(Kind::Full),
            "incremental" => Ok(Kind::Incremental),
            other => bail!("backup kind must be \"full\" or \"incremental\", not {other:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
}

/// What a backup holds, and how to check it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub id: String,
    pub kind: Kind,
    pub created_at: DateTime<Utc>,
    pub server_version: String,
    pub schema_version: usize,
    /// The full backup this incremental builds on (its own id for a full).
    pub parent: String,
    /// The backup taken just before this one in its chain.
    pub previous: Option<String>,
    /// Changes after `seq_from` up to and including `seq_to` are in this backup.
    pub seq_from: u64,
    pub seq_to: u64,
    pub files: BTreeMap<String, FileEntry>,
    /// Rows per table in this backup's files.
    pub counts: BTreeMap<String, u64>,
    /// Objects in the world at `seq_to`: what a restore up to here must produce.
    pub total_objects: u64,
    /// Memory records in the world at `seq_to` (backups made before memories existed: 0).
    #[serde(default)]
    pub total_memories: u64,
    /// The embedder that made the memory vectors. The vector index itself is not backed up: it
    /// is rebuilt from the restored records (never re-embedded) when the server starts.
    pub embedder: Option<String>,
    pub duration_ms: u64,
    /// The identity of the world backed up (empty in backups older than identities).
    #[serde(default)]
    pub world: String,
}

/// How many backups to keep (grandfather-father-son).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_full: usize,
    pub keep_incremental_days: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_full: 4,
            keep_incremental_days: 14,
        }
    }
}

/// The result of verifying one backup.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verification {
    pub id: String,
    pub ok: bool,
    pub at: DateTime<Utc>,
    pub detail: String,
}

/// Takes a backup of `store` into `dir`. An incremental with no full to build on is taken as
/// a full. Answers the manifest of the backup written. It reads the tables: under a live world
/// call [`crate::world::World::settled`] first, so changes still in the commit log are in it.
pub async fn take(
    store: &Store,
    dir: &Path,
    kind: Kind,
    now: DateTime<Utc>,
) -> anyhow::Result<Manifest> {
    take_with_index(store, dir, kind, now, None).await
}

/// [`take`], copying the memory index file at `index` (and its sidecar) into full backups.
/// A failed backup leaves nothing behind (its half-written directory is removed).
pub async fn take_with_index(
    store: &Store,
    dir: &Path,
    kind: Kind,
    now: DateTime<Utc>,
    index: Option<&Path>,
) -> anyhow::Result<Manifest> {
    let taken = write_backup(store, dir, kind, now, index).await;
    if taken.is_err() {
        remove_leftovers(dir);
    }
    taken
}

async fn write_backup(
    store: &Store,
    dir: &Path,
    kind: Kind,
    now: DateTime<Utc>,
    index: Option<&Path>,
) -> anyhow::Result<Manifest> {
    let started = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating backup dir {}", dir.display()))?;
    let existing = list(dir)?;
    let world = store.world_id().await?;
    // Only this world's backups can be built on (a backup dir may hold another world's).
    let previous = existing.iter().rev().find(|m| m.world == world).cloned();
    let kind = match (kind, &previous) {
        (Kind::Incremental, None) => {
            tracing::info!(
                "no full backup of this world yet: taking a full backup instead of an incremental"
            );
            Kind::Full
        }
        (k, _) => k,
    };
    let after = match kind {
        Kind::Full => 0,
        Kind::Incremental => previous.as_ref().map(|p| p.seq_to).unwrap_or(0),
    };
    // A full read reports its pages; an incremental's is short and shows as "read".
    crate::progress::report("read", 0, 0);
    let changes = store.changes_since(after).await?;
    let mut id = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        match kind {
            Kind::Full => "full",
            Kind::Incremental => "incr",
        }
    );
    while dir.join(&id).exists() {
        id.push('x');
    }
    let tmp = dir.join(format!(".tmp-{id}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let mut files = BTreeMap::new();
    files.insert(
        OBJECTS.to_string(),
        write_jsonl(&tmp.join(OBJECTS), &changes.objects, "objects")?,
    );
    files.insert(
        TOMBSTONES.to_string(),
        write_jsonl(&tmp.join(TOMBSTONES), &changes.tombstones, "tombstones")?,
    );
    files.insert(
        MEMORIES.to_string(),
        write_jsonl(&tmp.join(MEMORIES), &changes.memories, "memories")?,
    );
    files.insert(
        MEMORY_TOMBSTONES.to_string(),
        write_jsonl(
            &tmp.join(MEMORY_TOMBSTONES),
            &changes.memory_tombstones,
            "memory tombstones",
        )?,
    );
    if let (Kind::Full, Some(index)) = (kind, index) {
        let meta = crate::memory::index::meta_path(index);
        if index.exists() && meta.exists() {
            files.insert(INDEX.to_string(), copy_hashed(index, &tmp.join(INDEX))?);
            files.insert(
                INDEX_META.to_string(),
                copy_hashed(&meta, &tmp.join(INDEX_META))?,
            );
        }
    }
    let (parent, prev_id) = match kind {
        Kind::Full => (id.clone(), previous.as_ref().map(|p| p.id.clone())),
        Kind::Incremental => {
            let p = previous.as_ref().expect("checked above");
            (p.parent.clone(), Some(p.id.clone()))
        }
    };
    let mut counts = BTreeMap::new();
    counts.insert("object".to_string(), changes.objects.len() as u64);
    counts.insert("tombstone".to_string(), changes.tombstones.len() as u64);
    counts.insert("memory".to_string(), changes.memories.len() as u64);
    counts.insert(
        "memory_tombstone".to_string(),
        changes.memory_tombstones.len() as u64,
    );
    let manifest = Manifest {
        id: id.clone(),
        kind,
        created_at: now,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version: SCHEMA.len(),
        parent,
        previous: prev_id,
        seq_from: after,
        seq_to: changes.seq.max(after),
        files,
        counts,
        total_objects: changes.total_objects,
        total_memories: changes.total_memories,
        embedder: Some(crate::embed::EMBEDDER_ID.to_string()),
        duration_ms: started.elapsed().as_millis() as u64,
        world,
    };
    write_atomic(&tmp.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    fsync_dir(&tmp)?;
    fs::rename(&tmp, dir.join(&id)).context("moving the finished backup into place")?;
    fsync_dir(dir)?;
    tracing::info!(
        id = %manifest.id,
        kind = ?manifest.kind,
        objects = changes.objects.len(),
        deleted = changes.tombstones.len(),
        ms = manifest.duration_ms,
        "backup written"
    );
    Ok(manifest)
}

fn write_jsonl(path: &Path, rows: &[Json], phase: &str) -> anyhow::Result<FileEntry> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let total = rows.len() as u64;
    crate::progress::report(phase, 0, total);
    for (i, row) in rows.iter().enumerate() {
        if i % 1000 == 999 {
            crate::progress::report(phase, i as u64 + 1, total);
        }
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        hasher.update(&line);
        size += line.len() as u64;
        out.write_all(&line)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    crate::progress::report(phase, total, total);
    Ok(FileEntry {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// Copies `from` to `to`, answering the copy's sha256 and size.
fn copy_hashed(from: &Path, to: &Path) -> anyhow::Result<FileEntry> {
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.sync_all()?;
    Ok(FileEntry {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Every complete backup in `dir`, oldest first. Half-written ones (`.tmp-*`) are ignored.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().join(MANIFEST).exists() {
            continue;
        }
        // One damaged manifest must not stop every later backup: report it and go on.
        match read_manifest(&entry.path()) {
            Ok(m) if m.id == name => out.push(m),
            Ok(m) => tracing::warn!(
                dir = %entry.path().display(),
                id = %m.id,
                "a backup manifest names another id than its directory: skipped"
            ),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "an unreadable backup manifest: skipped"
            ),
        }
    }
    out.sort_by(|a, b| (a.seq_to, &a.id).cmp(&(b.seq_to, &b.id)));
    Ok(out)
}

fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let text = fs::read_to_string(path.join(MANIFEST))
        .with_context(|| format!("reading {}", path.join(MANIFEST).display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", path.join(MANIFEST).display()))
}

/// The backups part of `/api/health` (blocking: reads every manifest and verification).
pub fn summary(dir: &Path) -> Json {
    let backups = list(dir).unwrap_or_default();
    let last_of = |kind: Kind| {
        backups.iter().rev().find(|m| m.kind == kind).map(|m| {
            serde_json::json!({
                "id": m.id,
                "at": m.created_at,
                "size": size_of(m),
                "verification": last_verification(dir, &m.id),
            })
        })
    };
    serde_json::json!({
        "count": backups.len(),
        "bytes": backups.iter().map(size_of).sum::<u64>(),
        "last_full": last_of(Kind::Full),
        "last_incremental": last_of(Kind::Incremental),
    })
}

/// [`summary`] as last computed: health and `/metrics` read it without touching a disk; the
/// backup actor refreshes it (on a blocking worker) whenever a backup, a verification or a
/// purge changes what is on disk.
#[derive(Clone, Default)]
pub struct SummaryCache(Arc<RwLock<Option<Json>>>);

impl SummaryCache {
    /// The cached summary, if one was computed yet.
    pub fn get(&self) -> Option<Json> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Recomputes the summary from `dir` (blocking).
    pub fn refresh(&self, dir: &Path) -> Json {
        let fresh = summary(dir);
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        fresh
    }
}

/// The last recorded verification of a backup, if any.
pub fn last_verification(dir: &Path, id: &str) -> Option<Verification> {
    let text = fs::read_to_string(dir.join(id).join(VERIFIED)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Total size of a backup's files.
pub fn size_of(m: &Manifest) -> u64 {
    m.files.values().map(|f| f.size).sum()
}

/// Re-hashes every file of one backup; the error names the first bad file.
pub fn check_files(dir: &Path, m: &Manifest) -> anyhow::Result<()> {
    for (name, entry) in &m.files {
        let path = dir.join(&m.id).join(name);
        let mut f =
            File::open(&path).with_context(|| format!("backup {} is missing {name}", m.id))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        let sha = hex::encode(hasher.finalize());
        ensure!(
            size == entry.size && sha == entry.sha256,
            "backup {}: file {name} does not match its manifest (sha256 {sha}, {size} bytes; expected {}, {} bytes)",
            m.id,
            entry.sha256,
            entry.size
        );
    }
    Ok(())
}

/// The chain that restores to `id` (default: the newest backup): its full, then each
/// incremental up to `id`, in order.
pub fn chain(dir: &Path, id: Option<&str>) -> anyhow::Result<Vec<Manifest>> {
    if let Some(id) = id {
        validate_id(id)?;
    }
    let all = list(dir)?;
    let target = match id {
        Some(id) => all
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| anyhow!("no backup {id} in {}", dir.display()))?,
        None => all
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("no backups in {}", dir.display()))?,
    };
    let by_id: BTreeMap<&str, &Manifest> = all.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut out = vec![target.clone()];
    let mut cur = target;
    while cur.kind == Kind::Incremental {
        let prev = cur
            .previous
            .as_deref()
            .and_then(|p| by_id.get(p))
            .ok_or_else(|| {
                anyhow!(
                    "backup {} needs {:?}, which is missing",
                    cur.id,
                    cur.previous
                )
            })?;
        out.push((*prev).clone());
        cur = (*prev).clone();
    }
    out.reverse();
    Ok(out)
}

/// Rows per insert when restoring into an empty store.
const RESTORE_CHUNK: usize = 500;

/// Inserts the rows of the JSON-lines file `path` into the empty `table`, parsing on a
/// blocking thread while earlier chunks are inserted (two at a time: they touch disjoint
/// keys); reports `restore {table}` progress against `total` (the manifest's count).
async fn insert_streamed(
    store: &Store,
    table: &'static str,
    id_field: &'static str,
    path: &Path,
    total: Option<u64>,
) -> anyhow::Result<()> {
    let (chunks, mut parsed) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<Json>>>(4);
    let file = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
        let read = for_each_jsonl(&file, |row| {
            chunk.push(row);
            if chunk.len() == RESTORE_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK));
                // The inserter gone (it failed): stop reading.
                return chunks.blocking_send(Ok(full)).is_ok();
            }
            true
        });
        let last = match read {
            Ok(()) if chunk.is_empty() => return,
            Ok(()) => Ok(chunk),
            Err(e) => Err(e),
        };
        let _ = chunks.blocking_send(last);
    });
    let phase = format!("restore {table}");
    let total = total.unwrap_or(0);
    crate::progress::report(&phase, 0, total);
    let incoming = futures_util::stream::poll_fn(move |cx| parsed.poll_recv(cx));
    let mut inserts = incoming
        .map(|chunk| async move {
            let chunk = chunk?;
            let n = chunk.len() as u64;
            store.insert_fresh(table, id_field, chunk).await?;
            anyhow::Ok(n)
        })
        .buffer_unordered(2);
    let mut done = 0;
    while let Some(inserted) = inserts.next().await {
        done += inserted?;
        crate::progress::report(&phase, done, total.max(done));
    }
    reader.await?;
    Ok(())
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Json>> {
    let mut rows = Vec::new();
    for_each_jsonl(path, |row| {
        rows.push(row);
        true
    })?;
    Ok(rows)
}

/// Calls `each` with every row of the JSON-lines file `path` until it answers false.
fn for_each_jsonl(path: &Path, mut each: impl FnMut(Json) -> bool) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        if !each(row) {
            break;
        }
    }
    Ok(())
}

/// Rebuilds a database in `to` (which must not exist or be empty) from the chain ending at
/// `id`, after checking every file, and checks the result. Answers the manifest restored to.
pub async fn restore(dir: &Path, id: Option<&str>, to: &Path) -> anyhow::Result<Manifest> {
    if to.exists() && fs::read_dir(to)?.next().is_some() {
        bail!(
            "{} is not empty: restore into a new directory, then swap it in",
            to.display()
        );
    }
    let chain = chain(dir, id)?;
    for m in &chain {
        check_files(dir, m)?;
    }
    let cfg = StoreConfig::embedded(to.to_path_buf());
    let store = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Store::open_empty(&cfg)).await??
    };
    for (i, m) in chain.iter().enumerate() {
        let base = dir.join(&m.id);
        // Backups made before memories existed have no memory files.
        let optional = |name: &str| -> anyhow::Result<Vec<Json>> {
            if m.files.contains_key(name) {
                read_jsonl(&base.join(name))
            } else {
                Ok(Vec::new())
            }
        };
        if i == 0 {
            // Into an empty store, the two large files are read while they are inserted:
            // parsing and inserting overlap.
            for (file, table, key) in [(MEMORIES, "memory", "key"), (OBJECTS, "object", "oid")] {
                if m.files.contains_key(file) {
                    let total = m.counts.get(table).copied();
                    insert_streamed(&store, table, key, &base.join(file), total).await?;
                }
            }
        }
        let changes = Changes {
            objects: if i == 0 {
                Vec::new()
            } else {
                read_jsonl(&base.join(OBJECTS))?
            },
            tombstones: read_jsonl(&base.join(TOMBSTONES))?,
            memories: if i == 0 {
                Vec::new()
            } else {
                optional(MEMORIES)?
            },
            memory_tombstones: optional(MEMORY_TOMBSTONES)?,
            seq: m.seq_to,
            total_objects: m.total_objects,
            total_memories: m.total_memories,
        };
        if i == 0 {
            store.apply_fresh(changes).await?;
        } else {
            store.apply(changes).await?;
        }
    }
    let last = chain.last().expect("a chain is never empty").clone();
    ensure!(
        chain.iter().all(|m| m.world == chain[0].world),
        "backup {} chains backups of different worlds: it cannot be restored",
        last.id
    );
    if !chain[0].world.is_empty() {
        store.set_world_id(&chain[0].world).await?;
    }
    // The full's index files, if it has them: the server loads them at start and catches up
    // with the incrementals' records.
    let full = &chain[0];
    if full.files.contains_key(INDEX) && full.files.contains_key(INDEX_META) {
        fs::create_dir_all(to)?;
        fs::copy(dir.join(&full.id).join(INDEX), to.join(INDEX))?;
        fs::copy(dir.join(&full.id).join(INDEX_META), to.join(INDEX_META))?;
    }
    let count = store.count().await?;
    ensure!(
        count == last.total_objects,
        "restored {count} objects, but backup {} recorded {}",
        last.id,
        last.total_objects
    );
    let memories = store.memory_count().await?;
    ensure!(
        memories == last.total_memories,
        "restored {memories} memory records, but backup {} recorded {}",
        last.id,
        last.total_memories
    );
    drop(store);
    Ok(last)
}

/// Compares the index restored into `data` (if any) with the restored records. An index that
/// cannot be opened fails the verification; one that lacks some records is fine (the server
/// adds them at start), and so is one that still holds forgotten keys (they are dropped).
async fn index_agreement(data: &Path) -> anyhow::Result<String> {
    use crate::embed::{DIMS, EMBEDDER_ID};
    use crate::memory::index::VectorIndex;
    let path = data.join(INDEX);
    if !path.exists() {
        return Ok(
            "no index file in the backup: the index is rebuilt from the records at start".into(),
        );
    }
    let index = VectorIndex::open(&path, EMBEDDER_ID, DIMS)
        .map_err(|reason| anyhow::anyhow!("the backed-up memory index is unusable: {reason}"))?;
    let cfg = StoreConfig::embedded(data.to_path_buf());
    let keys = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u64>> {
        let store = Store::open_empty(&cfg)?;
        Ok(store.memory_keys_blocking()?)
    })
    .await??;
    let records: std::collections::BTreeSet<u64> = keys.into_iter().collect();
    let missing = records.iter().filter(|k| !index.contains(**k)).count();
    let orphans = index.keys().difference(&records).count();
    Ok(format!(
        "the index holds {} of {} records ({missing} added at start, {orphans} forgotten keys dropped)",
        records.len() - missing,
        records.len()
    ))
}

/// Verifies a backup: its chain's files against their manifests, then a restore into a scratch
/// directory, and the restored index against the restored records. The result is recorded
/// beside the backup.
pub async fn verify(dir: &Path, id: &str, now: DateTime<Utc>) -> anyhow::Result<Verification> {
    validate_id(id)?;
    let scratch = std::env::temp_dir().join(format!(
        "telos-verify-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = match restore(dir, Some(id), &scratch).await {
        Ok(m) => index_agreement(&scratch).await.map(|index| (m, index)),
        Err(e) => Err(e),
    };
    let _ = fs::remove_dir_all(&scratch);
    let v = Verification {
        id: id.to_string(),
        ok: result.is_ok(),
        at: now,
        detail: match &result {
            Ok((m, index)) => format!(
                "all files match; a restore produced {} objects and {} memory records as recorded; {index}",
                m.total_objects, m.total_memories
            ),
            Err(e) => format!("{e:#}"),
        },
    };
    if dir.join(id).is_dir() {
        write_atomic(
            &dir.join(id).join(VERIFIED),
            &serde_json::to_vec_pretty(&v)?,
        )?;
    }
    tracing::info!(id, ok = v.ok, detail = %v.detail, "backup verified");
    Ok(v)
}

/// Which backups the policy drops at `now`: all fulls but the newest `keep_full`, and
/// incrementals older than `keep_incremental_days` or whose full is dropped — but never a full
/// (or a predecessor) that a kept incremental needs.
pub fn plan_retention(all: &[Manifest], now: DateTime<Utc>, policy: Retention) -> Vec<String> {
    let fulls: Vec<&Manifest> = all.iter().filter(|m| m.kind == Kind::Full).collect();
    let kept_fulls: BTreeSet<&str> = fulls
        .iter()
        .rev()
        .take(policy.keep_full)
        .map(|m| m.id.as_str())
        .collect();
    let horizon = now - ChronoDuration::days(policy.keep_incremental_days);
    let mut keep: BTreeSet<&str> = kept_fulls.clone();
    for m in all.iter().filter(|m| m.kind == Kind::Incremental) {
        if m.created_at >= horizon && kept_fulls.contains(m.parent.as_str()) {
            keep.insert(m.id.as_str());
        }
    }
    // A kept incremental needs every backup before it in its chain.
    let by_id: BTreeMap<&str, &Manifest> = all.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut stack: Vec<&str> = keep.iter().copied().collect();
    while let Some(id) = stack.pop() {
        if let Some(m) = by_id.get(id)
            && m.kind == Kind::Incremental
            && let Some(prev) = m.previous.as_deref()
            && keep.insert(prev)
        {
            stack.push(prev);
        }
    }
    all.iter()
        .filter(|m| !keep.contains(m.id.as_str()))
        .map(|m| m.id.clone())
        .collect()
}

/// Applies the retention policy to `dir`; answers the ids removed.
pub fn purge(dir: &Path, now: DateTime<Utc>, policy: Retention) -> anyhow::Result<Vec<String>> {
    let all = list(dir)?;
    let drop = plan_retention(&all, now, policy);
    for id in &drop {
        fs::remove_dir_all(dir.join(id)).with_context(|| format!("removing backup {id}"))?;
        tracing::info!(id, "backup purged by retention");
    }
    Ok(drop)
}

/// The path of one backup.
pub fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// Checks that `id` is a backup id as [`take`] makes them (`20260101T030000123Z-full`), so it
/// can never name a path outside the backup directory.
pub fn validate_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-');
    if !ok {
        anyhow::bail!(
            "{:?} is not a backup id (letters, digits, '-' and '_', e.g. 20260101T030000123Z-full)",
            id.chars().take(80).collect::<String>()
        );
    }
    Ok(())
}

/// Exchanges two directories in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`): at every
/// instant each path names a complete directory, so an interrupted restore never leaves the
/// data directory missing or half-written.
pub fn exchange_dirs(a: &Path, b: &Path) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let cb = CString::new(b.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: both are valid NUL-terminated paths; the call reads them only.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("exchanging {} and {}", a.display(), b.display()));
    }
    if let Some(parent) = b.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Removes half-written backups (`.tmp-*`) left by a crash or a failed run.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed a half-written backup")
                }
                Err(e) => {
                    tracing::warn!(error = %e, dir = %entry.path().display(), "could not remove a half-written backup")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, kind: Kind, day: i64, parent: &str, previous: Option<&str>) -> Manifest {
        Manifest {
            id: id.into(),
            kind,
            created_at: DateTime::<Utc>::from_timestamp(0, 0).unwrap() + ChronoDuration::days(day),
            server_version: "t".into(),
            schema_version: 2,
            parent: parent.into(),
            previous: previous.map(str::to_string),
            seq_from: 0,
            seq_to: day as u64,
            files: BTreeMap::new(),
            counts: BTreeMap::new(),
            total_memories: 0,
            total_objects: 0,
            embedder: None,
            duration_ms: 0,
            world: "w".into(),
        }
    }

    #[test]
    fn backup_ids_cannot_name_other_paths() {
        for good in [
            "20260101T030000123Z-full",
            "20260101T030000123Z-incrx",
            "a_b-1",
        ] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "-rf",
            "x\0y",
            ".tmp-x",
            &"a".repeat(65),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retention_keeps_the_last_fulls_and_recent_incrementals_with_their_chains() {
        // Fulls on days 0, 7, 14, 21, 28, 35; an incremental every other day.
        let mut all = Vec::new();
        let mut prev: Option<String> = None;
        let mut full = String::new();
        for day in 0..42 {
            if day % 7 == 0 {
                full = format!("f{day:02}");
                all.push(m(&full, Kind::Full, day, &full, prev.as_deref()));
                prev = Some(full.clone());
            } else if day % 2 == 0 {
                let id = format!("i{day:02}");
                all.push(m(&id, Kind::Incremental, day, &full, prev.as_deref()));
                prev = Some(id);
            }
        }
        let now = all.last().unwrap().created_at;
        let dropped = plan_retention(&all, now, Retention::default());
        assert!(dropped.contains(&"f00".to_string()) && dropped.contains(&"f07".to_string()));
        assert!(
            !dropped
                .iter()
                .any(|d| ["f14", "f21", "f28", "f35"].contains(&d.as_str()))
        );
        assert!(dropped.contains(&"i20".to_string()), "older than 14 days");
        assert!(!dropped.contains(&"i30".to_string()) && !dropped.contains(&"i40".to_string()));
    }
}
