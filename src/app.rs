//! One startup path, used by `telos serve` and by the tests alike:
//! [`Application::build`] opens the world and binds the listener, [`Application::run_until_stopped`]
//! serves until the process is told to stop.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use anyhow::{Context as _, bail};
use serde_json::{Value as Json, json};

use crate::actors::backup::BackupActor;
use crate::actors::directory::{Activate, Directory, LiveCount};
use crate::actors::kernel::{NoKernel, Understand};
use crate::actors::object::{Dispatch, Reply};
use crate::actors::persona::{self, PersonaActor};
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
    /// The model host (embedder now; persona language models later).
    pub personas: Addr<PersonaActor>,
    pub exec: Executor,
    pub settings: Arc<Settings>,
    directory: Addr<Directory>,
    started: Instant,
}

impl Telos {
    /// Opens the store and starts the script threads and the actors. Must run inside an actix
    /// system. `kernel` receives the messages nobody understands (default: [`NoKernel`]).
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
        let exec = Executor::start(world.clone(), settings.limits(), settings.script_threads)?;
        let kernel = kernel.unwrap_or_else(|| NoKernel.start().recipient());
        let directory = Directory::new(
            world.clone(),
            exec.clone(),
            kernel,
            settings.passivate_after(),
        )
        .start();
        let (models_dir, threads) = (settings.models_dir.clone(), settings.torch_threads);
        let personas =
            SyncArbiter::start(1, move || PersonaActor::new(models_dir.clone(), threads));
        Ok(Telos {
            world,
            personas,
            exec,
            settings: Arc::new(settings),
            directory,
            started: Instant::now(),
        })
    }

    /// Runs one top-level operation on `target` through its actor.
    pub async fn call(&self, target: &str, op: Op) -> Reply {
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
                Err(e) => return unavailable(e),
            };
            match addr.send(Dispatch { op: op.clone() }).await {
                Ok(reply) => return reply,
                Err(MailboxError::Closed) => continue,
                Err(e) => return unavailable(e),
            }
        }
        unavailable("the object's actor kept stopping")
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
                .ok_or_else(|| TelosError::NotFound(format!("no object {oid}")))
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
        let personas = self.personas.send(persona::Status).await.ok();
        let backups = crate::backup::list(&self.settings.backup_dir).unwrap_or_default();
        let last_of = |kind: crate::backup::Kind| {
            backups.iter().rev().find(|m| m.kind == kind).map(|m| {
                json!({
                    "id": m.id,
                    "at": m.created_at,
                    "size": crate::backup::size_of(m),
                    "verification": crate::backup::last_verification(&self.settings.backup_dir, &m.id),
                })
            })
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
            "backups": {
                "count": backups.len(),
                "bytes": backups.iter().map(crate::backup::size_of).sum::<u64>(),
                "last_full": last_of(crate::backup::Kind::Full),
                "last_incremental": last_of(crate::backup::Kind::Incremental),
            },
        }))
    }
}

fn unavailable(e: impl std::fmt::Display) -> Reply {
    Reply {
        result: Err(TelosError::Unavailable(format!(
            "the object could not be reached: {e}"
        ))),
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
        let backups = BackupActor::new(telos.clone(), telos.settings.backup_dir.clone()).start();
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
        self.server.await
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
