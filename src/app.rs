//! One startup path, used by `telos serve` and by the tests alike:
//! [`Application::build`] opens the world and binds the listener, [`Application::run_until_stopped`]
//! serves until the process is told to stop.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use anyhow::{Context as _, bail};
use serde_json::{Value as Json, json};

use crate::actors::Who;
use crate::actors::backup::BackupActor;
use crate::actors::directory::{Activate, Directory, LiveCount};
use crate::actors::kernel::{GenerativeKernel, KernelDeps, Progress, StageEvent, Understand};
use crate::actors::memory::{self, MemoryActor};
use crate::actors::object::{Dispatch, Reply};
use crate::actors::persona::{EmbedClient, EmbedderActor, PersonaActor, PersonaBoard};
use crate::config::Settings;
use crate::error::{Result, TelosError};
use crate::exec::Executor;
use crate::object::validate_oid;
use crate::sandbox::Op;
use crate::store::Store;
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
    pub exec: Executor,
    pub settings: Arc<Settings>,
    /// Every kernel stage event, for subscribers of the receivers.
    pub stages: tokio::sync::broadcast::Sender<StageEvent>,
    directory: Addr<Directory>,
    started: Instant,
    /// The backups part of health, refreshed by the backup actor.
    backups: crate::backup::SummaryCache,
}

impl Telos {
    /// Opens the store and starts the script threads and the actors. Must run inside an actix
    /// system. `kernel` receives the messages nobody understands (default: the
    /// [`GenerativeKernel`]).
    pub async fn start(
        settings: Settings,
        kernel: Option<Recipient<Understand>>,
    ) -> anyhow::Result<Telos> {
        let store_cfg = settings.store_config();
        let world = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let store = Store::open(&store_cfg)?;
            tracing::info!(db = store.location(), "world opened");
            Ok(World::new(store)?)
        })
        .await
        .context("opening the store")??;
        let exec = Executor::start(
            world.clone(),
            settings.limits(),
            settings.script_threads,
            settings.script_queue,
        )?;
        let scripted = match settings.scripted_personas.as_str() {
            "" => None,
            path => Some(crate::llm::scripted::Scripted::load(std::path::Path::new(
                path,
            ))?),
        };
        let persona_board = PersonaBoard::new(&settings);
        let personas = start_sync(PersonaActor::new(
            &settings,
            scripted,
            persona_board.clone(),
        ));
        if settings.llm_preload {
            personas.do_send(crate::actors::persona::Warm);
        }
        // The embedder has threads of its own: recall and search never wait for a generation,
        // and with two workers a search does not wait for the kernel's own embeddings either.
        let embedders = EmbedderActor::start(&settings, &persona_board);
        if settings.llm_preload {
            // One worker loads now (two loading libtorch models at once gain nothing); the
            // other loads on its first use.
            embedders.do_send(crate::actors::persona::LoadEmbedder);
        }
        let embedder = EmbedClient::start(embedders, settings.embedder_workers);
        let memory = {
            let world = world.clone();
            let (path, every) = (settings.memory_index_path(), settings.memory_save_every);
            let actor = tokio::task::spawn_blocking(move || MemoryActor::open(world, &path, every))
                .await
                .context("opening the memory")??;
            start_sync(actor)
        };
        let settings = Arc::new(settings);
        let (stages, _) = tokio::sync::broadcast::channel(1024);
        let kernel = kernel.unwrap_or_else(|| {
            GenerativeKernel::new(KernelDeps {
                world: world.clone(),
                exec: exec.clone(),
                personas: personas.clone(),
                memory: memory.clone(),
                embedder: embedder.clone(),
                settings: settings.clone(),
                stages: stages.clone(),
            })
            .start()
            .recipient()
        });
        let directory = Directory::new(
            world.clone(),
            exec.clone(),
            kernel,
            settings.passivate_after(),
        )
        .start();
        Ok(Telos {
            world,
            personas,
            persona_board,
            embedder,
            memory,
            stages,
            exec,
            settings,
            directory,
            started: Instant::now(),
            backups: crate::backup::SummaryCache::default(),
        })
    }

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
            let addr = match self
                .directory
                .send(Activate {
                    oid: target.to_string(),
                })
                .await
            {
                Ok(addr) => addr,
                Err(e) => return unreachable(crate::actors::down(Who::Directory)(e)),
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
            ("memory_manager", "count") => {
                Some(self.world.store().memory_count().await.map(|n| json!(n)))
            }
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
        let objects = self.world.store().count().await?;
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

/// Starts an already built sync actor on a thread of its own (a one-thread `SyncArbiter`,
/// whose factory is called once).
fn start_sync<A>(actor: A) -> Addr<A>
where
    A: Actor<Context = SyncContext<A>> + Send,
{
    let slot = std::sync::Mutex::new(Some(actor));
    SyncArbiter::start(1, move || {
        slot.lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("a one-thread arbiter builds its actor once")
    })
}

fn unreachable(error: TelosError) -> Reply {
    Reply {
        result: Err(error),
        logs: Vec::new(),
    }
}

/// A running server: the world plus its HTTP/WebSocket listener.
pub struct Application {
    telos: Telos,
    addr: SocketAddr,
    server: actix_web::dev::Server,
}

impl Application {
    /// Opens the world and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        check_exposure(&settings)?;
        let listener = TcpListener::bind(&settings.bind)
            .with_context(|| format!("binding {}", settings.bind))?;
        let addr = listener.local_addr()?;
        let telos = Telos::start(settings, None).await?;
        crate::actors::retrievable::start(telos.indexer());
        let backups =
            BackupActor::new(telos.backup_deps(), telos.settings.backup_dir.clone()).start();
        let server = crate::http::server(telos.clone(), backups, listener)?;
        Ok(Application {
            telos,
            addr,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn telos(&self) -> &Telos {
        &self.telos
    }

    /// Serves until SIGINT/SIGTERM or until the server handle is stopped.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.telos.shutdown().await;
        served
    }
}

/// Refuses to listen beyond loopback without an admin token.
fn check_exposure(settings: &Settings) -> anyhow::Result<()> {
    let loopback = settings
        .bind
        .parse::<SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or_else(|_| settings.bind.starts_with("localhost:"));
    if !loopback && settings.admin_token.is_empty() {
        bail!(
            "refusing to listen on {} without an admin token: set TELOS_ADMIN_TOKEN (or bind 127.0.0.1)",
            settings.bind
        );
    }
    Ok(())
}
