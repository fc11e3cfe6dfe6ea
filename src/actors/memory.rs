//! `MemoryActor`: memory records in the database and the usearch index over them.
//!
//! A sync actor (index and database work block). [`MemoryActor::open`] loads the index file; if
//! that cannot be trusted (missing, corrupt, another embedder or dimension) it rebuilds the index
//! from the vectors stored with the records — never re-embedding — and says so in the log.
//! Otherwise a catch-up pass adds records missing from the index and drops keys whose record is
//! gone. Records are committed before the index changes, so the index can always be rebuilt.
//! The index is saved every `save_every` changes, on request, and at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde_json::{Value as Json, json};

use super::persona::EmbedClient;
use crate::embed::{DIMS, EMBEDDER_ID};
use crate::error::TelosError;
use crate::memory::index::VectorIndex;
use crate::memory::{MemoryKind, NewMemory, Record};
use crate::world::World;

/// Remembers texts with their embeddings: stores the records, indexes them. Answers the keys.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, TelosError>")]
pub struct Remember {
    pub items: Vec<NewMemory>,
    /// The items' embeddings, one per item (see [`remember`]).
    pub vectors: Vec<Vec<f32>>,
}

/// Replaces every memory of `owner` of `kind` with `items` (one transaction). Answers the new keys.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, TelosError>")]
pub struct Replace {
    pub owner: String,
    pub kind: MemoryKind,
    pub items: Vec<NewMemory>,
    /// The items' embeddings, one per item (see [`replace`]).
    pub vectors: Vec<Vec<f32>>,
}

/// The `k` records nearest to `query`, optionally only of one kind.
#[derive(Message)]
#[rtype(result = "Result<Vec<Found>, TelosError>")]
pub struct Search {
    pub query: String,
    pub k: usize,
    pub kind: Option<MemoryKind>,
    /// The query's embedding (see [`search`]).
    pub vector: Vec<f32>,
}

/// Searches memory with the query embedded first, outside the memory actor: the actor's one
/// thread then only looks up the index and the records, so a search waits neither for its own
/// embedding there nor for long behind a write.
pub async fn search(
    embedder: &EmbedClient,
    memory: &Addr<MemoryActor>,
    query: String,
    k: usize,
    kind: Option<MemoryKind>,
) -> Result<Vec<Found>, TelosError> {
    if query.trim().is_empty() {
        return Err(TelosError::BadRequest("the search query is empty".into()));
    }
    let started = std::time::Instant::now();
    let vector = embedder
        .embed(vec![query.clone()])
        .await?
        .pop()
        .ok_or_else(|| TelosError::Internal("the embedder answered no vector".into()))?;
    let found = memory
        .send(Search {
            query,
            k,
            kind,
            vector,
        })
        .await
        .map_err(super::down(super::Who::Memory))?;
    crate::metrics::metrics().observe(
        "telos_memory_search_duration_seconds",
        "Memory searches: embedding the query and the index lookup.",
        &[],
        started.elapsed(),
    );
    found
}

/// Embeds `items` outside the memory actor, then remembers them there: the actor's one thread
/// spends a write on the transaction and the index only, so a search issued meanwhile waits for
/// milliseconds, not for an embedding. Answers the keys.
pub async fn remember(
    embedder: &EmbedClient,
    memory: &Addr<MemoryActor>,
    items: Vec<NewMemory>,
) -> Result<Vec<u64>, TelosError> {
    let vectors = embed_items(embedder, &items).await?;
    memory
        .send(Remember { items, vectors })
        .await
        .map_err(super::down(super::Who::Memory))?
}

/// Like [`remember`], replacing every memory of `owner` of `kind` (one transaction).
pub async fn replace(
    embedder: &EmbedClient,
    memory: &Addr<MemoryActor>,
    owner: String,
    kind: MemoryKind,
    items: Vec<NewMemory>,
) -> Result<Vec<u64>, TelosError> {
    let vectors = embed_items(embedder, &items).await?;
    memory
        .send(Replace {
            owner,
            kind,
            items,
            vectors,
        })
        .await
        .map_err(super::down(super::Who::Memory))?
}

async fn embed_items(
    embedder: &EmbedClient,
    items: &[NewMemory],
) -> Result<Vec<Vec<f32>>, TelosError> {
    check_texts(items)?;
    embedder
        .embed(items.iter().map(|i| i.text.clone()).collect())
        .await
}

fn check_texts(items: &[NewMemory]) -> Result<(), TelosError> {
    if items.iter().any(|i| i.text.trim().is_empty()) {
        return Err(TelosError::BadRequest(
            "a memory needs a non-empty text".into(),
        ));
    }
    Ok(())
}

pub use crate::memory::Found;

/// Rebuilds the index from the stored vectors and saves it. Answers the record count.
#[derive(Message)]
#[rtype(result = "Result<usize, TelosError>")]
pub struct Reindex;

/// Saves the index now.
#[derive(Message)]
#[rtype(result = "Result<(), TelosError>")]
pub struct Save;

/// Counts and index state, for `/api/health`.
#[derive(Message)]
#[rtype(result = "Json")]
pub struct Stats;

pub struct MemoryActor {
    world: Arc<World>,
    index: VectorIndex,
    save_every: usize,
    /// What happened to the index file at start.
    opened: String,
    /// The last key given out; keys grow with time and are never reused.
    last_key: u64,
    last_save: Option<String>,
    /// How many records each (owner, kind) has: a replacement that would forget nothing and
    /// write nothing (an ordinary object changed; only Retrievable ones have object memories)
    /// costs no query, and the Retrievable indexer skips such objects without asking.
    owned: Owned,
}

/// How many memories each (owner, kind) has, shared by the memory actor (which keeps it) with
/// readers that must not wait for it (the Retrievable indexer).
#[derive(Clone, Default)]
pub struct Owned(Arc<std::sync::Mutex<HashMap<(String, MemoryKind), usize>>>);

impl Owned {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<(String, MemoryKind), usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `owner` has any memory of `kind`.
    pub fn has(&self, owner: &str, kind: MemoryKind) -> bool {
        self.counts().contains_key(&(owner.to_string(), kind))
    }
}

impl MemoryActor {
    /// The memory counts per (owner, kind) this actor keeps, for readers that must not wait.
    pub fn owned(&self) -> Owned {
        self.owned.clone()
    }

    /// Opens (or rebuilds) the index at `world`'s `data_dir/memory.usearch` and catches up with
    /// the records. Blocking.
    pub fn open(
        world: Arc<World>,
        path: &std::path::Path,
        save_every: usize,
    ) -> anyhow::Result<MemoryActor> {
        let t = Instant::now();
        let (index, opened) = match VectorIndex::open(path, EMBEDDER_ID, DIMS) {
            Ok(index) => (index, "loaded".to_string()),
            Err(reason) => {
                tracing::warn!(%reason, "memory index unusable: rebuilding it from the stored vectors");
                (
                    VectorIndex::empty(path, EMBEDDER_ID, DIMS)?,
                    format!("rebuilt: {reason}"),
                )
            }
        };
        let mut actor = MemoryActor {
            world,
            index,
            save_every: save_every.max(1),
            opened,
            last_key: 0,
            last_save: None,
            owned: Owned::default(),
        };
        let (added, dropped) = actor.catch_up()?;
        *actor.owned.counts() = actor.world.store().memory_owner_counts_blocking()?;
        if added > 0 || dropped > 0 || !path.exists() {
            actor.save()?;
        }
        tracing::info!(
            records = actor.index.len(),
            added,
            dropped,
            ms = t.elapsed().as_millis() as u64,
            index = %path.display(),
            "memory index ready"
        );
        Ok(actor)
    }

    /// Brings the index up to the records: from its sequence number when it knows one (only
    /// what was written or forgotten since is read), else by comparing every key. Answers
    /// (added, dropped).
    fn catch_up(&mut self) -> Result<(usize, usize), TelosError> {
        let since = self.index.seq();
        if since > 0 {
            let (written, gone) = self.world.store().memory_changes_since_blocking(since)?;
            let (mut added, mut dropped) = (0, 0);
            self.index.reserve_more(written.len())?;
            for k in gone {
                if self.index.contains(k) {
                    self.index.remove(k)?;
                    dropped += 1;
                }
            }
            for (key, vector, seq) in written {
                if !self.index.contains(key) {
                    self.index.add(key, &vector)?;
                    added += 1;
                }
                self.index.set_seq(seq);
            }
            self.last_key = self
                .last_key
                .max(self.index.keys().last().copied().unwrap_or(0));
            return Ok((added, dropped));
        }
        let result = self.catch_up_all()?;
        self.index.set_seq(self.world.seq());
        Ok(result)
    }

    /// Adds records missing from the index (from their stored vectors), drops orphan keys.
    fn catch_up_all(&mut self) -> Result<(usize, usize), TelosError> {
        let store = self.world.store();
        let keys: std::collections::BTreeSet<u64> =
            store.memory_keys_blocking()?.into_iter().collect();
        self.last_key = self.last_key.max(keys.last().copied().unwrap_or(0));
        let missing: Vec<u64> = keys
            .iter()
            .filter(|k| !self.index.contains(**k))
            .copied()
            .collect();
        let orphans: Vec<u64> = self.index.keys().difference(&keys).copied().collect();
        for k in &orphans {
            self.index.remove(*k)?;
        }
        self.index.reserve_more(missing.len())?;
        for (i, chunk) in missing.chunks(2000).enumerate() {
            for (key, vector) in store.memory_vectors_blocking(chunk)? {
                self.index.add(key, &vector)?;
            }
            if missing.len() > 10_000 {
                tracing::info!(
                    done = (i * 2000 + chunk.len()),
                    of = missing.len(),
                    "rebuilding the memory index"
                );
            }
        }
        Ok((missing.len(), orphans.len()))
    }

    fn save(&mut self) -> Result<(), TelosError> {
        self.index.save()?;
        self.last_save = Some(chrono::Utc::now().to_rfc3339());
        Ok(())
    }

    fn next_key(&mut self) -> u64 {
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        self.last_key = now.max(self.last_key + 1);
        self.last_key
    }

    /// Commits `items` with their `vectors` (and the removal of `forget`) and updates the
    /// index. The memory never embeds: its callers do, before they ask (see [`remember`]).
    fn write(
        &mut self,
        items: Vec<NewMemory>,
        vectors: Vec<Vec<f32>>,
        forget: Vec<u64>,
    ) -> Result<Vec<u64>, TelosError> {
        if items.is_empty() && forget.is_empty() {
            return Ok(Vec::new());
        }
        check_texts(&items)?;
        if vectors.len() != items.len() || vectors.iter().any(|v| v.len() != DIMS) {
            return Err(TelosError::Internal(format!(
                "{} vectors came with {} memories",
                vectors.len(),
                items.len()
            )));
        }
        let created = chrono::Utc::now().to_rfc3339();
        let records: Vec<Record> = items
            .into_iter()
            .zip(vectors)
            .map(|(item, vector)| Record {
                key: self.next_key(),
                kind: item.kind,
                text: item.text,
                prompt: item.prompt,
                owner: item.owner,
                selector: item.selector,
                source: item.source,
                origin: if item.origin.is_empty() {
                    crate::memory::ORIGIN_EXTERNAL.into()
                } else {
                    item.origin
                },
                embedder: EMBEDDER_ID.into(),
                created: created.clone(),
                seq: 0,
                vector,
            })
            .collect();
        let seq = self.world.commit_memory(&records, &forget)?;
        self.index.set_seq(seq);
        for k in &forget {
            self.index.remove(*k)?;
        }
        for r in &records {
            self.index.add(r.key, &r.vector)?;
            *self
                .owned
                .counts()
                .entry((r.owner.clone(), r.kind))
                .or_default() += 1;
        }
        if self.index.unsaved() >= self.save_every {
            self.save()?;
        }
        Ok(records.iter().map(|r| r.key).collect())
    }
}

impl Actor for MemoryActor {
    type Context = SyncContext<Self>;

    fn stopped(&mut self, _: &mut SyncContext<Self>) {
        if self.index.unsaved() > 0
            && let Err(e) = self.save()
        {
            tracing::error!(error = %e, "saving the memory index on shutdown");
        }
    }
}

impl Handler<Remember> for MemoryActor {
    type Result = Result<Vec<u64>, TelosError>;

    fn handle(&mut self, msg: Remember, _: &mut SyncContext<Self>) -> Self::Result {
        self.write(msg.items, msg.vectors, Vec::new())
    }
}

impl Handler<Replace> for MemoryActor {
    type Result = Result<Vec<u64>, TelosError>;

    fn handle(&mut self, msg: Replace, _: &mut SyncContext<Self>) -> Self::Result {
        let key = (msg.owner.clone(), msg.kind);
        if msg.items.is_empty() && !self.owned.counts().contains_key(&key) {
            return Ok(Vec::new());
        }
        let old = self
            .world
            .store()
            .memory_keys_of_blocking(&msg.owner, msg.kind)?;
        let forgotten = old.len();
        let written = self.write(msg.items, msg.vectors, old)?;
        let mut owned = self.owned.counts();
        if let Some(n) = owned.get_mut(&key) {
            *n = n.saturating_sub(forgotten);
            if *n == 0 {
                owned.remove(&key);
            }
        }
        Ok(written)
    }
}

impl Handler<Search> for MemoryActor {
    type Result = Result<Vec<Found>, TelosError>;

    fn handle(&mut self, msg: Search, _: &mut SyncContext<Self>) -> Self::Result {
        if msg.query.trim().is_empty() {
            return Err(TelosError::BadRequest("the search query is empty".into()));
        }
        let k = msg.k.clamp(1, 100);
        let query = msg.vector;
        // A kind filter is applied after the search: look further so k remain.
        let want = if msg.kind.is_some() { k * 4 } else { k };
        let hits = self.index.search(&query, want)?;
        let keys: Vec<u64> = hits.iter().map(|h| h.key).collect();
        let mut by_key: HashMap<u64, Record> = self
            .world
            .store()
            .memory_records_blocking(&keys)?
            .into_iter()
            .map(|r| (r.key, r))
            .collect();
        Ok(hits
            .iter()
            .filter_map(|h| {
                let record = by_key.remove(&h.key)?;
                if msg.kind.is_some_and(|k| k != record.kind) {
                    return None;
                }
                Some(Found {
                    id: record.key,
                    distance: h.distance,
                    kind: record.kind,
                    text: record.text,
                    prompt: record.prompt,
                    owner: record.owner,
                    selector: record.selector,
                    source: record.source,
                    origin: record.origin,
                    created: record.created,
                })
            })
            .take(k)
            .collect())
    }
}

impl Handler<Reindex> for MemoryActor {
    type Result = Result<usize, TelosError>;

    fn handle(&mut self, _: Reindex, _: &mut SyncContext<Self>) -> Self::Result {
        let t = Instant::now();
        self.index = VectorIndex::empty(self.index.path(), EMBEDDER_ID, DIMS)?;
        self.catch_up()?;
        self.save()?;
        self.opened = "rebuilt on request".into();
        tracing::info!(
            records = self.index.len(),
            ms = t.elapsed().as_millis() as u64,
            "memory index rebuilt from the stored vectors"
        );
        Ok(self.index.len())
    }
}

impl Handler<Save> for MemoryActor {
    type Result = Result<(), TelosError>;

    fn handle(&mut self, _: Save, _: &mut SyncContext<Self>) -> Self::Result {
        self.save()
    }
}

impl Handler<Stats> for MemoryActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(json!({
            "records": self.index.len(),
            "unsaved": self.index.unsaved(),
            "save_every": self.save_every,
            // The memory never embeds (its callers do), so a restart never re-embeds.
            "embedded_since_start": 0,
            "index": self.index.path().display().to_string(),
            "index_at_start": self.opened,
            "last_save": self.last_save,
            "embedder": EMBEDDER_ID,
            "dims": DIMS,
        }))
    }
}

#[cfg(test)]
mod tests {
    use actix::SyncArbiter;

    use super::*;
    use crate::store::{Store, StoreConfig};

    fn one_hot(i: usize) -> Vec<f32> {
        let mut v = vec![0.0; DIMS];
        v[i % DIMS] = 1.0;
        v
    }

    fn note(owner: &str, text: &str) -> NewMemory {
        NewMemory {
            kind: MemoryKind::Object,
            text: text.into(),
            owner: owner.into(),
            ..NewMemory::default()
        }
    }

    /// Replaces the `object` memories of `o1` with `texts` (one-hot vectors).
    async fn replace_o1(memory: &actix::Addr<MemoryActor>, texts: &[&str]) -> Vec<u64> {
        memory
            .send(Replace {
                owner: "o1".into(),
                kind: MemoryKind::Object,
                items: texts.iter().map(|t| note("o1", t)).collect(),
                vectors: (0..texts.len()).map(|i| one_hot(10 + i)).collect(),
            })
            .await
            .unwrap()
            .unwrap()
    }

    #[actix_web::test]
    async fn replacing_an_owners_memories_forgets_the_old_ones_and_an_owner_without_any_costs_nothing()
     {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // Opening blocks on the store's own runtime: not on this one.
        let (world, actor) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&StoreConfig::embedded(root.join("data"))).unwrap();
            let world = crate::world::World::new(store).unwrap();
            let actor =
                MemoryActor::open(world.clone(), &root.join("memory.usearch"), 100).unwrap();
            (world, actor)
        })
        .await
        .unwrap();
        let slot = std::sync::Mutex::new(Some(actor));
        let memory =
            SyncArbiter::start(1, move || slot.lock().unwrap().take().expect("built once"));
        let seq = world.seq();

        // Nothing to forget and nothing to write: no transaction at all.
        assert!(replace_o1(&memory, &[]).await.is_empty());
        assert_eq!(world.seq(), seq, "an empty replacement committed something");

        memory
            .send(Remember {
                items: vec![note("o1", "first"), note("o1", "second")],
                vectors: vec![one_hot(1), one_hot(2)],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(replace_o1(&memory, &["third"]).await.len(), 1);
        assert_eq!(world.store().memory_count().await.unwrap(), 1);

        // The owner leaves the trait: its last memory goes.
        replace_o1(&memory, &[]).await;
        assert_eq!(world.store().memory_count().await.unwrap(), 0);
    }
}
