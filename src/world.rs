//! The world: a cache of live objects over the store, transactions, and the commit protocol.
//!
//! # Concurrency protocol
//!
//! A top-level message runs its whole synchronous call tree on one script thread inside a
//! [`Txn`]. The transaction reads objects from the shared cache (loading them from the store on a
//! miss) and records the version of each object it read; writes go to private copies. Nothing is
//! locked while JavaScript runs, so call cycles (A → B → A) cannot deadlock.
//!
//! At commit the world takes its commit lock and checks that every object the transaction read
//! still has the version it saw (optimistic concurrency), counting transactions that are
//! validated but not yet written. A valid transaction is queued and the script thread goes on
//! with its next message; a committer thread appends *every* queued transaction to the commit
//! log as one record (group commit: one record and one fsync for all of them, see
//! [`crate::store::log`]), then updates the cache, announces the changes and answers each
//! transaction, whose message is answered only then (durable first). What the log holds and the
//! object table does not yet is kept in memory (`unflushed`) and answers loads before the
//! table; a checkpointer thread writes it into the table every [`CHECKPOINT_EVERY`] (or sooner
//! when much is waiting), an object written many times once.
//! A transaction whose reads went stale is run again from the start by its caller, after the
//! write it lost to has landed; a batch that fails to write fails every transaction in it and
//! writes nothing. Two queued transactions never touch the same object (the second saw a
//! version the first is replacing: stale), so a failed batch leaves the others valid. Messages
//! to one object are additionally serialised by
//! that object's actor, so conflicts only arise between call chains that touch shared objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::broadcast;

use crate::error::{Result, TelosError};
use crate::object::{ObjectState, PRIMORDIAL, Slot, lookup, new_oid, validate_slot_name};
use crate::store::Store;

/// How often the checkpointer writes the commit log into the object table.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Log records waiting that wake the checkpointer before its time.
const CHECKPOINT_RECORDS: usize = 512;
/// Records a log segment takes before a checkpoint moves appends on to a new one. Segments
/// outlive many checkpoints (replay skips what a checkpoint applied): creating, syncing the
/// directory for and removing a segment file at every checkpoint put file-system metadata
/// writes in the append path, and on this machine's disk they sometimes wait 100-400 ms.
const SEGMENT_RECORDS: usize = 16_384;

/// What the commit log holds that the object table does not have yet.
#[derive(Default)]
struct Unflushed {
    /// The newest logged state of each such object (`None`: deleted) and its sequence number.
    objects: HashMap<String, (u64, Option<Arc<ObjectState>>)>,
    /// The log segments whose files exist, and how many records each took (the one appended
    /// to holds checkpointed records too; the others are removed by the next checkpoint).
    segments: BTreeMap<u64, usize>,
    /// Records appended and not yet checkpointed.
    waiting: usize,
    /// The newest record's sequence number.
    newest: u64,
}

impl Unflushed {
    fn records(&self) -> usize {
        self.waiting
    }
}

/// What a checkpoint writes, taken when it was sealed.
struct Sealed {
    objects: Vec<(String, u64, Option<Arc<ObjectState>>)>,
    /// Segments no longer appended to: removed once the checkpoint has committed.
    segments: Vec<u64>,
    /// Records it applies (of [`Unflushed::waiting`]).
    records: usize,
    newest: u64,
}

/// Checkpoints written so far (read by `/metrics` without waiting for one being written).
#[derive(Default)]
struct Checkpoints {
    done: AtomicU64,
    rows: AtomicU64,
}

/// A committed change to one object, announced to subscribers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub oid: String,
    pub version: u64,
    /// Slots whose content changed (added, replaced or removed).
    pub slots: Vec<String>,
    pub created: bool,
    pub deleted: bool,
}

struct CacheEntry {
    obj: Arc<ObjectState>,
    last_used: Instant,
}

/// A validated transaction waiting to be written.
struct Staged {
    written: Vec<ObjectState>,
    deleted: Vec<String>,
    changes: Vec<Change>,
    /// Told the outcome once the batch holding this transaction is written (or failed).
    reply: tokio::sync::oneshot::Sender<std::result::Result<Vec<Change>, TelosError>>,
}

/// A committed transaction: written already (or nothing to write), or on its way to disk.
#[derive(Debug)]
pub enum Committed {
    Now(Vec<Change>),
    /// Resolves once the batch holding the transaction is durable (or has failed).
    Pending(tokio::sync::oneshot::Receiver<std::result::Result<Vec<Change>, TelosError>>),
}

impl Committed {
    /// Waits until the writes are durable (blocking: not on an async thread).
    pub fn wait_blocking(self) -> Result<Vec<Change>> {
        match self {
            Committed::Now(changes) => Ok(changes),
            Committed::Pending(rx) => rx.blocking_recv().unwrap_or_else(|_| Err(committer_gone())),
        }
    }

    /// Waits until the writes are durable.
    pub async fn wait(self) -> Result<Vec<Change>> {
        match self {
            Committed::Now(changes) => Ok(changes),
            Committed::Pending(rx) => rx.await.unwrap_or_else(|_| Err(committer_gone())),
        }
    }
}

fn committer_gone() -> TelosError {
    TelosError::Internal("the world's committer stopped before writing this message".into())
}

/// The commit queue (guarded by the world's commit lock).
#[derive(Default)]
struct Group {
    /// Validated transactions not yet written, in commit order.
    queue: Vec<Staged>,
    /// The version each object will have once the queued and in-flight transactions are
    /// written (0: deleted). Validation counts these as current.
    pending: HashMap<String, u64>,
    /// The committer is writing a batch (with the lock released).
    flushing: bool,
    /// Memory commits waiting for their turn: the committer lets them go before its next batch.
    memory_waiting: usize,
    /// Checkpoints waiting to seal: the committer lets them go before its next batch too, so a
    /// steady stream of writes cannot starve them.
    checkpoint_waiting: usize,
    /// The objects of the batch being written (a delete must not orphan a child among them).
    in_flight: Arc<Vec<ObjectState>>,
    /// Batches written and transactions in them, for `/metrics`.
    batches: u64,
    grouped: u64,
    /// The commit-log segment batches are appended to (a checkpoint moves on from it when it
    /// is full).
    segment: u64,
}

/// How group commit has gone so far.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CommitStats {
    /// Database transactions written.
    pub batches: u64,
    /// Message transactions written in them.
    pub transactions: u64,
    /// Checkpoints of the commit log into the object table, and rows they wrote.
    pub checkpoints: u64,
    pub checkpointed_rows: u64,
    /// Log records waiting for a checkpoint.
    pub log_pending: usize,
}

/// The shared world: object cache, store and change announcements.
pub struct World {
    store: Store,
    cache: Mutex<HashMap<String, CacheEntry>>,
    /// Serialises validation, the commit queue and cache fills, so a fill can never put back a
    /// stale version. Not held while a batch is written.
    commit_lock: Mutex<Group>,
    /// Signalled when a batch has been written (or has failed).
    landed: Condvar,
    /// Signalled when a transaction is queued (wakes the committer thread).
    queued: Condvar,
    changes: broadcast::Sender<Change>,
    /// The global sequence number of the last commit (guarded by `commit_lock` for writes).
    seq: AtomicU64,
    /// What the log holds that the table does not (lock order: after `commit_lock`).
    unflushed: Mutex<Unflushed>,
    /// The checkpointer thread, unparked when much is waiting.
    checkpointer: std::sync::OnceLock<std::thread::Thread>,
    /// One checkpoint at a time (never held while waiting for `commit_lock`).
    checkpointing: Mutex<()>,
    checkpoints: Checkpoints,
    /// How often the checkpointer runs ([`CHECKPOINT_EVERY`]).
    checkpoint_every: Duration,
    /// Records a segment takes before appends move on ([`SEGMENT_RECORDS`]).
    segment_records: usize,
}

impl World {
    /// The world over an opened store (blocking: reads the last sequence number).
    pub fn new(store: Store) -> Result<Arc<World>> {
        World::with_checkpoints(store, CHECKPOINT_EVERY)
    }

    /// [`World::new`] with the checkpointer running every `every` (tests use long ones to see
    /// the log's own paths).
    pub fn with_checkpoints(store: Store, every: Duration) -> Result<Arc<World>> {
        World::with_log(store, every, SEGMENT_RECORDS)
    }

    /// [`World::with_checkpoints`] with log segments of `segment_records` records.
    fn with_log(store: Store, every: Duration, segment_records: usize) -> Result<Arc<World>> {
        let (changes, _) = broadcast::channel(4096);
        let seq = store.current_seq_blocking()?;
        let world = Arc::new(World {
            store,
            cache: Mutex::new(HashMap::new()),
            commit_lock: Mutex::new(Group {
                segment: 1,
                ..Group::default()
            }),
            landed: Condvar::new(),
            queued: Condvar::new(),
            changes,
            seq: AtomicU64::new(seq),
            unflushed: Mutex::new(Unflushed::default()),
            checkpointer: std::sync::OnceLock::new(),
            checkpointing: Mutex::new(()),
            checkpoints: Checkpoints::default(),
            checkpoint_every: every,
            segment_records,
        });
        let weak = Arc::downgrade(&world);
        std::thread::Builder::new()
            .name("telos-commit".into())
            .spawn(move || committer(weak))
            .map_err(|e| TelosError::Internal(format!("starting the committer thread: {e}")))?;
        let weak = Arc::downgrade(&world);
        let thread = std::thread::Builder::new()
            .name("telos-checkpoint".into())
            .spawn(move || checkpointer(weak))
            .map_err(|e| TelosError::Internal(format!("starting the checkpoint thread: {e}")))?;
        let _ = world.checkpointer.set(thread.thread().clone());
        Ok(world)
    }

    fn group(&self) -> MutexGuard<'_, Group> {
        self.commit_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unflushed(&self) -> MutexGuard<'_, Unflushed> {
        self.unflushed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batches written by group commit and the transactions in them.
    pub fn commit_stats(&self) -> CommitStats {
        let (batches, transactions) = {
            let g = self.group();
            (g.batches, g.grouped)
        };
        CommitStats {
            batches,
            transactions,
            checkpoints: self.checkpoints.done.load(Ordering::Relaxed),
            checkpointed_rows: self.checkpoints.rows.load(Ordering::Relaxed),
            log_pending: self.unflushed().records(),
        }
    }

    /// Writes what the commit log holds into the object table (one transaction), so that
    /// readers of the table (listings, counts, backups) see every acknowledged change.
    /// Blocking: call from plain threads, or through [`World::settled`]. Answers rows written.
    pub fn checkpoint(&self) -> Result<usize> {
        loop {
            let mut g = self.group();
            g.checkpoint_waiting += 1;
            while g.flushing {
                g = self.landed.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.checkpoint_waiting -= 1;
            self.landed.notify_all();
            // Another checkpoint is being written: wait for it without holding up commits, then
            // look again (it may have covered everything).
            let one = match self.checkpointing.try_lock() {
                Ok(one) => one,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    drop(g);
                    drop(self.checkpointing.lock());
                    continue;
                }
            };
            let Some(sealed) = self.seal(&mut g) else {
                return Ok(0);
            };
            // The checkpoint lock is held before the commit lock is let go: checkpoints are
            // written in the order they were sealed, and appends go on meanwhile (into the
            // next segment).
            drop(g);
            return self.write_sealed(sealed, one);
        }
    }

    /// [`World::checkpoint`] with the commit lock held throughout (no batch in flight).
    fn checkpoint_holding(&self, g: &mut MutexGuard<'_, Group>) -> Result<usize> {
        let one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sealed) = self.seal(g) else {
            return Ok(0);
        };
        self.write_sealed(sealed, one)
    }

    /// Seals what the log holds (the commit lock held, no batch in flight): answers the newest
    /// logged state of every object (shared, not copied: rows are made after the locks are
    /// let go) and the segments to remove once it is applied: every one but the segment
    /// appended to, which moves on to a new one only when it is full ([`SEGMENT_RECORDS`]).
    fn seal(&self, g: &mut MutexGuard<'_, Group>) -> Option<Sealed> {
        let u = self.unflushed();
        if u.segments.get(&g.segment).copied().unwrap_or(0) >= self.segment_records {
            g.segment += 1;
        }
        let current = g.segment;
        let done: Vec<u64> = u
            .segments
            .keys()
            .copied()
            .filter(|n| *n != current)
            .collect();
        if u.waiting == 0 && done.is_empty() {
            return None;
        }
        Some(Sealed {
            objects: u
                .objects
                .iter()
                .map(|(oid, (seq, obj))| (oid.clone(), *seq, obj.clone()))
                .collect(),
            segments: done,
            records: u.waiting,
            // The world's sequence number, not the newest appended record's: after a failed
            // append (or none since the start) that would be older than meta:seq, which must
            // never move backwards (incremental backups and replay read it). No batch is in
            // flight, so every number up to it is decided.
            newest: self.seq.load(Ordering::SeqCst).max(u.newest),
        })
    }

    /// Writes a sealed checkpoint (`_one` held: one at a time, in the order sealed).
    fn write_sealed(&self, sealed: Sealed, _one: MutexGuard<'_, ()>) -> Result<usize> {
        let Sealed {
            objects,
            segments,
            records,
            newest,
        } = sealed;
        let mut cp = crate::store::Checkpoint::default();
        for (oid, seq, obj) in &objects {
            match obj {
                Some(obj) => cp.write(obj, *seq),
                None => cp.delete(oid, *seq),
            }
        }
        for n in &segments {
            cp.applies(*n);
        }
        let rows = cp.len();
        self.store.checkpoint_blocking(cp, newest)?;
        // Whatever was logged after the seal stays for the next checkpoint.
        let mut u = self.unflushed();
        u.objects.retain(|_, (s, _)| *s > newest);
        u.waiting = u.waiting.saturating_sub(records);
        for n in &segments {
            u.segments.remove(n);
        }
        self.checkpoints.done.fetch_add(1, Ordering::Relaxed);
        self.checkpoints
            .rows
            .fetch_add(rows as u64, Ordering::Relaxed);
        Ok(rows)
    }

    /// [`World::checkpoint`] from async code (on a blocking worker).
    pub async fn settled(self: &Arc<Self>) -> Result<()> {
        let world = self.clone();
        tokio::task::spawn_blocking(move || world.checkpoint())
            .await
            .map_err(|e| TelosError::Internal(format!("a checkpoint task failed: {e}")))?
            .map(|_| ())
    }

    /// One page of the object list, ordered by oid (every acknowledged change included).
    pub async fn list(
        self: &Arc<Self>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<crate::store::ObjectSummary>> {
        self.settled().await?;
        Ok(self.store.list(offset, limit).await?)
    }

    /// Up to `limit` objects after the oid `after` ("": from the start), in oid order.
    pub async fn list_after(
        self: &Arc<Self>,
        after: &str,
        limit: u64,
    ) -> Result<Vec<crate::store::ObjectSummary>> {
        self.settled().await?;
        Ok(self.store.list_after(after, limit).await?)
    }

    /// How many objects the world holds (a checkpoint first: sealing is brief and the write
    /// runs beside new commits).
    pub async fn count(self: &Arc<Self>) -> Result<u64> {
        self.settled().await?;
        Ok(self.store.count().await?)
    }

    /// Every oid.
    pub async fn all_oids(self: &Arc<Self>) -> Result<Vec<String>> {
        self.settled().await?;
        Ok(self.store.all_oids().await?)
    }

    /// The sequence number of the last commit.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Subscribes to every committed change.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, CacheEntry>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, oid: &str) -> Option<Arc<ObjectState>> {
        let mut cache = self.cache();
        let entry = cache.get_mut(oid)?;
        entry.last_used = Instant::now();
        Some(entry.obj.clone())
    }

    /// The current committed state of an object (blocking: call from script threads only).
    pub fn get(&self, oid: &str) -> Result<Option<Arc<ObjectState>>> {
        if let Some(obj) = self.cached(oid) {
            return Ok(Some(obj));
        }
        let _guard = self.group();
        self.get_locked(oid)
    }

    /// Same as [`World::get`] while the commit lock is held.
    fn get_locked(&self, oid: &str) -> Result<Option<Arc<ObjectState>>> {
        if let Some(obj) = self.cached(oid) {
            return Ok(Some(obj));
        }
        let logged = self.unflushed().objects.get(oid).map(|(_, o)| o.clone());
        let obj = match logged {
            Some(Some(obj)) => obj,
            Some(None) => return Ok(None),
            None => match self.store.load_blocking(oid)? {
                Some(obj) => Arc::new(obj),
                None => return Ok(None),
            },
        };
        self.cache().insert(
            oid.to_string(),
            CacheEntry {
                obj: obj.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(Some(obj))
    }

    /// What memory holds of `oid` without asking the database: `Some(Some(obj))` cached or
    /// logged, `Some(None)` deleted in the log, `None` unknown (only the table could say).
    pub fn peek(&self, oid: &str) -> Option<Option<Arc<ObjectState>>> {
        if let Some(obj) = self.cached(oid) {
            return Some(Some(obj));
        }
        self.unflushed().objects.get(oid).map(|(_, o)| o.clone())
    }

    /// Drops cache entries not used for `idle`; they reload from the store on next use.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut cache = self.cache();
        let before = cache.len();
        cache.retain(|_, e| now.duration_since(e.last_used) < idle);
        before - cache.len()
    }

    /// How many objects are in memory right now.
    pub fn cached_count(&self) -> usize {
        self.cache().len()
    }

    /// Writes memory records and forgets others in one store transaction at the next sequence
    /// number: memories are part of the world's history, so backups carry them like objects.
    pub fn commit_memory(&self, add: &[crate::memory::Record], remove: &[u64]) -> Result<u64> {
        let mut g = self.group();
        // Holding the lock with no batch in flight: no object commit can take a sequence number
        // meanwhile. The committer waits for waiting memory commits before its next batch, so
        // a steady stream of object writes cannot starve this one.
        g.memory_waiting += 1;
        while g.flushing {
            g = self.landed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        // The tables must hold every change numbered below this one before `meta:seq` moves
        // past them (see `store::log`): nothing is appended meanwhile (no batch in flight).
        let written = self.checkpoint_holding(&mut g).and_then(|_| {
            let seq = self.seq.load(Ordering::SeqCst) + 1;
            let written = self.store.memory_commit_blocking(add, remove, seq);
            // Advanced even after a failure whose outcome is unknown: a gap in the sequence is
            // harmless, a reused number could hide rows from an incremental backup.
            self.seq.store(seq, Ordering::SeqCst);
            written.map(|_| seq).map_err(TelosError::from)
        });
        g.memory_waiting -= 1;
        self.landed.notify_all();
        written
    }

    /// Up to ten objects that name `oid` as a parent: the logged states first (they are newer
    /// than the table), then the table without the objects whose logged state decides.
    fn children(&self, oid: &str) -> Result<Vec<String>> {
        let (mut children, decided) = {
            let u = self.unflushed();
            let named: Vec<String> = u
                .objects
                .iter()
                .filter(|(_, (_, o))| {
                    o.as_ref()
                        .is_some_and(|o| o.parents().iter().any(|p| p == oid))
                })
                .map(|(child, _)| child.clone())
                .take(10)
                .collect();
            (named, u.objects.keys().cloned().collect::<Vec<_>>())
        };
        if children.len() < 10 {
            children.extend(self.store.children_blocking(oid, decided)?);
            children.truncate(10);
        }
        Ok(children)
    }

    /// Validates a transaction's reads and, if it wrote anything, queues it for the committer
    /// thread, which writes it with whatever else is queued meanwhile (group commit); the
    /// answer resolves once it is durable. `Err(Stale)` means another chain changed something
    /// this one read: run it again.
    fn commit(&self, txn: &Txn) -> Result<Committed, CommitError> {
        let mut g = self.group();
        for (oid, seen) in &txn.reads {
            let now = match g.pending.get(oid) {
                Some(v) => *v,
                None => self.get_locked(oid)?.map(|o| o.version).unwrap_or(0),
            };
            if now != *seen {
                // A newer version is on its way to disk: running again before it lands would
                // read the old one from the cache and go stale again. Waits for that version
                // only (later writers of the object do not prolong the wait).
                if let Some(&lost_to) = g.pending.get(oid) {
                    while g.pending.get(oid) == Some(&lost_to) {
                        g = self.landed.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                }
                return Err(CommitError::Stale);
            }
        }
        if txn.dirty.is_empty() && txn.deleted.is_empty() {
            return Ok(Committed::Now(Vec::new()));
        }
        let mut written = Vec::with_capacity(txn.dirty.len());
        let mut changes = Vec::new();
        for (oid, obj) in &txn.dirty {
            if txn.deleted.contains(oid) {
                continue;
            }
            let before = txn.view.get(oid).cloned().flatten();
            let mut obj = (**obj).clone();
            obj.version = before.as_ref().map(|b| b.version).unwrap_or(0) + 1;
            changes.push(Change {
                oid: oid.clone(),
                version: obj.version,
                slots: changed_slots(before.as_deref(), &obj),
                created: before.is_none(),
                deleted: false,
            });
            written.push(obj);
        }
        let deleted: Vec<String> = txn.deleted.iter().cloned().collect();
        for oid in &deleted {
            // A child created since this transaction looked (queued, or written meanwhile)
            // must not lose its parent: run again, and the delete sees the child.
            let is_child = |o: &ObjectState| o.parents().iter().any(|p| p == oid);
            let queued_child = g.in_flight.iter().any(is_child)
                || g.queue.iter().any(|q| q.written.iter().any(is_child));
            if queued_child || !self.children(oid)?.is_empty() {
                return Err(CommitError::Stale);
            }
        }
        for oid in &deleted {
            changes.push(Change {
                oid: oid.clone(),
                version: 0,
                slots: Vec::new(),
                created: false,
                deleted: true,
            });
        }
        for obj in &written {
            g.pending.insert(obj.oid.clone(), obj.version);
        }
        for oid in &deleted {
            g.pending.insert(oid.clone(), 0);
        }
        let (reply, pending) = tokio::sync::oneshot::channel();
        g.queue.push(Staged {
            written,
            deleted,
            changes,
            reply,
        });
        self.queued.notify_one();
        Ok(Committed::Pending(pending))
    }

    /// Writes every queued transaction in one database transaction (the lock is released
    /// meanwhile), then updates the cache, announces the changes and records each outcome.
    fn flush<'a>(&'a self, mut g: MutexGuard<'a, Group>) -> MutexGuard<'a, Group> {
        let mut batch = std::mem::take(&mut g.queue);
        if batch.is_empty() {
            return g;
        }
        g.flushing = true;
        // The written objects move out of the batch (no copies); a delete validated meanwhile
        // reads their parents from here.
        let objects: Arc<Vec<ObjectState>> = Arc::new(
            batch
                .iter_mut()
                .flat_map(|s| std::mem::take(&mut s.written))
                .collect(),
        );
        g.in_flight = objects.clone();
        let seq = self.seq.load(Ordering::SeqCst) + 1;
        let segment = g.segment;
        drop(g);
        let deleted: Vec<String> = batch
            .iter()
            .flat_map(|s| s.deleted.iter().cloned())
            .collect();
        // A panic in the write fails this batch; the committer carries on with the next.
        let appending = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.store
                .append_log_blocking(segment, &objects, &deleted, seq)
                .map_err(TelosError::from)
        }))
        .unwrap_or_else(|_| {
            Err(TelosError::Internal(
                "writing a commit batch panicked (see the server log)".into(),
            ))
        });
        crate::metrics::metrics().observe(
            "telos_commit_append_seconds",
            "Writing one group commit's record to the commit log, durably (fdatasync included).",
            &[],
            appending.elapsed(),
        );
        let mut g = self.group();
        g.flushing = false;
        g.in_flight = Arc::default();
        // Nobody else holds the batch's objects now (readers only look under the lock).
        let objects = Arc::try_unwrap(objects).unwrap_or_else(|shared| (*shared).clone());
        // Advanced even after a failure whose outcome is unknown (see `commit_memory`).
        self.seq.store(seq, Ordering::SeqCst);
        // Whatever happened, these versions are no longer pending: written (now in the cache)
        // or failed (the cache still holds the versions the transactions read).
        for obj in &objects {
            if g.pending.get(&obj.oid) == Some(&obj.version) {
                g.pending.remove(&obj.oid);
            }
        }
        for oid in &deleted {
            if g.pending.get(oid) == Some(&0) {
                g.pending.remove(oid);
            }
        }
        match result {
            Ok(()) => {
                g.batches += 1;
                g.grouped += batch.len() as u64;
                let waiting = {
                    let mut cache = self.cache();
                    let mut u = self.unflushed();
                    let now = Instant::now();
                    for obj in objects {
                        let obj = Arc::new(obj);
                        u.objects.insert(obj.oid.clone(), (seq, Some(obj.clone())));
                        cache.insert(
                            obj.oid.clone(),
                            CacheEntry {
                                obj,
                                last_used: now,
                            },
                        );
                    }
                    for oid in &deleted {
                        cache.remove(oid);
                        u.objects.insert(oid.clone(), (seq, None));
                    }
                    *u.segments.entry(segment).or_default() += 1;
                    u.waiting += 1;
                    u.newest = seq;
                    u.records()
                };
                if waiting >= CHECKPOINT_RECORDS
                    && let Some(t) = self.checkpointer.get()
                {
                    t.unpark();
                }
                for staged in batch {
                    for change in &staged.changes {
                        // Nobody listening is fine.
                        let _ = self.changes.send(change.clone());
                    }
                    // The committer may have stopped waiting (its caller went away): fine.
                    let _ = staged.reply.send(Ok(staged.changes));
                }
            }
            Err(e) => {
                // The append's outcome is unknown: its segment is removed with the next
                // checkpoint, so a record that did land is dropped then, not replayed later;
                // the next batches go to a new one (a segment file that failed takes no more).
                self.unflushed().segments.entry(segment).or_default();
                g.segment += 1;
                tracing::error!(error = %e, transactions = batch.len(), "writing a commit batch failed");
                for staged in batch {
                    let _ = staged.reply.send(Err(e.clone()));
                }
            }
        }
        self.landed.notify_all();
        g
    }
}

/// The checkpointer thread: writes the commit log into the object table every
/// [`CHECKPOINT_EVERY`], or sooner when much is waiting, until the world is gone.
fn checkpointer(world: std::sync::Weak<World>) {
    let mut failures = 0u32;
    let mut last = Instant::now();
    loop {
        // Sleeps without holding the world (unparked when much is waiting), and holds it only
        // to check and to checkpoint, so a dropped world ends this thread.
        std::thread::park_timeout(Duration::from_millis(100));
        let Some(world) = world.upgrade() else { return };
        // After a failure, wait longer (up to 32 periods) before trying again.
        let every = world.checkpoint_every * (1 << failures.min(5));
        let pressed = world.unflushed().records() >= CHECKPOINT_RECORDS;
        // Pressure only hurries a healthy checkpointer: a failing one keeps its backoff.
        if !(pressed && failures == 0) && last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        match world.checkpoint() {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "a checkpoint of the commit log failed; the log keeps every change and the next attempt retries");
            }
        }
    }
}

/// The committer thread: writes whatever is queued, batch after batch, until the world is gone.
fn committer(world: std::sync::Weak<World>) {
    loop {
        // Holds the world only while there is work or for one short wait, so a dropped world
        // (tests open many) ends this thread.
        let Some(world) = world.upgrade() else { return };
        let mut g = world.group();
        if g.queue.is_empty() {
            g = world
                .queued
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        while g.memory_waiting > 0 || g.checkpoint_waiting > 0 {
            g = world.landed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if !g.queue.is_empty() {
            drop(world.flush(g));
        }
    }
}

fn changed_slots(before: Option<&ObjectState>, after: &ObjectState) -> Vec<String> {
    let empty = BTreeMap::new();
    let old = before.map(|b| &b.slots).unwrap_or(&empty);
    let mut names: BTreeSet<&String> = BTreeSet::new();
    for (k, v) in &after.slots {
        if old.get(k) != Some(v) {
            names.insert(k);
        }
    }
    for k in old.keys() {
        if !after.slots.contains_key(k) {
            names.insert(k);
        }
    }
    names.into_iter().cloned().collect()
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// Something this transaction read has changed since: run it again.
    Stale,
    Failed(TelosError),
}

impl From<TelosError> for CommitError {
    fn from(e: TelosError) -> Self {
        CommitError::Failed(e)
    }
}

impl From<crate::store::StoreError> for CommitError {
    fn from(e: crate::store::StoreError) -> Self {
        CommitError::Failed(e.into())
    }
}

/// What one top-level message may write, enforced in Rust whatever the script does.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes of slot values (JSON text) and method sources written, all objects together.
    pub write_bytes: usize,
    /// Bytes of one slot value.
    pub slot_bytes: usize,
    /// Objects created.
    pub objects: usize,
    /// Entries of one `parent*` list.
    pub parents: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            write_bytes: 16 << 20,
            slot_bytes: 1 << 20,
            objects: 1000,
            parents: 32,
        }
    }
}

/// Counts the bytes of a value's JSON text without building it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of a slot as stored: its JSON text, or its source for a method.
pub fn slot_bytes(slot: &Slot) -> usize {
    match slot {
        Slot::Value(v) => {
            let mut n = ByteCount(0);
            let _ = serde_json::to_writer(&mut n, v);
            n.0
        }
        Slot::Method(m) => m.source.len(),
    }
}

/// One top-level message's view of the world: what it read, what it wrote.
pub struct Txn {
    world: Arc<World>,
    budget: Budget,
    /// Bytes written so far, against `budget.write_bytes`.
    written_bytes: usize,
    /// Objects created so far, against `budget.objects`.
    created: usize,
    /// The server's own writes (admin endpoints) may change the managers' policy slots.
    system: bool,
    /// Version of each object as first read (0 = it did not exist).
    reads: HashMap<String, u64>,
    /// Committed states as first read.
    view: HashMap<String, Option<Arc<ObjectState>>>,
    /// Private copies of changed and created objects.
    dirty: HashMap<String, Arc<ObjectState>>,
    deleted: BTreeSet<String>,
}

impl Txn {
    /// The oids this transaction has written or deleted so far.
    pub fn written(&self) -> Vec<String> {
        let mut out: Vec<String> = self.dirty.keys().cloned().collect();
        out.extend(self.deleted.iter().cloned());
        out.sort();
        out.dedup();
        out
    }

    pub fn new(world: Arc<World>) -> Txn {
        Txn::with_budget(world, Budget::default())
    }

    /// A transaction that may write at most `budget`.
    pub fn with_budget(world: Arc<World>, budget: Budget) -> Txn {
        Txn {
            world,
            budget,
            written_bytes: 0,
            created: 0,
            system: false,
            reads: HashMap::new(),
            view: HashMap::new(),
            dirty: HashMap::new(),
            deleted: BTreeSet::new(),
        }
    }

    /// An object as this transaction sees it.
    pub fn get(&mut self, oid: &str) -> Result<Option<Arc<ObjectState>>> {
        if self.deleted.contains(oid) {
            return Ok(None);
        }
        if let Some(obj) = self.dirty.get(oid) {
            return Ok(Some(obj.clone()));
        }
        if let Some(obj) = self.view.get(oid) {
            return Ok(obj.clone());
        }
        let obj = self.world.get(oid)?;
        self.reads.insert(
            oid.to_string(),
            obj.as_ref().map(|o| o.version).unwrap_or(0),
        );
        self.view.insert(oid.to_string(), obj.clone());
        Ok(obj)
    }

    /// An object that must exist.
    pub fn require(&mut self, oid: &str) -> Result<Arc<ObjectState>> {
        self.get(oid)?
            .ok_or_else(|| TelosError::NoObject(oid.to_string()))
    }

    /// The object holding `name` in `oid`'s delegation chain, if any.
    pub fn lookup(&mut self, oid: &str, name: &str) -> Result<Option<Arc<ObjectState>>> {
        lookup(oid, name, |o| self.get(o))
    }

    fn edit(&mut self, oid: &str) -> Result<&mut ObjectState> {
        if !self.dirty.contains_key(oid) {
            let obj = self.require(oid)?;
            self.dirty.insert(oid.to_string(), obj);
        }
        let entry = self.dirty.get_mut(oid).expect("just inserted");
        Ok(Arc::make_mut(entry))
    }

    /// Lets this transaction write the managers' policy slots (the server's own writes).
    pub fn set_system(&mut self) {
        self.system = true;
    }

    /// Charges `bytes` of one slot write against the budget.
    fn charge(&mut self, oid: &str, name: &str, bytes: usize) -> Result<()> {
        if bytes > self.budget.slot_bytes {
            return Err(TelosError::LimitExceeded(format!(
                "slot size limit: {oid}.{name} would hold {bytes} bytes, more than {} bytes (max_slot_kib)",
                self.budget.slot_bytes
            )));
        }
        self.written_bytes += bytes;
        if self.written_bytes > self.budget.write_bytes {
            return Err(TelosError::LimitExceeded(format!(
                "write limit: one message may write at most {} bytes (max_write_kib); this one wrote more",
                self.budget.write_bytes
            )));
        }
        Ok(())
    }

    /// Sets a slot on `oid` (validating its name).
    pub fn set_slot(&mut self, oid: &str, name: &str, slot: Slot) -> Result<()> {
        validate_slot_name(name)?;
        if !self.system {
            crate::object::guard_system_slot(oid, name)?;
        }
        self.charge(oid, name, slot_bytes(&slot))?;
        if name == crate::object::PARENTS_SLOT {
            self.check_parents(oid, &slot)?;
        }
        self.edit(oid)?.slots.insert(name.to_string(), slot);
        Ok(())
    }

    fn check_parents(&mut self, oid: &str, slot: &Slot) -> Result<()> {
        let Slot::Value(v) = slot else {
            return Err(TelosError::BadRequest(
                "parent* must hold a list of object references".into(),
            ));
        };
        let Json::Array(items) = v else {
            return Err(TelosError::BadRequest(
                "parent* must be a list of {\"$ref\": oid}".into(),
            ));
        };
        if items.len() > self.budget.parents {
            return Err(TelosError::LimitExceeded(format!(
                "parent* may list at most {} parents",
                self.budget.parents
            )));
        }
        for item in items {
            let Some(p) = crate::object::as_ref(item) else {
                return Err(TelosError::BadRequest(format!(
                    "parent* entries must be {{\"$ref\": oid}}, got {item}"
                )));
            };
            if p == oid {
                return Err(TelosError::BadRequest(format!(
                    "{oid} cannot be its own parent"
                )));
            }
            self.require(p)?;
        }
        Ok(())
    }

    /// Removes a slot from `oid`; missing slots are a `not_found`.
    pub fn remove_slot(&mut self, oid: &str, name: &str) -> Result<()> {
        if !self.system {
            crate::object::guard_system_slot(oid, name)?;
        }
        if !self.require(oid)?.slots.contains_key(name) {
            return Err(TelosError::NotFound(format!("{oid} has no slot {name}")));
        }
        self.edit(oid)?.slots.remove(name);
        Ok(())
    }

    /// Creates a clone of `parent` with optional initial slots; answers the new oid.
    pub fn clone_object(
        &mut self,
        parent: &str,
        slots: serde_json::Map<String, Json>,
    ) -> Result<String> {
        self.require(parent)?;
        if self.created >= self.budget.objects {
            return Err(TelosError::LimitExceeded(format!(
                "object creation limit: one message may create at most {} objects (max_objects_per_message)",
                self.budget.objects
            )));
        }
        self.created += 1;
        let oid = new_oid();
        let mut obj = ObjectState::new(oid.clone(), &[parent], BTreeMap::new());
        for (name, value) in slots {
            validate_slot_name(&name)?;
            let slot = Slot::Value(value);
            self.charge(&oid, &name, slot_bytes(&slot))?;
            obj.slots.insert(name, slot);
        }
        self.view.insert(oid.clone(), None);
        self.dirty.insert(oid.clone(), Arc::new(obj));
        Ok(oid)
    }

    /// Deletes an object. Primordial objects and parents of other objects cannot be deleted.
    pub fn delete(&mut self, oid: &str) -> Result<()> {
        if PRIMORDIAL.contains(&oid) {
            return Err(TelosError::Forbidden(format!(
                "{oid} is a primordial object and cannot be deleted"
            )));
        }
        self.require(oid)?;
        let children = self.world.children(oid)?;
        if !children.is_empty() {
            return Err(TelosError::Conflict(format!(
                "{oid} is the parent of {}; delete or re-parent those first",
                children.join(", ")
            )));
        }
        self.deleted.insert(oid.to_string());
        Ok(())
    }

    /// Whether everything this transaction read is still current (for read-only outcomes).
    pub fn still_current(&self) -> Result<bool> {
        for (oid, seen) in &self.reads {
            let now = self.world.get(oid)?.map(|o| o.version).unwrap_or(0);
            if now != *seen {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Commits the transaction (see the module docs): the answer says when it is durable.
    pub fn commit(&self) -> Result<Committed, CommitError> {
        self.world.commit(self)
    }
}

/// The initial slots of a clone, from a request body's `slots` (must be an object).
pub fn slots_arg(v: Option<&Json>) -> Result<serde_json::Map<String, Json>> {
    match v {
        None | Some(Json::Null) => Ok(serde_json::Map::new()),
        Some(Json::Object(m)) => Ok(m.clone()),
        Some(other) => Err(TelosError::BadRequest(format!(
            "slots must be a JSON object of name → value, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::StoreConfig;

    fn world() -> (tempfile::TempDir, Arc<World>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::embedded(dir.path().join("data"))).unwrap();
        (dir, World::new(store).unwrap())
    }

    /// A counter object, committed.
    fn counter(world: &Arc<World>) -> String {
        let mut t = Txn::new(world.clone());
        let mut slots = serde_json::Map::new();
        slots.insert("n".into(), json!(0));
        let oid = t.clone_object("genesis_obj", slots).unwrap();
        t.commit().unwrap().wait_blocking().unwrap();
        oid
    }

    fn n(world: &Arc<World>, oid: &str) -> Json {
        match world.get(oid).unwrap().unwrap().slots.get("n") {
            Some(Slot::Value(v)) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn bump(t: &mut Txn, oid: &str) {
        let now = match t.get(oid).unwrap().unwrap().slots.get("n") {
            Some(Slot::Value(v)) => v.as_i64().unwrap(),
            _ => 0,
        };
        t.set_slot(oid, "n", Slot::Value(json!(now + 1))).unwrap();
    }

    /// A child, a parent and a re-parenting that only the commit log holds: loads, the delete
    /// check and a reopened store all see them.
    #[test]
    fn a_failed_append_is_not_acknowledged_and_never_moves_meta_seq_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::embedded(dir.path().join("data"));
        let w =
            World::with_checkpoints(Store::open(&cfg).unwrap(), Duration::from_secs(3600)).unwrap();
        let log = dir.path().join("data/commit-log");
        let base = w.store().current_seq_blocking().unwrap();
        {
            // The log's directory removed under the running server: the open segment's file
            // is unlinked (a write to it would be lost), then no new segment can be made.
            let mut t = Txn::new(w.clone());
            t.clone_object("genesis_obj", Default::default()).unwrap();
            t.commit().unwrap().wait_blocking().unwrap();
            std::fs::remove_dir_all(&log).unwrap();
            for _ in 0..2 {
                let mut t = Txn::new(w.clone());
                t.clone_object("genesis_obj", Default::default()).unwrap();
                let err = t.commit().unwrap().wait_blocking().unwrap_err();
                assert_eq!(err.code(), "internal", "{err}");
            }
            // The checkpoint writes what was acknowledged; meta:seq only moves forward.
            w.checkpoint().unwrap();
            let seq = w.store().current_seq_blocking().unwrap();
            assert!(seq > base, "meta:seq {seq} fell to {base} or below");
            assert_eq!(seq, w.seq());
        }
    }

    /// The store of a world just dropped, opened again once the world's threads let go of it
    /// (within a period; waits for that, not for a time).
    fn reopen(cfg: &StoreConfig) -> Store {
        let mut waited = 0;
        loop {
            match Store::open(cfg) {
                Ok(store) => return store,
                Err(e) if format!("{e:#}").contains("in use") && waited < 200 => {
                    waited += 1;
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("{e:#}"),
            }
        }
    }

    /// Appends go on into one segment across checkpoints until it is full; a segment no
    /// longer appended to goes with the next checkpoint; replay skips what was applied.
    #[test]
    fn a_segment_outlives_checkpoints_until_full_and_replay_skips_what_they_applied() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::embedded(dir.path().join("data"));
        let log = dir.path().join("data/commit-log");
        let files = || {
            let mut names: Vec<String> = std::fs::read_dir(&log)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let oid = {
            let w =
                World::with_log(Store::open(&cfg).unwrap(), Duration::from_secs(3600), 3).unwrap();
            let mut t = Txn::new(w.clone());
            let oid = t.clone_object("genesis_obj", Default::default()).unwrap();
            t.commit().unwrap().wait_blocking().unwrap();
            // Checkpointed, and appended to again: the same file.
            w.checkpoint().unwrap();
            let mut t = Txn::new(w.clone());
            bump(&mut t, &oid);
            t.commit().unwrap().wait_blocking().unwrap();
            assert_eq!(files(), ["1.log"]);
            // Full at three records: the next checkpoint moves appends on and, having applied
            // every record of the full one, removes it.
            let mut t = Txn::new(w.clone());
            bump(&mut t, &oid);
            t.commit().unwrap().wait_blocking().unwrap();
            assert_eq!(files(), ["1.log"]);
            w.checkpoint().unwrap();
            assert!(files().is_empty(), "{:?}", files());
            let mut t = Txn::new(w.clone());
            bump(&mut t, &oid);
            t.commit().unwrap().wait_blocking().unwrap();
            assert_eq!(files(), ["2.log"]);
            w.checkpoint().unwrap();
            assert_eq!(files(), ["2.log"]);
            // One more only the log holds.
            let mut t = Txn::new(w.clone());
            bump(&mut t, &oid);
            t.commit().unwrap().wait_blocking().unwrap();
            assert_eq!(w.commit_stats().log_pending, 1);
            oid
        };
        // Reopened: 2.log holds a record the last checkpoint applied (skipped) and one it did
        // not (replayed).
        let w = World::new(reopen(&cfg)).unwrap();
        let obj = w.get(&oid).unwrap().unwrap();
        assert_eq!(obj.slots.get("n"), Some(&Slot::Value(json!(4))));
        assert_eq!(obj.version, 5);
    }

    #[test]
    fn what_only_the_log_holds_is_loaded_guards_deletes_and_is_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::embedded(dir.path().join("data"));
        let w =
            World::with_checkpoints(Store::open(&cfg).unwrap(), Duration::from_secs(3600)).unwrap();
        // Every transaction lives in this block: the world is gone after it.
        let (parent, child, seq) = {
            let mut t = Txn::new(w.clone());
            let parent = t.clone_object("genesis_obj", Default::default()).unwrap();
            t.commit().unwrap().wait_blocking().unwrap();
            let mut t = Txn::new(w.clone());
            let child = t.clone_object(&parent, Default::default()).unwrap();
            t.commit().unwrap().wait_blocking().unwrap();
            // Not in the table yet; out of the cache: the log's copy answers.
            assert!(w.store().load_blocking(&child).unwrap().is_none());
            w.evict_idle(Duration::ZERO);
            assert!(w.get(&child).unwrap().is_some());
            // The child only the log holds keeps its parent alive.
            let mut t = Txn::new(w.clone());
            let err = t.delete(&parent).unwrap_err();
            assert_eq!(err.code(), "conflict", "{err}");
            // Checkpointed, the table's row names the parent; re-parented in the log only, that
            // older row no longer counts.
            w.checkpoint().unwrap();
            assert!(w.store().load_blocking(&child).unwrap().is_some());
            let mut t = Txn::new(w.clone());
            t.set_slot(
                &child,
                "parent*",
                Slot::Value(json!([{"$ref": "genesis_obj"}])),
            )
            .unwrap();
            t.commit().unwrap().wait_blocking().unwrap();
            let mut t = Txn::new(w.clone());
            t.delete(&parent).unwrap();
            t.commit().unwrap().wait_blocking().unwrap();
            assert_eq!(w.commit_stats().log_pending, 2);
            (parent, child, w.seq())
        };
        drop(w);
        // Reopened without a checkpoint: the store replays the log.
        let store = reopen(&cfg);
        assert_eq!(store.current_seq_blocking().unwrap(), seq);
        assert!(store.load_blocking(&parent).unwrap().is_none());
        let child = store.load_blocking(&child).unwrap().unwrap();
        assert_eq!(child.parents(), ["genesis_obj".to_string()]);
        let changes = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(store.changes_since(0))
            .unwrap();
        assert!(changes.tombstones.iter().any(|t| t["oid"] == json!(parent)));
    }

    /// Writers that keep the commit queue full never starve a checkpoint (it would hang here).
    #[test]
    fn checkpoints_are_not_starved_by_a_steady_stream_of_writes() {
        let (_dir, w) = world();
        let oids: Vec<String> = (0..4).map(|_| counter(&w)).collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for oid in &oids {
                let (w, stop) = (w.clone(), &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut t = Txn::new(w.clone());
                        bump(&mut t, oid);
                        t.commit().unwrap().wait_blocking().unwrap();
                    }
                });
            }
            for _ in 0..20 {
                w.checkpoint().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        w.checkpoint().unwrap();
        assert_eq!(w.commit_stats().log_pending, 0);
        for oid in &oids {
            let stored = w.store().load_blocking(oid).unwrap().unwrap();
            assert_eq!(stored.slots.get("n"), Some(&Slot::Value(n(&w, oid))));
        }
    }

    #[test]
    fn the_second_of_two_transactions_that_read_one_object_is_stale() {
        let (_dir, w) = world();
        let oid = counter(&w);
        let (mut a, mut b) = (Txn::new(w.clone()), Txn::new(w.clone()));
        bump(&mut a, &oid);
        bump(&mut b, &oid);
        a.commit().unwrap().wait_blocking().unwrap();
        assert!(matches!(b.commit(), Err(CommitError::Stale)));
        // Run again, it sees the first one's write.
        let mut b = Txn::new(w.clone());
        bump(&mut b, &oid);
        b.commit().unwrap().wait_blocking().unwrap();
        assert_eq!(n(&w, &oid), json!(2));
    }

    #[test]
    fn a_transaction_that_writes_nothing_is_committed_at_once() {
        let (_dir, w) = world();
        let oid = counter(&w);
        let mut t = Txn::new(w.clone());
        t.get(&oid).unwrap();
        let seq = w.seq();
        assert!(matches!(t.commit(), Ok(Committed::Now(c)) if c.is_empty()));
        assert_eq!(w.seq(), seq, "no database write");
    }

    #[test]
    fn concurrent_transactions_are_all_written_and_the_changes_announced_once_each() {
        let (_dir, w) = world();
        let oids: Vec<String> = (0..8).map(|_| counter(&w)).collect();
        let mut changes = w.subscribe();
        let before = w.commit_stats();
        std::thread::scope(|s| {
            for oid in &oids {
                let w = w.clone();
                s.spawn(move || {
                    for _ in 0..20 {
                        let mut t = Txn::new(w.clone());
                        bump(&mut t, oid);
                        let c = t.commit().unwrap().wait_blocking().unwrap();
                        assert_eq!(c.len(), 1);
                    }
                });
            }
        });
        for oid in &oids {
            assert_eq!(n(&w, oid), json!(20));
        }
        let after = w.commit_stats();
        assert_eq!(after.transactions - before.transactions, 160);
        assert!(after.batches - before.batches <= 160);
        let mut announced = 0;
        while let Ok(c) = changes.try_recv() {
            assert!(oids.contains(&c.oid));
            announced += 1;
        }
        assert_eq!(announced, 160);
        // Written: the database itself (not the cache) holds every increment, once the log
        // is checkpointed.
        w.checkpoint().unwrap();
        for oid in &oids {
            let stored = w.store().load_blocking(oid).unwrap().unwrap();
            assert_eq!(stored.slots.get("n"), Some(&Slot::Value(json!(20))));
        }
    }

    #[test]
    fn a_transaction_stale_behind_a_queued_write_runs_again_after_it_lands() {
        let (_dir, w) = world();
        let oid = counter(&w);
        // Many writers on one object: every increment lands exactly once, whatever the
        // batching, because a stale one waits for the write it lost to before running again.
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (w, oid) = (w.clone(), oid.clone());
                s.spawn(move || {
                    for _ in 0..25 {
                        let mut tries = 0;
                        loop {
                            tries += 1;
                            assert!(tries < 1000, "livelock");
                            let mut t = Txn::new(w.clone());
                            bump(&mut t, &oid);
                            match t.commit() {
                                Ok(c) => {
                                    c.wait_blocking().unwrap();
                                    break;
                                }
                                Err(CommitError::Stale) => continue,
                                Err(CommitError::Failed(e)) => panic!("{e}"),
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(n(&w, &oid), json!(100));
    }
}
