//! The commit log.
//!
//! A group commit appends one record holding every object and deletion of its batch as one JSON
//! text, and is answered once that record is durable. Where records go depends on where the
//! world lives ([`Sink`]):
//!
//! - **Embedded** (the default): segment files `DATA_DIR/commit-log/N.log`, one framed record
//!   per group commit (length, CRC-32, sequence number, text), made durable by one
//!   `fdatasync` — about 0.1 ms on the reference machine, where a record in a database table
//!   costs 0.2–0.4 ms of the database's CPU and ~0.8 ms under load. A record torn by a crash
//!   (never acknowledged: the answer waits for the sync) ends its file's replay.
//! - **A SurrealDB server**: segment tables `commit_log_N` in the database, so the log is where
//!   the data is.
//!
//! A checkpoint writes the newest state of every object logged since the last one (each row
//! stamped with the sequence number of its newest write; an object written many times is
//! written once) and their tombstones and advances `meta:seq`, in one transaction. Appends go
//! on meanwhile, into the same segment until it is full (`world::SEGMENT_RECORDS` records;
//! then a checkpoint moves them on to a new one): a new file, its directory sync and the old
//! file's removal at every checkpoint were file-system metadata writes beside the appends'
//! `fdatasync`, and under load they sometimes waited 100–400 ms on this machine's disk.
//! Segments no longer appended to are removed by the next checkpoint: segment tables in its
//! transaction (`REMOVE TABLE` costs a few µs per record where deleting records one by one
//! costs 75–150 µs each), segment files once it has committed, outside the log's lock. Opening
//! the store replays whatever segments are left (skipping records at or below `meta:seq`), so
//! a change acknowledged from the log survives a crash.
//!
//! The invariant readers rely on: every change numbered up to `meta:seq` is in the tables, every
//! log record not yet applied is numbered above it (records at or below it, in the segment
//! appended to or in a file left by a crash between a checkpoint's commit and the file's
//! removal, are skipped by replay). The world keeps what the log holds in memory until it is checkpointed (see
//! [`crate::world`]); backups and listings read the tables after a checkpoint. Segments are not
//! written to backups.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

use super::{Result, Store, StoreError, db_err, write_tombstoned};
use crate::object::ObjectState;

/// What one log record holds.
#[derive(Serialize, Deserialize)]
struct Batch {
    /// Object rows as the table holds them (stamped with the record's sequence number).
    objects: Vec<Json>,
    /// Oids deleted.
    gone: Vec<String>,
}

/// The object row the tables hold, stamped with `seq`.
pub(super) fn object_row(o: &ObjectState, seq: u64) -> Json {
    json!({
        "oid": o.oid,
        "name": o.name(),
        "parents": o.parents(),
        "doc": o.doc_json(),
        "version": o.version,
        "seq": seq,
    })
}

/// The newest logged state of each object a checkpoint writes.
#[derive(Default)]
pub struct Checkpoint {
    /// Object rows, each stamped with the sequence number of its newest write.
    rows: BTreeMap<String, Json>,
    /// Deleted oids and the sequence number of their deletion.
    gone: BTreeMap<String, u64>,
    /// The segments applied (removed by the checkpoint).
    segments: Vec<u64>,
}

const SEGMENT_PREFIX: &str = "commit_log_";

/// What a start finds of the log: the segments left, and their records (sequence number, text).
type Leftover = (Vec<u64>, Vec<(u64, String)>);

/// The table of log segment `n`.
fn segment_table(n: u64) -> String {
    format!("{SEGMENT_PREFIX}{n}")
}

impl Checkpoint {
    /// `obj` as written at `seq` (a later call for the same oid replaces it).
    pub fn write(&mut self, obj: &ObjectState, seq: u64) {
        self.write_row(obj.oid.clone(), object_row(obj, seq));
    }

    /// An object row (already stamped) for `oid`; a later one replaces it.
    fn write_row(&mut self, oid: String, row: Json) {
        self.gone.remove(&oid);
        self.rows.insert(oid, row);
    }

    /// `oid` deleted at `seq`.
    pub fn delete(&mut self, oid: &str, seq: u64) {
        self.rows.remove(oid);
        self.gone.insert(oid.to_string(), seq);
    }

    /// Log segment `n` is applied by this checkpoint (its table is removed with it).
    pub fn applies(&mut self, n: u64) {
        self.segments.push(n);
    }

    /// The segments this checkpoint applies.
    pub fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// Nothing to write and no segment to remove.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.gone.is_empty() && self.segments.is_empty()
    }

    /// Rows written (objects and tombstones).
    pub fn len(&self) -> usize {
        self.rows.len() + self.gone.len()
    }
}

impl Store {
    /// Appends one group commit to log segment `segment` (durable when this returns).
    pub fn append_log_blocking(
        &self,
        segment: u64,
        objects: &[ObjectState],
        deleted: &[String],
        seq: u64,
    ) -> Result<()> {
        let batch = Batch {
            objects: objects.iter().map(|o| object_row(o, seq)).collect(),
            gone: deleted.to_vec(),
        };
        let text = serde_json::to_string(&batch).map_err(StoreError::malformed("a log batch"))?;
        match &self.inner.log {
            Sink::Files(files) => lock(files)
                .append(segment, seq, text.as_bytes())
                .map_err(|source| StoreError::Log {
                    what: format!("appending record {seq} to segment {segment}"),
                    source,
                }),
            Sink::Tables => self.block(move |db| async move {
                db.query(
                    "CREATE type::record($table, $seq) CONTENT { seq: $seq, batch: $batch } RETURN NONE",
                )
                .bind(("table", segment_table(segment)))
                .bind(("seq", seq as i64))
                .bind(("batch", text))
                .await
                .and_then(|r| r.check())
                .map(|_| ())
                .map_err(db_err)
            })?,
        }
    }

    /// Writes a checkpoint's rows and tombstones, removes the segments it applied and sets
    /// `meta:seq` to `seq` (the newest record applied), in one transaction (segment files are
    /// removed once it has committed).
    pub fn checkpoint_blocking(&self, cp: Checkpoint, seq: u64) -> Result<()> {
        self.checkpoint_removing(cp, seq, &[])
    }

    /// [`Store::checkpoint_blocking`], also removing the segment tables `tables` (left by a
    /// server that kept an embedded store's log in tables).
    fn checkpoint_removing(&self, cp: Checkpoint, seq: u64, tables: &[u64]) -> Result<()> {
        if cp.is_empty() && tables.is_empty() {
            return Ok(());
        }
        let drop_tables = |segments: &[u64]| -> String {
            segments
                .iter()
                .map(|n| format!("REMOVE TABLE IF EXISTS {};\n", segment_table(*n)))
                .collect()
        };
        let rows = Json::Array(cp.rows.into_values().collect());
        let gone: Vec<Json> = cp
            .gone
            .into_iter()
            .map(|(oid, seq)| json!({ "oid": oid, "seq": seq }))
            .collect();
        let segments = cp.segments;
        match &self.inner.log {
            Sink::Files(files) => {
                let remove = drop_tables(tables);
                self.block(move |db| apply(db, rows, Json::Array(gone), remove, seq))??;
                let applied = lock(files).forget(&segments);
                remove_segment_files(&applied);
                Ok(())
            }
            Sink::Tables => {
                let remove = drop_tables(&segments);
                self.block(move |db| apply(db, rows, Json::Array(gone), remove, seq))?
            }
        }
    }

    /// Applies whatever log segments are left (a crash or a kill left them), oldest record
    /// first, and removes them. Answers how many log records were replayed.
    pub(super) fn replay_log_blocking(&self) -> Result<usize> {
        let applied = self.current_seq_blocking()?;
        // An embedded store's log was kept in tables by earlier versions: what a crash (or
        // a stop: there is no checkpoint at exit) left there is replayed with the files.
        let (tables, mut records) = self.read_log_tables()?;
        // `segments` are the sink's own (removed as a checkpoint removes them); `tables`, those
        // left in tables beside segment files.
        let (segments, tables) = match &self.inner.log {
            Sink::Files(files) => {
                let (segments, mut from_files) = lock(files).read_all()?;
                records.append(&mut from_files);
                (segments, tables)
            }
            Sink::Tables => (tables, Vec::new()),
        };
        if segments.is_empty() && tables.is_empty() {
            return Ok(0);
        }
        // A record at or below meta:seq was applied already (the segment appended to holds
        // checkpointed records, and a crash between a checkpoint's commit and a file's removal
        // leaves one): writing it again could undo newer rows. Skipped before it is parsed.
        let mut batches = Vec::new();
        for (seq, text) in records.iter().filter(|(seq, _)| *seq > applied) {
            let batch: Batch = serde_json::from_str(text)
                .map_err(StoreError::malformed(format!("log record {seq}")))?;
            batches.push((*seq, batch));
        }
        batches.sort_by_key(|(seq, _)| *seq);
        let replayed = batches.len();
        let mut cp = Checkpoint::default();
        let mut newest = applied;
        for (seq, batch) in batches {
            for mut row in batch.objects {
                let oid = row["oid"].as_str().unwrap_or_default().to_string();
                row["seq"] = json!(seq);
                cp.write_row(oid, row);
            }
            for oid in batch.gone {
                cp.delete(&oid, seq);
            }
            newest = seq;
        }
        for n in &segments {
            cp.applies(*n);
        }
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                segments = segments.len() + tables.len(),
                rows = cp.len(),
                "replaying the commit log left by the last run"
            );
        }
        self.checkpoint_removing(cp, newest, &tables)?;
        Ok(replayed)
    }

    /// The segment tables left in the database and their records (sequence number, text).
    fn read_log_tables(&self) -> Result<Leftover> {
        self.block(|db| async move {
            let mut res = db.query("INFO FOR DB;").await?;
            let info: Option<Json> = res.take(0)?;
            let mut segments: Vec<u64> = info
                .as_ref()
                .and_then(|i| i["tables"].as_object())
                .map(|t| {
                    t.keys()
                        .filter_map(|name| name.strip_prefix(SEGMENT_PREFIX)?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            segments.sort_unstable();
            let mut records = Vec::new();
            for n in &segments {
                let mut res = db
                    .query("SELECT seq, batch FROM type::table($table)")
                    .bind(("table", segment_table(*n)))
                    .await?;
                for record in res.take::<Vec<Json>>(0)? {
                    let seq = record["seq"]
                        .as_u64()
                        .ok_or_else(|| StoreError::Incomplete("a log record has no seq".into()))?;
                    let text = record["batch"].as_str().ok_or_else(|| {
                        StoreError::Incomplete(format!("log record {seq} has no batch"))
                    })?;
                    records.push((seq, text.to_string()));
                }
            }
            Ok((segments, records))
        })?
    }
}

async fn apply(db: Surreal<Any>, rows: Json, gone: Json, then: String, seq: u64) -> Result<()> {
    write_tombstoned(&db, &super::objects::OBJECTS, rows, gone, &then, seq)
        .await
        .map_err(db_err)
}

/// Where the log's records go.
pub(super) enum Sink {
    /// Segment files in the data directory (the embedded store).
    Files(Mutex<Files>),
    /// Segment tables in the database (a SurrealDB server).
    Tables,
}

impl Sink {
    /// Segment files in `dir` (created if missing).
    pub(super) fn files(dir: PathBuf) -> anyhow::Result<Sink> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the commit log directory {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
        }
        Ok(Sink::Files(Mutex::new(Files {
            dir,
            open: None,
            broken: BTreeSet::new(),
        })))
    }
}

/// The segment files (only the committer and checkpoints use them, one call at a time).
fn lock(files: &Mutex<Files>) -> MutexGuard<'_, Files> {
    files.lock().unwrap_or_else(|p| p.into_inner())
}

/// The segment files: `N.log` holds the records of segment `N`, each framed as
/// `[payload length: u32][CRC-32 of seq and payload: u32][seq: u64][payload]` (little-endian).
pub(super) struct Files {
    dir: PathBuf,
    /// The segment being appended to, its file and the file's length.
    open: Option<(u64, File, u64)>,
    /// Segments whose append failed: they take no more records (the file may end in a torn
    /// one, and after a failed sync the kernel may have dropped pages it said it wrote).
    broken: BTreeSet<u64>,
}

const FRAME_HEADER: usize = 16;

fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The whole records at the start of `bytes` (sequence number, text), and where they end:
/// short of `bytes.len()` when the file ends in a torn or damaged record.
fn unframe(mut bytes: &[u8]) -> (Vec<(u64, String)>, usize) {
    let total = bytes.len();
    let mut records = Vec::new();
    while bytes.len() >= FRAME_HEADER {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (len, crc) = (word(0) as usize, word(4));
        let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
            break;
        };
        let mut check = crc32fast::Hasher::new();
        check.update(&seq.to_le_bytes());
        check.update(payload);
        let Ok(text) = std::str::from_utf8(payload) else {
            break;
        };
        if check.finalize() != crc {
            break;
        }
        records.push((seq, text.to_string()));
        bytes = &bytes[FRAME_HEADER + len..];
    }
    (records, total - bytes.len())
}

/// Fails if `file` was unlinked while open (its directory removed under a running server):
/// writes to it would succeed and be lost.
fn still_linked(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    if file.metadata()?.nlink() == 0 {
        return Err(std::io::Error::other(
            "the segment file was removed while in use (was the data directory deleted?)",
        ));
    }
    Ok(())
}

/// Whether `rest` (what follows the last whole record) holds a whole record after the damaged
/// one: damage in the middle of a segment, not a record torn by a crash at its end.
fn whole_record_follows(rest: &[u8]) -> bool {
    if rest.len() < FRAME_HEADER {
        return false;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    rest.get(FRAME_HEADER + len..)
        .is_some_and(|next| !unframe(next).0.is_empty())
}

/// Makes a file's creation or removal in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes applied segment files. A file that stays is harmless: its records are at or
/// below meta:seq, and replay skips them.
fn remove_segment_files(paths: &[PathBuf]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "could not remove an applied commit-log segment")
            }
        }
    }
}

impl Files {
    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment}.log"))
    }

    fn append(&mut self, segment: u64, seq: u64, payload: &[u8]) -> std::io::Result<()> {
        if self.broken.contains(&segment) {
            return Err(std::io::Error::other(format!(
                "an earlier append to segment {segment} failed: it takes no more records"
            )));
        }
        if self.open.as_ref().map(|(n, ..)| *n) != Some(segment) {
            self.open = None;
            // A segment number is opened once per run, after the log left by the last run was
            // replayed: whatever a file of that name holds was applied (at or below meta:seq).
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(self.path(segment))?;
            sync_dir(&self.dir)?;
            self.open = Some((segment, file, 0));
        }
        let (_, file, len) = self.open.as_mut().expect("opened above");
        let before = *len;
        let record = frame(seq, payload);
        let written = file
            .write_all(&record)
            .and_then(|()| file.sync_data())
            .and_then(|()| still_linked(file));
        *len += record.len() as u64;
        if written.is_err() {
            // The record was not acknowledged: cut it off, so a crash cannot replay it. If
            // that fails too, the segment stays as it is and takes no more records (the next
            // checkpoint removes it).
            if let Err(e) = file.set_len(before).and_then(|()| file.sync_data()) {
                tracing::error!(error = %e, segment, seq, "could not cut a failed record off the commit log: it may be replayed after a crash unless a checkpoint removes its segment first");
            }
            self.broken.insert(segment);
            self.open = None;
        }
        written
    }

    /// Forgets `segments` (applied by a checkpoint that has committed) and answers their
    /// files, for the caller to remove without holding the log: an unlink can wait on the
    /// disk for a long time (hundreds of ms were seen under load), and appends must not.
    fn forget(&mut self, segments: &[u64]) -> Vec<PathBuf> {
        segments
            .iter()
            .map(|n| {
                if self.open.as_ref().is_some_and(|(open, ..)| open == n) {
                    self.open = None;
                }
                self.broken.remove(n);
                self.path(*n)
            })
            .collect()
    }

    /// Every segment file left and its whole records (sequence number, text).
    fn read_all(&mut self) -> Result<Leftover> {
        let io = |what: String| move |source| StoreError::Log { what, source };
        let mut segments = Vec::new();
        let listing =
            std::fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        for entry in listing {
            let entry = entry.map_err(io(format!("listing {}", self.dir.display())))?;
            let name = entry.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.push(n);
            }
        }
        segments.sort_unstable();
        let mut records = Vec::new();
        for n in &segments {
            let path = self.path(*n);
            let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
            let (mut found, end) = unframe(&bytes);
            if end < bytes.len() && whole_record_follows(&bytes[end..]) {
                return Err(StoreError::Incomplete(format!(
                    "the commit log segment {} is damaged at byte {end}, with whole records after it: the records it holds were acknowledged, so the server will not start without them (restore from a backup, or move the file aside to accept losing them)",
                    path.display()
                )));
            }
            if end < bytes.len() {
                // Never acknowledged: an answer waits for its record's sync.
                tracing::warn!(
                    file = %path.display(),
                    at = end,
                    dropped_bytes = bytes.len() - end,
                    "the commit log ends in a torn record (a crash while it was written): it is dropped"
                );
            }
            records.append(&mut found);
        }
        Ok((segments, records))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    /// Opens the store of one just dropped, once its engine has let go of the files (the
    /// engine closes on a thread of its own; waits for that, not for a time).
    fn reopen(cfg: &StoreConfig) -> anyhow::Result<Store> {
        for _ in 0..200 {
            match Store::open(cfg) {
                Err(e) if format!("{e:#}").contains("in use") => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                other => return other,
            }
        }
        Store::open(cfg)
    }
    use crate::object::Slot;
    use crate::store::StoreConfig;

    fn obj(oid: &str, n: i64, version: u64) -> ObjectState {
        let mut slots = BTreeMap::new();
        slots.insert("n".to_string(), Slot::Value(json!(n)));
        let mut o = ObjectState::new(oid.to_string(), &["genesis_obj"], slots);
        o.version = version;
        o
    }

    /// Appends two records (the second deleting "b"), reopens, and checks the replay.
    fn replays_newest_write_winning_and_deletions_kept(cfg: &StoreConfig) {
        let seq = {
            let store = Store::open(cfg).unwrap();
            let seq = store.current_seq_blocking().unwrap();
            store
                .append_log_blocking(1, &[obj("a", 1, 1), obj("b", 1, 1)], &[], seq + 1)
                .unwrap();
            store
                .append_log_blocking(2, &[obj("a", 2, 2)], &["b".into()], seq + 2)
                .unwrap();
            // Not checkpointed: the tables do not have them yet.
            assert!(store.load_blocking("a").unwrap().is_none());
            seq
        };
        let store = reopen(cfg).unwrap();
        let a = store.load_blocking("a").unwrap().unwrap();
        assert_eq!(
            (a.version, a.slots["n"].clone()),
            (2, Slot::Value(json!(2)))
        );
        assert!(store.load_blocking("b").unwrap().is_none());
        assert_eq!(store.current_seq_blocking().unwrap(), seq + 2);
        assert_eq!(
            store.replay_log_blocking().unwrap(),
            0,
            "the log is empty after"
        );
    }

    #[test]
    fn a_reopened_store_replays_the_log_files_newest_write_winning_and_deletions_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::embedded(dir.path().join("data"));
        replays_newest_write_winning_and_deletions_kept(&cfg);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("data/commit-log"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "replayed segment files are removed");
    }

    #[test]
    fn a_reopened_store_replays_the_log_tables_newest_write_winning_and_deletions_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            log_in_database: true,
            ..StoreConfig::embedded(dir.path().join("data"))
        };
        replays_newest_write_winning_and_deletions_kept(&cfg);
    }

    #[test]
    fn records_an_earlier_version_left_in_tables_are_replayed_by_a_store_with_log_files() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = StoreConfig::embedded(dir.path().join("data"));
        let tables = StoreConfig {
            log_in_database: true,
            ..embedded.clone()
        };
        {
            let store = Store::open(&tables).unwrap();
            let seq = store.current_seq_blocking().unwrap();
            store
                .append_log_blocking(3, &[obj("a", 1, 1)], &[], seq + 1)
                .unwrap();
        }
        let store = reopen(&embedded).unwrap();
        assert_eq!(store.load_blocking("a").unwrap().unwrap().version, 1);
        assert_eq!(store.read_log_tables().unwrap().0, Vec::<u64>::new());
    }

    #[test]
    fn damage_in_the_middle_of_a_segment_stops_the_start_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::embedded(dir.path().join("data"));
        {
            let store = Store::open(&cfg).unwrap();
            let seq = store.current_seq_blocking().unwrap();
            for (i, n) in [1, 2, 3].into_iter().enumerate() {
                store
                    .append_log_blocking(1, &[obj("a", n, n as u64)], &[], seq + 1 + i as u64)
                    .unwrap();
            }
        }
        let path = dir.path().join("data/commit-log/1.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let second = unframe(&bytes).0[0].1.len() + FRAME_HEADER;
        bytes[second + FRAME_HEADER + 3] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", reopen(&cfg).err().unwrap());
        assert!(err.contains("1.log is damaged"), "{err}");
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_replay_of_its_file_and_what_came_before_is_kept() {
        let mut bytes = frame(7, b"{\"objects\":[],\"gone\":[\"x\"]}");
        let whole = bytes.len();
        bytes.extend_from_slice(&frame(8, b"{\"objects\":[],\"gone\":[]}"));
        assert_eq!(unframe(&bytes).0.len(), 2);
        // Torn anywhere inside the second record.
        for cut in whole..bytes.len() {
            let (records, end) = unframe(&bytes[..cut]);
            assert_eq!((records.len(), end), (1, whole), "cut at {cut}");
            assert_eq!(records[0].0, 7);
        }
        // One flipped bit in the payload or the sequence number.
        for at in [whole + 9, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(unframe(&bad).1, whole, "flipped at {at}");
        }

        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::embedded(dir.path().join("data"));
        {
            let store = Store::open(&cfg).unwrap();
            let seq = store.current_seq_blocking().unwrap();
            store
                .append_log_blocking(1, &[obj("a", 1, 1)], &[], seq + 1)
                .unwrap();
        }
        // A crash while the next record was written: half of it reached the disk.
        let path = dir.path().join("data/commit-log/1.log");
        let torn = frame(99, br#"{"objects":[],"gone":["a"]}"#);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);
        let store = reopen(&cfg).unwrap();
        assert_eq!(store.load_blocking("a").unwrap().unwrap().version, 1);
        assert!(!path.exists());
    }
}
