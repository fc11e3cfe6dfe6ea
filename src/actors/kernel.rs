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
use tokio::sync::oneshot;

pub use super::kernel_deps::KernelDeps;
use crate::error::TelosError;
use crate::kernel::admission::RateWindow;
use crate::kernel::pipeline::{self, Config, Learning};
pub use crate::kernel::pipeline::{Emitter, Progress, StageEvent};
use crate::kernel::{Stage, Status};
use crate::sandbox::Miss;

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
    /// Run starts in the last minute, against `kernel_runs_per_minute`.
    admission: RateWindow,
}

impl GenerativeKernel {
    pub fn new(deps: KernelDeps) -> Self {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            deps.settings.kernel_concurrent_runs.max(1),
        ));
        let deps_rate = deps.settings.kernel_runs_per_minute;
        GenerativeKernel {
            deps,
            inflight: HashMap::new(),
            permits,
            admission: RateWindow::new(deps_rate),
        }
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
    let learning = pipeline::run_recorded(&deps, &cfg, &miss, &em).await;
    // The learn stage runs after the answer, outside the kernel's concurrent runs.
    deps.slot.release();
    let learning: Learning = learning?;
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
                if let Err(e) = self.admission.admit(Instant::now()) {
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
                        let permit = permits.clone().acquire_owned().await.ok();
                        // The run holds its permit through the slot, which gives it up while
                        // a person decides (see `RunSlot`).
                        let deps = KernelDeps {
                            slot: super::kernel_deps::RunSlot::new(permits, permit),
                            ..deps
                        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_answer_stage_is_reported_and_lets_learning_go_ahead() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(8);
        let miss = Miss {
            receiver: "o1".into(),
            selector: "area".into(),
            args: vec![],
        };
        let run = KernelRun {
            emitter: Emitter::new(&miss, tx, None),
            answered: Arc::new(tokio::sync::Notify::new()),
        };
        let learner = run.answered.clone();
        run.answer(Status::Done, serde_json::json!({ "value": 12 }));
        // The permit is stored: the learn stage, waiting after the fact, goes ahead at once.
        learner.notified().await;
        let e = rx.try_recv().unwrap();
        assert_eq!((e.stage, e.status), (Stage::Answer, Status::Done));
        assert_eq!(e.detail["value"], 12);
    }
}
