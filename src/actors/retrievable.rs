//! Keeps the memories of `Retrievable` objects in step with the objects.
//!
//! An object with `Retrievable` in its parent chain is remembered as text chunks (kind
//! `object`, owner = its oid). The chunks come from its `to_text_chunks` method when its chain
//! defines one (a JS method answering an array of strings), else from the default: its name and
//! `purpose` slot (cut by the semantic chunker) and its own methods' sources (cut on statement
//! boundaries). Every committed change to such an object replaces its chunks; deleting it (or
//! leaving the trait) forgets them. Changes are read from the world's change announcements and
//! coalesced, so a burst of writes to one object re-indexes it once.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use tokio::sync::broadcast::error::RecvError;

use std::sync::Arc;

use actix::Addr;

use super::memory::MemoryActor;
use super::persona::EmbedClient;
use crate::config::Settings;
use crate::error::TelosError;
use crate::exec::Executor;
use crate::memory::chunker::{code_chunks, semantic_chunks};
use crate::memory::{MemoryKind, NewMemory};
use crate::object::{Slot, ancestors};
use crate::sandbox::{Op, Outcome};
use crate::world::World;

/// The trait's oid.
pub const RETRIEVABLE: &str = "Retrievable";
/// The method that overrides the default chunks.
pub const TO_TEXT_CHUNKS: &str = "to_text_chunks";
/// Chunks kept of one object's `to_text_chunks` answer (each cut to `chunk_max_chars`).
const MAX_CUSTOM_CHUNKS: usize = 256;

/// What the indexer needs: the world to read and follow, the script threads (for a custom
/// `to_text_chunks`), the embedder (for the chunker), the memory and the chunking settings.
#[derive(Clone)]
pub struct Indexer {
    pub world: Arc<World>,
    pub exec: Executor,
    pub embedder: EmbedClient,
    pub memory: Addr<MemoryActor>,
    /// Who has memories of which kind (an object with no object memories that is plainly not
    /// Retrievable is skipped without a thread hop).
    pub owned: super::memory::Owned,
    pub settings: Arc<Settings>,
}

/// Starts following the world's changes (on the current actix system).
pub fn start(telos: Indexer) {
    let mut changes = telos.world.subscribe();
    actix::spawn(async move {
        loop {
            let first = match changes.recv().await {
                Ok(c) => c,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "the Retrievable indexer fell behind: some object changes were not re-indexed (POST /api/memory/reindex with {{\"objects\": true}} catches up)"
                    );
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let mut pending = BTreeMap::new();
            pending.insert(first.oid.clone(), first.deleted);
            while let Ok(c) = changes.try_recv() {
                pending.insert(c.oid.clone(), c.deleted);
            }
            for (oid, deleted) in pending {
                if !telos.owned.has(&oid, MemoryKind::Object)
                    && plainly_not_retrievable(&telos.world, &oid, deleted)
                {
                    continue;
                }
                if let Err(e) = reindex(&telos, &oid, deleted).await {
                    tracing::warn!(%oid, error = %e, "re-indexing a Retrievable object failed");
                }
            }
        }
    });
}

/// Whether `oid` is gone, or its whole chain is in memory (cached or in the commit log) and
/// `Retrievable` is not in it: nothing to index then, decided without touching the database.
fn plainly_not_retrievable(world: &World, oid: &str, deleted: bool) -> bool {
    if deleted {
        return true;
    }
    // An object or ancestor not in memory answers an error: then the full check decides.
    let chain = ancestors(oid, |o| {
        world
            .peek(o)
            .ok_or_else(|| TelosError::NotFound(format!("{o} is not in memory")))
    });
    chain.is_ok_and(|chain| !chain.iter().any(|a| a == RETRIEVABLE))
}

/// Brings the memories of `oid` up to date. Answers how many chunks it now has in memory
/// (`None` when it is not Retrievable and had nothing to forget).
pub async fn reindex(
    telos: &Indexer,
    oid: &str,
    deleted: bool,
) -> Result<Option<usize>, TelosError> {
    let chunks = if deleted {
        None
    } else {
        chunks_of(telos, oid).await?
    };
    let retrievable = chunks.is_some();
    let items: Vec<NewMemory> = chunks
        .unwrap_or_default()
        .into_iter()
        .map(|text| NewMemory {
            kind: crate::memory::MemoryKind::Object,
            text,
            owner: oid.to_string(),
            ..NewMemory::default()
        })
        .collect();
    let n = items.len();
    crate::actors::memory::replace(
        &telos.embedder,
        &telos.memory,
        oid.to_string(),
        crate::memory::MemoryKind::Object,
        items,
    )
    .await?;
    Ok(retrievable.then_some(n))
}

/// The text chunks of `oid` if it is Retrievable, else `None`.
async fn chunks_of(telos: &Indexer, oid: &str) -> Result<Option<Vec<String>>, TelosError> {
    let world = telos.world.clone();
    let id = oid.to_string();
    let found = tokio::task::spawn_blocking(move || {
        let Some(obj) = world.get(&id)? else {
            return Ok(None);
        };
        let chain = ancestors(&id, |o| world.get(o))?;
        if !chain.iter().any(|a| a == RETRIEVABLE) || id == RETRIEVABLE {
            return Ok(None);
        }
        let custom =
            crate::object::lookup(&id, TO_TEXT_CHUNKS, |o| world.get(o))?.is_some_and(|holder| {
                matches!(holder.slots.get(TO_TEXT_CHUNKS), Some(Slot::Method(_)))
            });
        Ok::<_, TelosError>(Some((obj, custom)))
    })
    .await
    .map_err(TelosError::internal)??;
    let Some((obj, custom)) = found else {
        return Ok(None);
    };
    if custom {
        // Read-only: a write fails this indexing (and so cannot trigger another), and a miss
        // inside it does not start a kernel run.
        let value = match telos
            .exec
            .run(
                oid,
                Op::Query {
                    selector: TO_TEXT_CHUNKS.into(),
                    args: Vec::new(),
                },
            )
            .await?
        {
            Outcome::Done { value, .. } => value,
            Outcome::Failed { error, .. } => return Err(error),
            Outcome::Miss { miss, .. } => {
                return Err(TelosError::MethodError(format!(
                    "{oid}.{TO_TEXT_CHUNKS} sends {} to {}, which nothing understands (no learning during indexing)",
                    miss.selector, miss.receiver
                )));
            }
        };
        let max_chars = telos.settings.chunk_max_chars.max(64);
        let texts: Vec<String> = match value {
            Json::Array(items) => {
                if items.len() > MAX_CUSTOM_CHUNKS {
                    tracing::warn!(%oid, chunks = items.len(), "to_text_chunks answered too many chunks: keeping the first {MAX_CUSTOM_CHUNKS}");
                }
                items
                    .into_iter()
                    .take(MAX_CUSTOM_CHUNKS)
                    .map(|v| match v {
                        Json::String(s) => s,
                        other => other.to_string(),
                    })
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.chars().take(max_chars).collect())
                    .collect()
            }
            Json::String(s) => vec![s.chars().take(max_chars).collect()],
            other => {
                return Err(TelosError::MethodError(format!(
                    "{oid}.{TO_TEXT_CHUNKS} must answer an array of strings, not {other}"
                )));
            }
        };
        return Ok(Some(texts));
    }
    // Default: name and purpose as prose, then each own method's source as code.
    let name = obj.name();
    let purpose = match obj.slots.get("purpose") {
        Some(Slot::Value(Json::String(s))) => s.clone(),
        Some(Slot::Value(v)) if !v.is_null() => v.to_string(),
        _ => String::new(),
    };
    let cfg = telos.settings.chunking();
    let prose = format!("{name}. {purpose}");
    let embedder = telos.embedder.clone();
    // The chunker embeds sentences: a blocking wait on the model host, off the async threads.
    let mut texts = tokio::task::spawn_blocking(move || {
        let mut embed = |units: &[String]| -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(embedder.embed_blocking(units.to_vec())?)
        };
        semantic_chunks(&prose, cfg, &mut embed)
    })
    .await
    .map_err(TelosError::internal)??;
    for (slot, value) in &obj.slots {
        if let Slot::Method(m) = value {
            for chunk in code_chunks(&m.source, cfg.max_chars) {
                texts.push(format!("{name}.{slot}: {chunk}"));
            }
        }
    }
    Ok(Some(texts))
}
