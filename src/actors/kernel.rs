//! The seam where a message nobody understands is handed over, and the generative kernel that
//! answers it.
//!
//! An [`super::object::ObjectActor`] whose operation ends in a [`Miss`] sends one [`Understand`]
//! to the kernel recipient it was given. `Ok(run)` means the kernel changed the world so that
//! the message may now be understood (it installed a method): the object runs the original
//! message again and reports the `answer` stage. An error is the answer to the original message.
//!
//! [`GenerativeKernel`] runs the stages of SPEC §7 — recall, write, review, trial, repair,
//! install, learn — streaming a [`StageEvent`] for each to the client that sent the message and
//! to subscribers of the receiver. Any failure leaves the world unchanged (the trial runs on a
//! scratch copy; install is one transaction; a failed learn undoes the install) and names its
//! stage. Runs are recorded (negative memory): a selector that failed too often on a receiver
//! within a window is not tried again until the window has passed. Concurrent misses of one
//! selector on one receiver share one run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::memory::{MemoryActor, Remember, Search};
use super::persona::{Generate, PersonaActor};
use crate::config::Settings;
use crate::error::TelosError;
use crate::exec::Executor;
use crate::kernel::prompts::{self, Example, Feedback, ReceiverContext};
use crate::kernel::{extract_method, static_checks, verdict};
use crate::llm::{Generated, Message as Chat, prompt_text};
use crate::memory::NewMemory;
use crate::object::{Method, PRIMORDIAL, Slot, ancestors};
use crate::sandbox::{Miss, Op, Outcome};
use crate::world::World;

/// One step of a kernel run, as streamed to clients.
#[derive(Debug, Clone, Serialize)]
pub struct StageEvent {
    pub run: String,
    pub receiver: String,
    pub selector: String,
    /// recall, write, review, trial, repair, install, learn, answer (and gate).
    pub stage: String,
    /// started, done or failed.
    pub status: String,
    pub detail: Json,
    /// Milliseconds since the run began.
    pub at_ms: u64,
    /// The connection that sent the message (0: none); it gets the events directly.
    #[serde(skip)]
    pub origin: u64,
}

/// Where a message's stage events go besides the receiver's subscribers.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The sending connection's id (so it is not sent the same event twice).
    pub origin: u64,
    pub sink: mpsc::UnboundedSender<StageEvent>,
}

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
}

/// Sends a run's stage events to the requester and to the receiver's subscribers.
#[derive(Debug, Clone)]
pub struct Emitter {
    run: String,
    receiver: String,
    selector: String,
    started: Instant,
    stages: broadcast::Sender<StageEvent>,
    progress: Option<Progress>,
}

impl Emitter {
    pub fn emit(&self, stage: &str, status: &str, detail: Json) {
        let event = StageEvent {
            run: self.run.clone(),
            receiver: self.receiver.clone(),
            selector: self.selector.clone(),
            stage: stage.to_string(),
            status: status.to_string(),
            detail,
            at_ms: self.started.elapsed().as_millis() as u64,
            origin: self.progress.as_ref().map(|p| p.origin).unwrap_or(0),
        };
        if let Some(p) = &self.progress {
            let _ = p.sink.send(event.clone());
        }
        let _ = self.stages.send(event);
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

/// What a kernel run needs.
#[derive(Clone)]
pub struct KernelDeps {
    pub world: Arc<World>,
    pub exec: Executor,
    pub personas: Addr<PersonaActor>,
    pub memory: Addr<MemoryActor>,
    pub settings: Arc<Settings>,
    pub stages: broadcast::Sender<StageEvent>,
}

type Waiters = Vec<oneshot::Sender<Result<KernelRun, TelosError>>>;

/// The generative kernel: turns misses into tested, remembered methods.
pub struct GenerativeKernel {
    deps: KernelDeps,
    inflight: HashMap<(String, String), Waiters>,
}

impl GenerativeKernel {
    pub fn new(deps: KernelDeps) -> Self {
        GenerativeKernel {
            deps,
            inflight: HashMap::new(),
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

impl Handler<Understand> for GenerativeKernel {
    type Result = ResponseFuture<Result<KernelRun, TelosError>>;

    fn handle(&mut self, msg: Understand, ctx: &mut Context<Self>) -> Self::Result {
        let key = (msg.miss.receiver.clone(), msg.miss.selector.clone());
        let (tx, rx) = oneshot::channel();
        match self.inflight.get_mut(&key) {
            // The same miss is being learned: wait for that run.
            Some(waiters) => waiters.push(tx),
            None => {
                self.inflight.insert(key.clone(), vec![tx]);
                let deps = self.deps.clone();
                let me = ctx.address();
                actix::spawn(async move {
                    let result = learn(deps, msg.miss, msg.progress).await;
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

/// Why one round did not produce a method.
struct RoundFailure {
    stage: &'static str,
    error: String,
    code: String,
}

/// A method that passed review and trial.
struct Candidate {
    source: String,
    raw: Option<Generated>,
    verdict: String,
    trial: Json,
    reused: Option<u64>,
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Runs the stages for one miss.
async fn learn(
    d: KernelDeps,
    miss: Miss,
    progress: Option<Progress>,
) -> Result<KernelRun, TelosError> {
    let em = Emitter {
        run: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        receiver: miss.receiver.clone(),
        selector: miss.selector.clone(),
        started: Instant::now(),
        stages: d.stages.clone(),
        progress,
    };
    let result = stages(&d, &miss, &em).await;
    let (ok, stage, reason) = match &result {
        Ok(_) => (true, String::new(), String::new()),
        Err(TelosError::NotLearned { stage, reason, .. }) => (false, stage.clone(), reason.clone()),
        Err(e) => (false, "kernel".to_string(), e.to_string()),
    };
    // A refusal at the gate is not a new attempt.
    if stage != "gate" {
        let attempt = json!({
            "run": em.run,
            "receiver": miss.receiver,
            "selector": miss.selector,
            "ok": ok,
            "stage": stage,
            "reason": reason,
            "at": unix_now(),
            "ms": em.started.elapsed().as_millis() as u64,
        });
        if let Err(e) = d.world.store().record_attempt(attempt).await {
            tracing::warn!(error = %e, "recording a kernel attempt");
        }
    }
    match &result {
        Ok(_) => {
            tracing::info!(run = %em.run, receiver = %miss.receiver, selector = %miss.selector, ms = em.started.elapsed().as_millis() as u64, "kernel learned a method")
        }
        Err(e) => tracing::info!(run = %em.run, error = %e, "kernel run failed"),
    }
    result.map(|_| KernelRun { emitter: em })
}

fn fail(miss: &Miss, stage: &str, reason: impl Into<String>) -> TelosError {
    TelosError::NotLearned {
        receiver: miss.receiver.clone(),
        selector: miss.selector.clone(),
        stage: stage.to_string(),
        reason: reason.into(),
    }
}

async fn ask(d: &KernelDeps, persona: &str, messages: Vec<Chat>) -> Result<Generated, String> {
    d.personas
        .send(Generate {
            persona: persona.to_string(),
            messages,
        })
        .await
        .map_err(|e| format!("the persona host is not running: {e}"))?
        .map_err(|e| e.to_string())
}

/// What the kernel knows of the receiver, read from the world.
async fn receiver_context(d: &KernelDeps, miss: &Miss) -> Result<ReceiverContext, TelosError> {
    let world = d.world.clone();
    let miss = miss.clone();
    tokio::task::spawn_blocking(move || {
        let obj = world
            .get(&miss.receiver)?
            .ok_or_else(|| TelosError::NotFound(format!("no object {}", miss.receiver)))?;
        let chain = ancestors(&miss.receiver, |o| world.get(o))?;
        let mut values = Vec::new();
        let mut methods = std::collections::BTreeSet::new();
        for oid in &chain {
            let Some(o) = world.get(oid)? else { continue };
            for (name, slot) in &o.slots {
                match slot {
                    Slot::Method(_) => {
                        methods.insert(name.clone());
                    }
                    Slot::Value(v) if oid == &miss.receiver && name != "parent*" => {
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
    })
    .await
    .map_err(TelosError::internal)?
}

/// Whether `a` and `b` share an ancestor that is not primordial (siblings, parent and child).
async fn related(d: &KernelDeps, a: &str, b: &str) -> bool {
    let world = d.world.clone();
    let (a, b) = (a.to_string(), b.to_string());
    tokio::task::spawn_blocking(move || {
        let ca = ancestors(&a, |o| world.get(o)).unwrap_or_default();
        let cb = ancestors(&b, |o| world.get(o)).unwrap_or_default();
        ca.iter()
            .any(|x| !PRIMORDIAL.contains(&x.as_str()) && cb.contains(x))
    })
    .await
    .unwrap_or(false)
}

/// Runs `op` on the receiver through the script threads.
async fn run_op(d: &KernelDeps, receiver: &str, op: Op) -> Result<Json, String> {
    match d.exec.run(receiver, op).await {
        Ok(Outcome::Done { value, .. }) => Ok(value),
        Ok(Outcome::Failed { error, .. }) => Err(error.to_string()),
        Ok(Outcome::Miss { miss, .. }) => Err(format!(
            "it sends {} to {}, which nothing understands (methods are learned one at a time)",
            miss.selector, miss.receiver
        )),
        Err(e) => Err(e.to_string()),
    }
}

async fn trial(d: &KernelDeps, miss: &Miss, source: &str) -> Result<Json, String> {
    run_op(
        d,
        &miss.receiver,
        Op::Trial {
            name: miss.selector.clone(),
            source: source.to_string(),
            args: miss.args.clone(),
        },
    )
    .await
}

/// What every round of one run shares.
struct RunCtx<'a> {
    d: &'a KernelDeps,
    miss: &'a Miss,
    ctx: &'a ReceiverContext,
    examples: &'a [Example],
    em: &'a Emitter,
}

/// One write → review → trial round. `Ok` is a method that passed.
async fn round(
    run: &RunCtx<'_>,
    feedback: Option<&Feedback>,
    timings: &mut serde_json::Map<String, Json>,
    prompts_seen: &mut Vec<String>,
) -> Result<Result<Candidate, RoundFailure>, TelosError> {
    let RunCtx {
        d,
        miss,
        ctx,
        examples,
        em,
    } = *run;
    // Write.
    let t = Instant::now();
    em.emit("write", "started", json!({ "persona": "BRICK" }));
    let messages = prompts::brick(ctx, examples, feedback);
    prompts_seen.push(prompt_text(&messages));
    let answer = match ask(d, "BRICK", messages).await {
        Ok(a) => a,
        Err(e) => {
            em.emit("write", "failed", json!({ "error": e }));
            return Err(fail(miss, "write", format!("BRICK could not answer: {e}")));
        }
    };
    add_ms(timings, "write", t);
    let source = match extract_method(&answer.text, &miss.selector) {
        Ok(s) => s,
        Err(e) => {
            em.emit(
                "write",
                "failed",
                json!({ "error": e, "raw": answer.text, "model": answer.model }),
            );
            return Ok(Err(RoundFailure {
                stage: "write",
                error: e,
                code: answer.text.clone(),
            }));
        }
    };
    em.emit(
        "write",
        "done",
        json!({ "code": source, "raw": answer.text, "model": answer.model, "backend": answer.backend, "ms": answer.ms }),
    );
    // Review: static checks, the sandbox's compiler, then ALFRED.
    let t = Instant::now();
    em.emit("review", "started", json!({ "persona": "ALFRED" }));
    let checked = match static_checks(&source, &miss.selector) {
        Ok(()) => run_op(
            d,
            &miss.receiver,
            Op::Check {
                name: miss.selector.clone(),
                source: source.clone(),
            },
        )
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        em.emit("review", "failed", json!({ "error": e, "check": "static" }));
        return Ok(Err(RoundFailure {
            stage: "review",
            error: e,
            code: source,
        }));
    }
    let review = match ask(d, "ALFRED", prompts::alfred(ctx, &source)).await {
        Ok(a) => a,
        Err(e) => {
            em.emit("review", "failed", json!({ "error": e }));
            return Err(fail(
                miss,
                "review",
                format!("ALFRED could not answer: {e}"),
            ));
        }
    };
    add_ms(timings, "review", t);
    let reason = match verdict(&review.text) {
        Ok(reason) => reason,
        Err(reason) => {
            let error = format!("ALFRED says INVALID: {reason}");
            em.emit(
                "review",
                "failed",
                json!({ "verdict": "INVALID", "reason": reason, "error": error }),
            );
            return Ok(Err(RoundFailure {
                stage: "review",
                error,
                code: source,
            }));
        }
    };
    em.emit(
        "review",
        "done",
        json!({ "verdict": "VALID", "reason": reason, "model": review.model }),
    );
    // Trial.
    let t = Instant::now();
    em.emit("trial", "started", json!({ "args": miss.args }));
    let tried = trial(d, miss, &source).await;
    add_ms(timings, "trial", t);
    match tried {
        Ok(value) => {
            em.emit(
                "trial",
                "done",
                json!({ "value": value, "ms": t.elapsed().as_millis() as u64 }),
            );
            Ok(Ok(Candidate {
                source,
                raw: Some(answer),
                verdict: format!("VALID: {reason}"),
                trial: value,
                reused: None,
            }))
        }
        Err(e) => {
            em.emit("trial", "failed", json!({ "error": e }));
            Ok(Err(RoundFailure {
                stage: "trial",
                error: e,
                code: source,
            }))
        }
    }
}

fn add_ms(timings: &mut serde_json::Map<String, Json>, stage: &str, t: Instant) {
    let ms = t.elapsed().as_millis() as u64;
    let total = timings.get(stage).and_then(Json::as_u64).unwrap_or(0) + ms;
    timings.insert(stage.to_string(), json!(total));
}

async fn stages(d: &KernelDeps, miss: &Miss, em: &Emitter) -> Result<(), TelosError> {
    let s = &d.settings;
    // Gate: negative memory.
    let since = unix_now() - s.kernel_failure_window_secs as i64;
    let failures = d
        .world
        .store()
        .recent_failures(&miss.receiver, &miss.selector, since)
        .await?;
    if s.kernel_max_failures > 0 && failures.len() >= s.kernel_max_failures {
        let last = failures.last().cloned().unwrap_or(Json::Null);
        let retry_at = last["at"].as_i64().unwrap_or(0) + s.kernel_failure_window_secs as i64;
        let when = chrono::DateTime::from_timestamp(retry_at, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let reason = format!(
            "it failed {} times in the last {} s (last at the {} stage: {}); not trying again before {when}",
            failures.len(),
            s.kernel_failure_window_secs,
            last["stage"].as_str().unwrap_or("?"),
            last["reason"].as_str().unwrap_or("?"),
        );
        em.emit("gate", "failed", json!({ "error": reason }));
        return Err(fail(miss, "gate", reason));
    }
    let ctx = receiver_context(d, miss).await?;
    let mut timings = serde_json::Map::new();

    // 1. Recall.
    let t = Instant::now();
    em.emit(
        "recall",
        "started",
        json!({ "query": ctx.recall_query(), "k": s.recall_k }),
    );
    let recalled = if s.recall_k == 0 {
        Vec::new()
    } else {
        match d
            .memory
            .send(Search {
                query: ctx.recall_query(),
                k: s.recall_k,
                kind: Some("method".into()),
            })
            .await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                em.emit("recall", "failed", json!({ "error": e.to_string() }));
                return Err(fail(miss, "recall", e.to_string()));
            }
            Err(e) => {
                return Err(fail(
                    miss,
                    "recall",
                    format!("the memory is not running: {e}"),
                ));
            }
        }
    };
    add_ms(&mut timings, "recall", t);
    let memories: Vec<Json> = recalled
        .iter()
        .map(|m| json!({ "id": m.id, "distance": m.distance, "selector": m.selector, "owner": m.owner, "text": m.text }))
        .collect();
    em.emit(
        "recall",
        "done",
        json!({ "memories": memories, "ms": t.elapsed().as_millis() as u64 }),
    );
    let examples: Vec<Example> = recalled
        .iter()
        .filter(|m| !m.source.is_empty())
        .map(|m| Example {
            description: m.text.clone(),
            source: m.source.clone(),
        })
        .collect();

    // Reuse: a tested method of the same selector on a related receiver (or a very close one).
    let mut candidate = None;
    for m in recalled
        .iter()
        .filter(|m| m.selector == miss.selector && !m.source.is_empty())
    {
        if !(related(d, &m.owner, &miss.receiver).await || m.distance <= s.kernel_reuse_distance) {
            continue;
        }
        let t = Instant::now();
        em.emit(
            "trial",
            "started",
            json!({ "reuse": m.id, "args": miss.args }),
        );
        match trial(d, miss, &m.source).await {
            Ok(value) => {
                add_ms(&mut timings, "trial", t);
                em.emit(
                    "trial",
                    "done",
                    json!({ "reuse": m.id, "code": m.source, "value": value, "ms": t.elapsed().as_millis() as u64 }),
                );
                candidate = Some(Candidate {
                    source: m.source.clone(),
                    raw: None,
                    verdict: format!(
                        "reused memory {} (a tested method), not reviewed again",
                        m.id
                    ),
                    trial: value,
                    reused: Some(m.id),
                });
                break;
            }
            Err(e) => {
                em.emit("trial", "failed", json!({ "reuse": m.id, "error": e }));
            }
        }
    }

    // 2-5. Write, review, trial; repair with the error fed back.
    let mut feedback: Option<Feedback> = None;
    let mut prompts_seen = Vec::new();
    let mut rounds = 0;
    while candidate.is_none() {
        if rounds > 0 {
            let fb = feedback.as_ref().expect("a failed round leaves feedback");
            em.emit(
                "repair",
                "started",
                json!({ "round": rounds, "of": s.kernel_repair_rounds, "stage": fb.stage, "error": fb.error }),
            );
        }
        match round(
            &RunCtx {
                d,
                miss,
                ctx: &ctx,
                examples: &examples,
                em,
            },
            feedback.as_ref(),
            &mut timings,
            &mut prompts_seen,
        )
        .await?
        {
            Ok(c) => candidate = Some(c),
            Err(f) => {
                if rounds >= s.kernel_repair_rounds {
                    if s.kernel_repair_rounds == 0 {
                        return Err(fail(miss, f.stage, f.error));
                    }
                    let reason = format!(
                        "gave up after {} repair rounds; the last attempt failed at the {} stage: {}",
                        s.kernel_repair_rounds, f.stage, f.error
                    );
                    em.emit("repair", "failed", json!({ "error": reason }));
                    return Err(fail(miss, "repair", reason));
                }
                feedback = Some(Feedback {
                    code: f.code,
                    stage: f.stage.to_string(),
                    error: f.error,
                });
                rounds += 1;
            }
        }
    }
    let c = candidate.expect("the loop ends with a candidate");

    // 6. Install, with provenance; the previous version (if any) goes to the history.
    let t = Instant::now();
    em.emit("install", "started", json!({}));
    let mut method = Method::new(c.source.clone(), "kernel");
    method.provenance = Some(json!({
        "run": em.run,
        "message": ctx.call_text(),
        "prompt": prompts_seen.last().cloned().unwrap_or_default(),
        "recalled": recalled.iter().map(|m| json!({"id": m.id, "distance": m.distance})).collect::<Vec<_>>(),
        "reused": c.reused,
        "brick": c.raw.as_ref().map(|g| json!({"answer": g.text, "model": g.model, "backend": g.backend, "ms": g.ms})),
        "alfred": c.verdict,
        "trial": c.trial,
        "repair_rounds": rounds,
        "stage_ms": Json::Object(timings.clone()),
    }));
    if let Err(e) = run_op(
        d,
        &miss.receiver,
        Op::Install {
            name: miss.selector.clone(),
            method,
        },
    )
    .await
    {
        em.emit("install", "failed", json!({ "error": e }));
        return Err(fail(miss, "install", e));
    }
    add_ms(&mut timings, "install", t);
    em.emit(
        "install",
        "done",
        json!({ "method": miss.selector, "on": miss.receiver }),
    );

    // 7. Learn: BABS describes it; the description is embedded and indexed. A reused method is
    // already in memory (under the receiver it was learned for): nothing new to learn.
    if let Some(id) = c.reused {
        em.emit(
            "learn",
            "done",
            json!({ "reused": id, "description": "already remembered as memory #".to_string() + &id.to_string() }),
        );
        return Ok(());
    }
    let t = Instant::now();
    em.emit("learn", "started", json!({ "persona": "BABS" }));
    let learned = async {
        let description = ask(d, "BABS", prompts::babs(&ctx, &c.source))
            .await
            .map(|g| prompts::one_line(&g.text))?;
        let text = format!("{}.{}: {}", ctx.name, miss.selector, description);
        let keys = d
            .memory
            .send(Remember {
                items: vec![NewMemory {
                    kind: "method".into(),
                    text: text.clone(),
                    prompt: ctx.call_text(),
                    owner: miss.receiver.clone(),
                    selector: miss.selector.clone(),
                    source: c.source.clone(),
                }],
            })
            .await
            .map_err(|e| format!("the memory is not running: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((description, keys))
    }
    .await;
    match learned {
        Ok((description, keys)) => {
            add_ms(&mut timings, "learn", t);
            em.emit(
                "learn",
                "done",
                json!({ "description": description, "memory": keys.first(), "ms": t.elapsed().as_millis() as u64 }),
            );
            Ok(())
        }
        Err(e) => {
            // All or nothing: take the method back out.
            if let Err(undo) = run_op(
                d,
                &miss.receiver,
                Op::RemoveSlot {
                    name: miss.selector.clone(),
                },
            )
            .await
            {
                tracing::error!(error = %undo, "undoing an install after a failed learn");
            }
            em.emit("learn", "failed", json!({ "error": e }));
            Err(fail(miss, "learn", e))
        }
    }
}
