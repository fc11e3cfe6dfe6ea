//! `ObjectActor`: one object's mailbox.
//!
//! Top-level operations on an object are handled one at a time (an atomic response holds the
//! mailbox until the operation has committed or failed). The work itself runs on the script
//! threads; nested sends inside it do not go through mailboxes (see `world` for why that cannot
//! deadlock and still serialises correctly). An actor idle for longer than its passivation time
//! stops; its state is safe in the store and it is started again on the next message.

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value as Json;

use super::kernel::{Progress, Understand};
use crate::error::TelosError;
use crate::exec::Executor;
use crate::kernel::Status;
use crate::sandbox::{Op, Outcome};

/// How many times one message may go to the kernel and come back before we give up.
const MAX_KERNEL_ROUNDS: usize = 3;

/// Runs one top-level operation on this object.
#[derive(Message, Debug)]
#[rtype(result = "Reply")]
pub struct Dispatch {
    pub op: Op,
    /// Where the kernel streams its stages if the operation misses.
    pub progress: Option<Progress>,
}

/// The answer to a [`Dispatch`]: the value or error, and what the methods logged on the way.
#[derive(Debug)]
pub struct Reply {
    pub result: Result<Json, TelosError>,
    pub logs: Vec<String>,
}

pub struct ObjectActor {
    oid: String,
    exec: Executor,
    kernel: Recipient<Understand>,
    /// Stop after this long without messages.
    passivate_after: Duration,
    last_active: Instant,
}

impl ObjectActor {
    pub fn new(
        oid: String,
        exec: Executor,
        kernel: Recipient<Understand>,
        passivate_after: Duration,
    ) -> Self {
        ObjectActor {
            oid,
            exec,
            kernel,
            passivate_after,
            last_active: Instant::now(),
        }
    }
}

impl Actor for ObjectActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!(oid = %self.oid, "object activated");
        let every = (self.passivate_after / 2).max(Duration::from_millis(100));
        ctx.run_interval(every, |act, ctx| {
            if act.last_active.elapsed() >= act.passivate_after {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(oid = %self.oid, "object passivated");
    }
}

impl Handler<Dispatch> for ObjectActor {
    type Result = AtomicResponse<Self, Reply>;

    fn handle(&mut self, msg: Dispatch, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let exec = self.exec.clone();
        let kernel = self.kernel.clone();
        let oid = self.oid.clone();
        let deleting = matches!(msg.op, Op::Delete);
        let (op, selector) = msg.op.describe();
        // One span per top-level message: everything logged while it runs (a kernel run, its
        // stages) is attributed to it; its outcome and duration are recorded when it ends. At
        // debug level (`RUST_LOG=telos=debug`): an enabled span's fields are formatted when it
        // is made and recorded, ~9% of the server's CPU per message under load. Kernel runs
        // and their stages have info spans of their own; `/metrics` counts and times messages.
        let span = tracing::debug_span!(
            "message",
            target = %oid,
            op,
            selector,
            outcome = tracing::field::Empty,
            ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let work = async move {
            let mut all_logs = Vec::new();
            let mut learned: Option<super::kernel::KernelRun> = None;
            for _ in 0..=MAX_KERNEL_ROUNDS {
                let outcome = match exec.run(&oid, msg.op.clone()).await {
                    Ok(o) => o,
                    Err(e) => return (Err(e), all_logs),
                };
                match outcome {
                    Outcome::Done { value, logs } => {
                        all_logs.extend(logs);
                        if let Some(run) = &learned {
                            run.answer(Status::Done, serde_json::json!({ "value": value }));
                        }
                        return (Ok(value), all_logs);
                    }
                    Outcome::Failed { error, logs } => {
                        all_logs.extend(logs);
                        if let Some(run) = &learned {
                            run.answer(
                                Status::Failed,
                                serde_json::json!({ "error": error.to_string() }),
                            );
                        }
                        return (Err(error), all_logs);
                    }
                    Outcome::Miss { miss, logs } => {
                        all_logs.extend(logs);
                        let answer = kernel
                            .send(Understand {
                                miss: miss.clone(),
                                progress: msg.progress.clone(),
                            })
                            .await;
                        match answer {
                            Ok(Ok(run)) => {
                                learned = Some(run);
                                continue;
                            }
                            Ok(Err(e)) => return (Err(e), all_logs),
                            Err(e) => {
                                return (Err(super::down(super::Who::Kernel)(e)), all_logs);
                            }
                        }
                    }
                }
            }
            (
                Err(TelosError::MethodError(format!(
                    "{oid}: the kernel answered {MAX_KERNEL_ROUNDS} times but the message is still not understood"
                ))),
                all_logs,
            )
        };
        let work = tracing::Instrument::instrument(work, span.clone());
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |(result, logs), act, ctx| {
                act.last_active = Instant::now();
                let outcome = match &result {
                    Ok(_) => "done",
                    Err(e) => e.code(),
                };
                span.record("outcome", outcome);
                let took = started.elapsed();
                span.record("ms", took.as_secs_f64() * 1000.0);
                let m = crate::metrics::metrics();
                m.count(
                    "telos_messages_total",
                    "Top-level messages answered, by operation and outcome (an error code).",
                    &[("op", op), ("outcome", outcome)],
                    1,
                );
                m.observe(
                    "telos_message_duration_seconds",
                    "Time from a top-level message reaching its object's actor to its answer.",
                    &[("op", op)],
                    took,
                );
                span.in_scope(|| tracing::debug!("message answered"));
                // The object is gone (deleted, or never existed): no reason to stay alive.
                let gone = match &result {
                    Ok(_) => deleting,
                    Err(TelosError::NoObject(oid)) => *oid == act.oid,
                    Err(_) => false,
                };
                if gone {
                    ctx.stop();
                }
                Reply { result, logs }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::actors::directory::{Activate, Directory, LiveCount};
    use crate::kernel::pipeline::Emitter;
    use crate::sandbox::Limits;
    use crate::store::{Store, StoreConfig};
    use crate::world::World;

    /// A kernel that teaches every miss `return 42` (or refuses, when `teach` is false),
    /// counting what it was asked.
    struct FakeKernel {
        exec: Executor,
        teach: bool,
        asked: Arc<AtomicUsize>,
    }

    impl Actor for FakeKernel {
        type Context = Context<Self>;
    }

    impl Handler<Understand> for FakeKernel {
        type Result = ResponseFuture<Result<crate::actors::kernel::KernelRun, TelosError>>;

        fn handle(&mut self, msg: Understand, _: &mut Context<Self>) -> Self::Result {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let (exec, teach) = (self.exec.clone(), self.teach);
            Box::pin(async move {
                if !teach {
                    return Err(TelosError::DoesNotUnderstand {
                        receiver: msg.miss.receiver,
                        selector: msg.miss.selector,
                    });
                }
                let install = Op::SetMethod {
                    name: msg.miss.selector.clone(),
                    source: "function (self) { return 42; }".into(),
                };
                match exec.run(&msg.miss.receiver, install).await? {
                    Outcome::Done { .. } => {}
                    other => panic!("installing failed: {other:?}"),
                }
                let (stages, _) = tokio::sync::broadcast::channel(16);
                Ok(crate::actors::kernel::KernelRun {
                    emitter: Emitter::new(&msg.miss, stages, None),
                    answered: Arc::default(),
                })
            })
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        directory: Addr<Directory>,
        live: crate::actors::directory::Live,
        asked: Arc<AtomicUsize>,
    }

    async fn setup(teach: bool, passivate_after: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Opening blocks on the store's own runtime: not on this one.
        let world = tokio::task::spawn_blocking(move || {
            World::new(Store::open(&StoreConfig::embedded(data)).unwrap()).unwrap()
        })
        .await
        .unwrap();
        let exec = Executor::start(world.clone(), Limits::default(), 1, 16).unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let kernel = FakeKernel {
            exec: exec.clone(),
            teach,
            asked: asked.clone(),
        }
        .start();
        let directory = Directory::new(world, exec, kernel.recipient(), passivate_after);
        let live = directory.live();
        Setup {
            _dir: dir,
            directory: directory.start(),
            live,
            asked,
        }
    }

    async fn dispatch(s: &Setup, oid: &str, op: Op) -> Result<Json, TelosError> {
        let actor = s
            .directory
            .send(Activate { oid: oid.into() })
            .await
            .unwrap();
        actor
            .send(Dispatch { op, progress: None })
            .await
            .unwrap()
            .result
    }

    fn send(selector: &str) -> Op {
        Op::Send {
            selector: selector.into(),
            args: vec![],
        }
    }

    /// Polls `check` until it holds (no fixed sleep decides the outcome).
    async fn eventually(mut check: impl AsyncFnMut() -> bool) {
        for _ in 0..600 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the condition never held");
    }

    #[actix_web::test]
    async fn a_miss_goes_to_the_kernel_once_and_the_message_is_answered_by_what_it_installed() {
        let s = setup(true, Duration::from_secs(60)).await;
        let child = dispatch(
            &s,
            "genesis_obj",
            Op::Clone {
                slots: Default::default(),
            },
        )
        .await
        .unwrap();
        let child = child["oid"].as_str().unwrap().to_string();
        assert_eq!(
            dispatch(&s, &child, send("answer")).await.unwrap(),
            json!(42)
        );
        // Learned: the second send finds the method and the kernel is not asked again.
        assert_eq!(
            dispatch(&s, &child, send("answer")).await.unwrap(),
            json!(42)
        );
        assert_eq!(s.asked.load(Ordering::SeqCst), 1);
    }

    #[actix_web::test]
    async fn a_kernel_that_cannot_help_answers_the_error_and_changes_nothing() {
        let s = setup(false, Duration::from_secs(60)).await;
        let err = dispatch(&s, "genesis_obj", send("fly")).await.unwrap_err();
        assert_eq!(err.code(), "does_not_understand", "{err}");
        let err = dispatch(&s, "genesis_obj", send("fly")).await.unwrap_err();
        assert_eq!(err.code(), "does_not_understand", "{err}");
        assert_eq!(s.asked.load(Ordering::SeqCst), 2);
    }

    #[actix_web::test]
    async fn an_actor_for_a_missing_object_stops_and_idle_actors_are_passivated() {
        let s = setup(false, Duration::from_millis(200)).await;
        let err = dispatch(&s, "nobody", send("x")).await.unwrap_err();
        assert!(
            matches!(err, TelosError::NoObject(ref o) if o == "nobody"),
            "{err}"
        );
        // The same actor while it lives; a fresh one after.
        let a = s
            .directory
            .send(Activate {
                oid: "genesis_obj".into(),
            })
            .await
            .unwrap();
        let b = s
            .directory
            .send(Activate {
                oid: "genesis_obj".into(),
            })
            .await
            .unwrap();
        assert_eq!(a, b);
        // Callers find the live actor without asking the directory, until it stops.
        assert_eq!(s.live.get("genesis_obj"), Some(a.clone()));
        let d = s.directory.clone();
        eventually(async || d.send(LiveCount).await.unwrap() == 0).await;
        assert!(!a.connected());
        assert_eq!(s.live.get("genesis_obj"), None);
        // A passivated object answers again: its state is in the store.
        assert!(
            dispatch(
                &s,
                "genesis_obj",
                Op::Clone {
                    slots: Default::default()
                }
            )
            .await
            .is_ok()
        );
    }
}
