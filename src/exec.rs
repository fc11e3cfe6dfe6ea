//! The script threads: a fixed pool of OS threads, each owning one QuickJS [`Engine`].
//!
//! QuickJS runtimes are not `Send`, and a top-level operation's call tree must stay on one
//! thread, so operations are queued here and each runs start to finish on whichever script
//! thread takes it. Async callers await the outcome on a oneshot channel.

use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context as _;
use tokio::sync::oneshot;

use crate::error::{Result, TelosError};
use crate::sandbox::{Engine, Limits, Op, Outcome, Ran};
use crate::world::World;

/// Script threads get a large stack: nested sends put host frames between JavaScript frames.
const SCRIPT_THREAD_STACK: usize = 64 << 20;

struct Job {
    target: String,
    /// When it was queued (`telos_script_wait_seconds`).
    at: std::time::Instant,
    op: Op,
    reply: oneshot::Sender<Ran>,
    /// Counts the job in `telos_script_queue_depth` until a script thread takes it.
    queued: crate::metrics::Held,
}

/// Operations that may wait for a script thread before new ones are refused as `busy`.
pub const DEFAULT_QUEUE: usize = 10_000;

/// A handle on the script threads. Cheap to clone; the threads stop when every handle is gone.
#[derive(Clone)]
pub struct Executor {
    jobs: mpsc::SyncSender<Job>,
}

impl Executor {
    /// Starts `threads` script threads over `world`, with room for `queue` waiting operations.
    pub fn start(
        world: Arc<World>,
        limits: Limits,
        threads: usize,
        queue: usize,
    ) -> anyhow::Result<Executor> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue.max(1));
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let world = world.clone();
            let (ready_tx, ready_rx) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("telos-script-{i}"))
                .stack_size(SCRIPT_THREAD_STACK)
                .spawn(move || {
                    let mut engine = match Engine::new(world.clone(), limits) {
                        Ok(engine) => {
                            let _ = ready_tx.send(Ok(()));
                            engine
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let job = {
                            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                            queue.recv()
                        };
                        let Ok(job) = job else { break };
                        drop(job.queued);
                        let metrics = crate::metrics::metrics();
                        metrics.observe(
                            "telos_script_wait_seconds",
                            "Time a top-level operation waited for a script thread.",
                            &[],
                            job.at.elapsed(),
                        );
                        let running = std::time::Instant::now();
                        let span = tracing::debug_span!("operation", target = %job.target);
                        let _enter = span.enter();
                        // Writes are queued for the committer; the caller waits for them to be
                        // durable while this thread goes on with the next operation.
                        let outcome = engine.start(&job.target, &job.op);
                        metrics.observe(
                            "telos_script_run_seconds",
                            "Time a top-level operation ran on its script thread (its writes queued, not yet durable).",
                            &[],
                            running.elapsed(),
                        );
                        // The caller may have gone away (client disconnected): nothing to do.
                        let _ = job.reply.send(outcome);
                        if engine.spoiled() {
                            drop(engine);
                            engine = match Engine::new(world.clone(), limits) {
                                Ok(e) => e,
                                Err(e) => {
                                    tracing::error!(error = %e, "could not replace a script engine; this script thread stops");
                                    return;
                                }
                            };
                        }
                    }
                })
                .context("starting a script thread")?;
            ready_rx
                .recv()
                .context("script thread died while starting")??;
        }
        Ok(Executor { jobs })
    }

    fn submit(&self, job: Job) -> Result<()> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => TelosError::Unavailable(
                "busy: too many messages are waiting for a script thread; try again shortly".into(),
            ),
            mpsc::TrySendError::Disconnected(_) => {
                TelosError::Unavailable("the script threads have stopped".into())
            }
        })
    }

    /// Runs one top-level operation on `target` and waits for its outcome.
    pub async fn run(&self, target: &str, op: Op) -> Result<Outcome> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Job {
            target: target.to_string(),
            at: std::time::Instant::now(),
            op,
            reply,
            queued: crate::metrics::Held::new(&crate::metrics::metrics().script_queue),
        })?;
        let ran = outcome
            .await
            .map_err(|_| TelosError::Internal("a script thread stopped mid-operation".into()))?;
        Ok(ran.wait().await)
    }

    /// Runs one operation from a plain thread (benchmarks, tools).
    pub fn run_blocking(&self, target: &str, op: Op) -> Result<Outcome> {
        let (reply, outcome) = oneshot::channel();
        self.submit(Job {
            target: target.to_string(),
            at: std::time::Instant::now(),
            op,
            reply,
            queued: crate::metrics::Held::new(&crate::metrics::metrics().script_queue),
        })?;
        let ran = outcome
            .blocking_recv()
            .map_err(|_| TelosError::Internal("a script thread stopped mid-operation".into()))?;
        Ok(ran.wait_blocking())
    }
}
