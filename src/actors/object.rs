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
        // stages) is attributed to it; its outcome and duration are recorded when it ends.
        let span = tracing::info_span!(
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
