//! The handle the interfaces (REST, WebSocket, CLI, benchmarks) use to reach the world:
//! [`Telos`] sends operations to objects through their actors, answers the system objects'
//! native messages, and reports health. It is built by [`crate::app`], which wires the actors.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde_json::{Value as Json, json};

use crate::actors::Who;
use crate::actors::directory::{Activate, Directory, Live, LiveCount};
use crate::actors::kernel::{Progress, StageEvent};
use crate::actors::memory::{self, MemoryActor};
use crate::actors::object::{Dispatch, Reply};
use crate::actors::persona::{EmbedClient, PersonaActor, PersonaBoard};
use crate::config::Settings;
use crate::error::{Result, TelosError};
use crate::exec::Executor;
use crate::object::validate_oid;
use crate::sandbox::Op;
use crate::world::World;

/// The handle the interfaces (REST, WebSocket, CLI, benchmarks) use to reach the world.
#[derive(Clone)]
pub struct Telos {
    pub world: Arc<World>,
    /// The persona language models (generation).
    pub personas: Addr<PersonaActor>,
    /// What the personas are doing, readable without waiting for a generation.
    pub persona_board: PersonaBoard,
    /// Embeds through the model host, micro-batched.
    pub embedder: EmbedClient,
    /// Memory records and the vector index over them.
    pub memory: Addr<MemoryActor>,
    /// How many memories each (owner, kind) has, kept by the memory actor.
    pub(crate) memory_owned: crate::actors::memory::Owned,
    pub exec: Executor,
    pub settings: Arc<Settings>,
    /// Every kernel stage event, for subscribers of the receivers.
    pub stages: tokio::sync::broadcast::Sender<StageEvent>,
    pub(crate) directory: Addr<Directory>,
    /// The directory's live actors, looked up without a round trip through its mailbox.
    pub(crate) live: Live,
    pub(crate) started: Instant,
    /// The backups part of health, refreshed by the backup actor.
    pub(crate) backups: crate::backup::SummaryCache,
    /// Kernel runs waiting for a person's approval.
    pub approvals: crate::kernel::approval::Approvals,
    /// Long work (backups, verifications, reindexing) and its progress.
    pub jobs: crate::progress::Jobs,
}

impl Telos {
    /// Runs one top-level operation on `target` through its actor.
    pub async fn call(&self, target: &str, op: Op) -> Reply {
        self.call_with(target, op, None).await
    }

    /// [`Telos::call`], streaming kernel stages to `progress` if the operation misses.
    pub async fn call_with(&self, target: &str, op: Op, progress: Option<Progress>) -> Reply {
        if let Op::Send { selector, .. } = &op
            && let Err(e) = crate::object::validate_selector(selector)
        {
            return Reply {
                result: Err(e),
                logs: Vec::new(),
            };
        }
        if let Op::Send { selector, args } = &op
            && let Some(result) = self.native(target, selector, args).await
        {
            return Reply {
                result,
                logs: Vec::new(),
            };
        }
        if let Err(e) = validate_oid(target) {
            return Reply {
                result: Err(e),
                logs: Vec::new(),
            };
        }
        // An actor may passivate between activation and delivery: ask again.
        for _ in 0..3 {
            let live = self.live.get(target);
            let addr = match live {
                Some(addr) => addr,
                None => match self
                    .directory
                    .send(Activate {
                        oid: target.to_string(),
                    })
                    .await
                {
                    Ok(addr) => addr,
                    Err(e) => return unreachable(crate::actors::down(Who::Directory)(e)),
                },
            };
            match addr
                .send(Dispatch {
                    op: op.clone(),
                    progress: progress.clone(),
                })
                .await
            {
                Ok(reply) => return reply,
                Err(MailboxError::Closed) => continue,
                Err(e) => return unreachable(crate::actors::down(Who::Object)(e)),
            }
        }
        unreachable(TelosError::Unavailable(
            "the object's actor kept stopping: try again".into(),
        ))
    }

    /// The messages the system objects answer natively (bridges to their actors):
    /// `memory_manager.search(query, k)`, `.count()`, `.reindex()`; `backup_manager.list()`,
    /// `.status()`. `None`: not a native message.
    async fn native(&self, target: &str, selector: &str, args: &[Json]) -> Option<Result<Json>> {
        let down = crate::actors::down(crate::actors::Who::Memory);
        match (target, selector) {
            ("memory_manager", "search") => {
                let Some(query) = args.first().and_then(Json::as_str) else {
                    return Some(Err(TelosError::BadRequest(
                        "memory_manager.search(query, k): the query is a string".into(),
                    )));
                };
                let k = args.get(1).and_then(Json::as_u64).unwrap_or(5) as usize;
                let found =
                    memory::search(&self.embedder, &self.memory, query.to_string(), k, None).await;
                Some(found.map(|hits| json!(hits)))
            }
            ("memory_manager", "count") => Some(
                self.world
                    .store()
                    .memory_count()
                    .await
                    .map(|n| json!(n))
                    .map_err(TelosError::from),
            ),
            ("memory_manager", "reindex") => Some(
                self.memory
                    .send(memory::Reindex)
                    .await
                    .map_err(down)
                    .and_then(|r| r)
                    .map(|n| json!({ "records": n })),
            ),
            ("backup_manager", "list") => {
                let dir = self.settings.backup_dir.clone();
                let listed = tokio::task::spawn_blocking(move || crate::backup::list(&dir)).await;
                Some(match listed {
                    Ok(l) => l.map(|l| json!(l)).map_err(TelosError::from),
                    Err(e) => Err(TelosError::internal(e)),
                })
            }
            ("backup_manager", "status") => Some(self.health().await.map(|h| h["backups"].clone())),
            _ => None,
        }
    }

    /// Sends `selector(args)` to `target`.
    pub async fn send(&self, target: &str, selector: &str, args: Vec<Json>) -> Reply {
        self.call(
            target,
            Op::Send {
                selector: selector.to_string(),
                args,
            },
        )
        .await
    }

    /// The current committed state of an object.
    pub async fn object(&self, oid: &str) -> Result<Arc<crate::object::ObjectState>> {
        validate_oid(oid)?;
        let world = self.world.clone();
        let oid = oid.to_string();
        tokio::task::spawn_blocking(move || {
            world
                .get(&oid)?
                .ok_or_else(|| TelosError::NoObject(oid.clone()))
        })
        .await
        .map_err(TelosError::internal)?
    }

    /// The current state of an object, as REST shows it.
    pub async fn view(&self, oid: &str) -> Result<Json> {
        Ok(self.object(oid).await?.to_view())
    }

    /// What `/api/health` reports.
    pub async fn health(&self) -> Result<Json> {
        let objects = self.world.count().await?;
        let live = self.directory.send(LiveCount).await.unwrap_or(0);
        let personas = Some(self.persona_board.status());
        let memory = self.memory.send(memory::Stats).await.ok();
        // Cached when backups change; computed once (on a blocking worker) if not yet.
        let backups = match self.backups.get() {
            Some(b) => b,
            None => {
                let (cache, dir) = (self.backups.clone(), self.settings.backup_dir.clone());
                tokio::task::spawn_blocking(move || cache.refresh(&dir))
                    .await
                    .map_err(TelosError::internal)?
            }
        };
        Ok(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "objects": objects,
            "live_actors": live,
            "cached_objects": self.world.cached_count(),
            "database": self.world.store().location(),
            "script_threads": self.settings.script_threads,
            "seq": self.world.seq(),
            "personas": personas,
            "memory": memory,
            "backups": backups,
        }))
    }
}

impl Telos {
    /// The Retrievable indexer's dependencies.
    pub fn indexer(&self) -> crate::actors::retrievable::Indexer {
        crate::actors::retrievable::Indexer {
            world: self.world.clone(),
            exec: self.exec.clone(),
            embedder: self.embedder.clone(),
            memory: self.memory.clone(),
            owned: self.memory_owned.clone(),
            settings: self.settings.clone(),
        }
    }

    /// The backup actor's dependencies.
    pub fn backup_deps(&self) -> crate::actors::backup::BackupDeps {
        crate::actors::backup::BackupDeps {
            world: self.world.clone(),
            exec: self.exec.clone(),
            memory: self.memory.clone(),
            settings: self.settings.clone(),
            summary: self.backups.clone(),
            jobs: self.jobs.clone(),
        }
    }

    /// Saves what is kept in memory only (the vector index) before the process exits.
    pub async fn shutdown(&self) {
        // A generation in flight (e.g. a learn stage after its answer) ends before the process
        // does: the persona actor answers this only after the work queued before it.
        let drained = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            self.personas.send(crate::actors::persona::Status),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("a generation was still running at shutdown");
        }
        match self.memory.send(memory::Save).await {
            Ok(Ok(())) => tracing::info!("memory index saved"),
            Ok(Err(e)) => tracing::error!(error = %e, "saving the memory index at shutdown"),
            Err(e) => tracing::error!(error = %e, "the memory actor is gone at shutdown"),
        }
    }
}

fn unreachable(error: TelosError) -> Reply {
    Reply {
        result: Err(error),
        logs: Vec::new(),
    }
}
