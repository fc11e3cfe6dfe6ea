//! The kernel pipeline's ports ([`Personas`], [`Memory`], [`Sandbox`], [`Facts`]) over the
//! actors, the script threads and the world: what [`super::kernel::GenerativeKernel`] runs the
//! stages with.

use std::future::Future;
use std::sync::Arc;

use actix::Addr;
use serde_json::Value as Json;
use tokio::sync::broadcast;

use super::memory::MemoryActor;
use super::persona::{EmbedClient, Generate, PersonaActor};
use crate::config::Settings;
use crate::error::TelosError;
use crate::exec::Executor;
use crate::kernel::pipeline::{Approver, Facts, Memory, Personas, Sandbox, StageEvent};
use crate::kernel::prompts::ReceiverContext;
use crate::llm::{Generated, Message as Chat};
use crate::memory::{Found, NewMemory};
use crate::object::Method;
use crate::sandbox::{Miss, Op, Outcome};
use crate::world::World;

/// What a kernel run needs: the pipeline's ports, over the actors and the world.
#[derive(Clone)]
pub struct KernelDeps {
    pub world: Arc<World>,
    pub exec: Executor,
    pub personas: Addr<PersonaActor>,
    pub memory: Addr<MemoryActor>,
    /// Recall and remembering embed here, outside the memory actor (see `memory::search`).
    pub embedder: EmbedClient,
    pub settings: Arc<Settings>,
    pub stages: broadcast::Sender<StageEvent>,
    /// Runs waiting for a person (`kernel_approval = "ask"`).
    pub approvals: crate::kernel::approval::Approvals,
    /// This run's place among the kernel's concurrent runs (set per run by the kernel).
    pub slot: RunSlot,
}

/// A run's permit among `kernel_concurrent_runs`: given up while the run waits for a person,
/// so one unanswered approval does not stop every other miss from being learned.
#[derive(Clone, Default)]
pub struct RunSlot {
    permits: Option<Arc<tokio::sync::Semaphore>>,
    held: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

impl RunSlot {
    pub fn new(
        permits: Arc<tokio::sync::Semaphore>,
        held: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> RunSlot {
        RunSlot {
            permits: Some(permits),
            held: Arc::new(std::sync::Mutex::new(held)),
        }
    }

    /// Gives the permit up for good (the run's stages up to install are over).
    pub fn release(&self) {
        drop(self.held().take());
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<tokio::sync::OwnedSemaphorePermit>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Approver for KernelDeps {
    fn approve(
        &self,
        request: crate::kernel::approval::Request,
        timeout: std::time::Duration,
    ) -> impl Future<Output = crate::kernel::approval::Outcome> + Send {
        let (approvals, slot) = (self.approvals.clone(), self.slot.clone());
        async move {
            slot.release();
            let outcome = approvals.ask(request, timeout).await;
            if let Some(permits) = &slot.permits {
                let permit = permits.clone().acquire_owned().await.ok();
                *slot.held() = permit;
            }
            outcome
        }
    }
}

impl Personas for KernelDeps {
    fn ask(
        &self,
        persona: &str,
        messages: Vec<Chat>,
        temperature: Option<f32>,
    ) -> impl Future<Output = Result<Generated, String>> + Send {
        let request = self.personas.send(Generate {
            persona: persona.to_string(),
            messages,
            temperature,
        });
        async move {
            request
                .await
                .map_err(|e| super::down(super::Who::Personas)(e).to_string())?
                .map_err(|e| e.to_string())
        }
    }
}

impl Memory for KernelDeps {
    fn recall(
        &self,
        query: String,
        k: usize,
    ) -> impl Future<Output = Result<Vec<Found>, String>> + Send {
        let (embedder, memory) = (self.embedder.clone(), self.memory.clone());
        async move {
            super::memory::search(
                &embedder,
                &memory,
                query,
                k,
                Some(crate::memory::MemoryKind::Method),
            )
            .await
            .map_err(|e| e.to_string())
        }
    }

    fn remember(&self, item: NewMemory) -> impl Future<Output = Result<u64, String>> + Send {
        let (embedder, memory) = (self.embedder.clone(), self.memory.clone());
        async move {
            let keys = super::memory::remember(&embedder, &memory, vec![item])
                .await
                .map_err(|e| e.to_string())?;
            keys.first()
                .copied()
                .ok_or_else(|| "the memory remembered nothing".to_string())
        }
    }
}

impl KernelDeps {
    /// Runs `op` on `receiver` through the script threads.
    async fn run_op(&self, receiver: String, op: Op) -> Result<Json, String> {
        match self.exec.run(&receiver, op).await {
            Ok(Outcome::Done { value, .. }) => Ok(value),
            Ok(Outcome::Failed { error, .. }) => Err(error.to_string()),
            Ok(Outcome::Miss { miss, .. }) => Err(format!(
                "it sends {} to {}, which nothing understands (methods are learned one at a time)",
                miss.selector, miss.receiver
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Sandbox for KernelDeps {
    fn compile(
        &self,
        receiver: &str,
        selector: &str,
        source: &str,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let op = Op::Check {
            name: selector.to_string(),
            source: source.to_string(),
        };
        let (this, receiver) = (self.clone(), receiver.to_string());
        async move { this.run_op(receiver, op).await.map(|_| ()) }
    }

    fn trial(
        &self,
        receiver: &str,
        selector: &str,
        source: &str,
        args: &[Json],
    ) -> impl Future<Output = Result<Json, String>> + Send {
        let op = Op::Trial {
            name: selector.to_string(),
            source: source.to_string(),
            args: args.to_vec(),
        };
        let (this, receiver) = (self.clone(), receiver.to_string());
        async move { this.run_op(receiver, op).await }
    }

    fn install(
        &self,
        receiver: &str,
        selector: &str,
        method: Method,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let op = Op::Install {
            name: selector.to_string(),
            method,
        };
        let (this, receiver) = (self.clone(), receiver.to_string());
        async move { this.run_op(receiver, op).await.map(|_| ()) }
    }
}

impl Facts for KernelDeps {
    fn context(
        &self,
        miss: &Miss,
    ) -> impl Future<Output = Result<ReceiverContext, TelosError>> + Send {
        let (world, miss) = (self.world.clone(), miss.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                crate::kernel::context::receiver_context(&miss, |o| world.get(o))
            })
            .await
            .map_err(TelosError::internal)?
        }
    }

    fn related(&self, a: &str, b: &str) -> impl Future<Output = bool> + Send {
        let world = self.world.clone();
        let (a, b) = (a.to_string(), b.to_string());
        async move {
            tokio::task::spawn_blocking(move || {
                crate::kernel::context::related(&a, &b, |o| world.get(o))
            })
            .await
            .unwrap_or(false)
        }
    }

    fn failures(
        &self,
        receiver: &str,
        selector: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<crate::store::Failure>, TelosError>> + Send {
        let world = self.world.clone();
        let (receiver, selector) = (receiver.to_string(), selector.to_string());
        async move {
            world
                .store()
                .recent_failures(&receiver, &selector, since)
                .await
                .map_err(TelosError::from)
        }
    }

    fn record_attempt(&self, attempt: crate::store::Attempt) -> impl Future<Output = ()> + Send {
        let world = self.world.clone();
        async move {
            if let Err(e) = world.store().record_attempt(attempt).await {
                tracing::warn!(error = %e, "recording a kernel attempt");
            }
        }
    }
}
