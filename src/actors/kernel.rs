//! The seam where a message nobody understands is handed over, and the generative kernel that
//! answers it: wiring only. The stages themselves are in [`crate::kernel::pipeline`].
//!
//! An [`super::object::ObjectActor`] whose operation ends in a [`Miss`] sends one [`Understand`]
//! to the kernel recipient it was given. `Ok(run)` means the kernel installed a method: the
//! object runs the original message again, reports the `answer` stage through
//! [`KernelRun::answer`], and only then does the learn stage remember the method. An error is the
//! answer to the original message. Concurrent misses of one selector on one receiver share one
//! run; runs are bounded (`kernel_concurrent_runs` at once, `kernel_runs_per_minute`); a run that
//! errors or panics answers every waiter.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt as _;
use serde_json::Value as Json;
use tokio::sync::{broadcast, oneshot};

use super::memory::{MemoryActor, Remember, Search};
use super::persona::{Generate, PersonaActor};
use crate::config::Settings;
use crate::error::TelosError;
use crate::exec::Executor;
use crate::kernel::pipeline::{self, Config, Facts, Learning, Memory, Personas, Sandbox};
pub use crate::kernel::pipeline::{Emitter, Progress, StageEvent};
use crate::kernel::prompts::{self, ReceiverContext};
use crate::kernel::{Stage, Status};
use crate::llm::{Generated, Message as Chat};
use crate::memory::{Found, NewMemory};
use crate::object::{Method, PRIMORDIAL, Slot, ancestors};
use crate::sandbox::{Miss, Op, Outcome};
use crate::world::World;

/// Asks the kernel to make `miss.receiver` understand `miss.selector`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<KernelRun, TelosError>")]
pub struct Understand {
    pub miss: Miss,
    pub progress: Option<Progress>,
}

/// A successful kernel run; the object reports the answer through it.
#[derive(Debug, Clone)]
pub struct KernelRun {
    pub emitter: Emitter,
    /// Told once the object has answered the original message: the learn stage waits for it.
    pub answered: Arc<tokio::sync::Notify>,
}

impl KernelRun {
    /// Reports the answer to the original message (the `answer` stage) and lets the learn stage
    /// go ahead.
    pub fn answer(&self, status: Status, detail: Json) {
        self.emitter.emit(Stage::Answer, status, detail);
        self.answered.notify_one();
    }
}

/// The kernel of a world without a generative kernel: every miss is a `does_not_understand`.
pub struct NoKernel;

impl Actor for NoKernel {
    type Context = Context<Self>;
}

impl Handler<Understand> for NoKernel {
    type Result = Result<KernelRun, TelosError>;

    fn handle(&mut self, msg: Understand, _: &mut Context<Self>) -> Self::Result {
        Err(TelosError::DoesNotUnderstand {
            receiver: msg.miss.receiver,
            selector: msg.miss.selector,
        })
    }
}

/// What a kernel run needs: the pipeline's ports, over the actors and the world.
#[derive(Clone)]
pub struct KernelDeps {
    pub world: Arc<World>,
    pub exec: Executor,
    pub personas: Addr<PersonaActor>,
    pub memory: Addr<MemoryActor>,
    pub settings: Arc<Settings>,
    pub stages: broadcast::Sender<StageEvent>,
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
                .map_err(|e| format!("the persona host is not running: {e}"))?
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
        let request = self.memory.send(Search {
            query,
            k,
            kind: Some("method".into()),
        });
        async move {
            request
                .await
                .map_err(|e| format!("the memory is not running: {e}"))?
                .map_err(|e| e.to_string())
        }
    }

    fn remember(&self, item: NewMemory) -> impl Future<Output = Result<u64, String>> + Send {
        let request = self.memory.send(Remember { items: vec![item] });
        async move {
            let keys = request
                .await
                .map_err(|e| format!("the memory is not running: {e}"))?
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
            tokio::task::spawn_blocking(move || receiver_context(&world, &miss))
                .await
                .map_err(TelosError::internal)?
        }
    }

    fn related(&self, a: &str, b: &str) -> impl Future<Output = bool> + Send {
        let world = self.world.clone();
        let (a, b) = (a.to_string(), b.to_string());
        async move {
            tokio::task::spawn_blocking(move || {
                let ca = ancestors(&a, |o| world.get(o)).unwrap_or_default();
                let cb = ancestors(&b, |o| world.get(o)).unwrap_or_default();
                ca.iter()
                    .any(|x| !PRIMORDIAL.contains(&x.as_str()) && cb.contains(x))
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
    ) -> impl Future<Output = Result<Vec<Json>, TelosError>> + Send {
        let world = self.world.clone();
        let (receiver, selector) = (receiver.to_string(), selector.to_string());
        async move {
            world
                .store()
                .recent_failures(&receiver, &selector, since)
                .await
        }
    }

    fn record_attempt(&self, attempt: Json) -> impl Future<Output = ()> + Send {
        let world = self.world.clone();
        async move {
            if let Err(e) = world.store().record_attempt(attempt).await {
                tracing::warn!(error = %e, "recording a kernel attempt");
            }
        }
    }
}

/// What the kernel knows of the receiver, read from the world (blocking).
fn receiver_context(world: &World, miss: &Miss) -> Result<ReceiverContext, TelosError> {
    let obj = world
        .get(&miss.receiver)?
        .ok_or_else(|| TelosError::NotFound(format!("no object {}", miss.receiver)))?;
    let chain = ancestors(&miss.receiver, |o| world.get(o))?;
    // Every slot `self.x` can read: the receiver's own, then inherited ones (the nearest
    // definition wins), but not the primordial objects' descriptions.
    let mut values: Vec<(String, String)> = Vec::new();
    let mut methods = std::collections::BTreeSet::new();
    for oid in &chain {
        let Some(o) = world.get(oid)? else { continue };
        let primordial = PRIMORDIAL.contains(&oid.as_str());
        for (name, slot) in &o.slots {
            match slot {
                Slot::Method(_) => {
                    methods.insert(name.clone());
                }
                Slot::Value(v)
                    if !primordial
                        && name != "parent*"
                        && !values.iter().any(|(n, _)| n == name) =>
                {
                    values.push((name.clone(), prompts::short(&v.to_string(), 200)));
                }
                Slot::Value(_) => {}
            }
        }
    }
    Ok(ReceiverContext {
        oid: miss.receiver.clone(),
        name: obj.name(),
        ancestors: chain.into_iter().skip(1).collect(),
        values,
        methods: methods.into_iter().collect(),
        selector: miss.selector.clone(),
        args: miss.args.clone(),
    })
}

/// How long the learn stage waits for the object to answer before it goes ahead anyway.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Pause before the learn stage's first retry (then twice that, ...).
const LEARN_RETRY_PAUSE: Duration = Duration::from_millis(500);

type Waiters = Vec<oneshot::Sender<Result<KernelRun, TelosError>>>;

/// The generative kernel: turns misses into tested, remembered methods.
pub struct GenerativeKernel {
    deps: KernelDeps,
    inflight: HashMap<(String, String), Waiters>,
    /// Runs at once (`kernel_concurrent_runs`); the others wait for a permit.
    permits: Arc<tokio::sync::Semaphore>,
    /// When recent runs started, against `kernel_runs_per_minute`.
    recent: std::collections::VecDeque<Instant>,
}

impl GenerativeKernel {
    pub fn new(deps: KernelDeps) -> Self {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            deps.settings.kernel_concurrent_runs.max(1),
        ));
        GenerativeKernel {
            deps,
            inflight: HashMap::new(),
            permits,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Whether another run may start this minute.
    fn admit(&mut self) -> Result<(), TelosError> {
        let per_minute = self.deps.settings.kernel_runs_per_minute;
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        if per_minute > 0 && self.recent.len() >= per_minute {
            return Err(TelosError::RateLimited(format!(
                "the kernel already started {per_minute} runs in the last minute (kernel_runs_per_minute); try again shortly"
            )));
        }
        self.recent.push_back(now);
        Ok(())
    }
}

impl Actor for GenerativeKernel {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    key: (String, String),
    result: Result<KernelRun, TelosError>,
}

/// Runs the stages up to install, then (after the answer) the learn stage.
async fn learn_one(
    deps: KernelDeps,
    miss: Miss,
    progress: Option<Progress>,
) -> Result<KernelRun, TelosError> {
    let em = Emitter::new(&miss, deps.stages.clone(), progress);
    let cfg = Config::from_settings(&deps.settings);
    let learning: Learning = pipeline::run_recorded(&deps, &cfg, &miss, &em).await?;
    let answered = Arc::new(tokio::sync::Notify::new());
    let (wait, emitter) = (answered.clone(), em.clone());
    // The person gets the answer first; remembering happens right after it.
    actix::spawn(async move {
        if tokio::time::timeout(ANSWER_WAIT, wait.notified())
            .await
            .is_err()
        {
            tracing::debug!(run = %emitter.run, "no answer reported in time; learning anyway");
        }
        let _ = pipeline::learn(&deps, &miss, &learning, LEARN_RETRY_PAUSE, &emitter).await;
    });
    Ok(KernelRun {
        emitter: em,
        answered,
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

impl Handler<Understand> for GenerativeKernel {
    type Result = ResponseFuture<Result<KernelRun, TelosError>>;

    fn handle(&mut self, msg: Understand, ctx: &mut Context<Self>) -> Self::Result {
        // Nothing malformed ever reaches a persona.
        if let Err(e) = crate::object::validate_selector(&msg.miss.selector) {
            return Box::pin(async move { Err(e) });
        }
        let key = (msg.miss.receiver.clone(), msg.miss.selector.clone());
        let (tx, rx) = oneshot::channel();
        match self.inflight.get_mut(&key) {
            // The same miss is being learned: wait for that run.
            Some(waiters) => waiters.push(tx),
            None => {
                if let Err(e) = self.admit() {
                    return Box::pin(async move { Err(e) });
                }
                self.inflight.insert(key.clone(), vec![tx]);
                let deps = self.deps.clone();
                let permits = self.permits.clone();
                let me = ctx.address();
                actix::spawn(async move {
                    // A guard, not a hope: whatever happens in the run (an error, a panic in a
                    // stage), every waiter gets an answer and the object is released.
                    let run = async {
                        let _permit = permits.acquire_owned().await;
                        learn_one(deps, msg.miss, msg.progress).await
                    };
                    let result = match AssertUnwindSafe(run).catch_unwind().await {
                        Ok(result) => result,
                        Err(panic) => {
                            tracing::error!(panic = %panic_message(&*panic), "a kernel run panicked");
                            Err(TelosError::Internal(
                                "the kernel failed unexpectedly while learning this message (see the server log)".into(),
                            ))
                        }
                    };
                    me.do_send(Finished { key, result });
                });
            }
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(TelosError::Unavailable("the kernel stopped".into())))
        })
    }
}

impl Handler<Finished> for GenerativeKernel {
    type Result = ();

    fn handle(&mut self, msg: Finished, _: &mut Context<Self>) {
        for waiter in self.inflight.remove(&msg.key).unwrap_or_default() {
            let _ = waiter.send(msg.result.clone());
        }
    }
}
