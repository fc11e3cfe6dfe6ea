//! One startup path, used by `telos serve` and by the tests alike: the wiring and nothing else.
//! [`Telos::start`] opens the world and starts the actors; [`Application::build`] adds the
//! Retrievable indexer, the backup actor and the HTTP listener; [`Application::run_until_stopped`]
//! serves until the process is told to stop.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use anyhow::{Context as _, bail};

use crate::actors::backup::Backups;
use crate::actors::directory::Directory;
use crate::actors::kernel::{GenerativeKernel, KernelDeps, Understand};
use crate::actors::memory::MemoryActor;
use crate::actors::persona::{EmbedClient, EmbedderActor, PersonaActor, PersonaBoard};
use crate::config::Settings;
use crate::exec::Executor;
use crate::store::Store;
use crate::world::World;

pub use crate::telos::Telos;

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
        let jobs = crate::progress::Jobs::default();
        let persona_board = PersonaBoard::new(&settings).with_jobs(jobs.clone());
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
        let (memory, memory_owned) = {
            let world = world.clone();
            let (path, every) = (settings.memory_index_path(), settings.memory_save_every);
            let actor = tokio::task::spawn_blocking(move || MemoryActor::open(world, &path, every))
                .await
                .context("opening the memory")??;
            let owned = actor.owned();
            (start_sync(actor), owned)
        };
        let settings = Arc::new(settings);
        let (stages, _) = tokio::sync::broadcast::channel(1024);
        let approvals = crate::kernel::approval::Approvals::default();
        let kernel = kernel.unwrap_or_else(|| {
            GenerativeKernel::new(KernelDeps {
                world: world.clone(),
                exec: exec.clone(),
                personas: personas.clone(),
                memory: memory.clone(),
                embedder: embedder.clone(),
                settings: settings.clone(),
                stages: stages.clone(),
                approvals: approvals.clone(),
                slot: Default::default(),
            })
            .start()
            .recipient()
        });
        let directory = Directory::new(
            world.clone(),
            exec.clone(),
            kernel,
            settings.passivate_after(),
        );
        let live = directory.live();
        let directory = directory.start();
        Ok(Telos {
            world,
            personas,
            persona_board,
            embedder,
            memory,
            memory_owned,
            stages,
            exec,
            settings,
            directory,
            live,
            started: Instant::now(),
            backups: crate::backup::SummaryCache::default(),
            approvals,
            jobs,
        })
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
        let backups = Backups::start(telos.backup_deps(), telos.settings.backup_dir.clone());
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
