//! The generative kernel's stages, as plain async functions over four small ports, so that each
//! stage can be tested alone with fakes (see the tests below) and the actor is only wiring.
//!
//! - [`Personas`]: asks BRICK, ALFRED or BABS.
//! - [`Memory`]: recalls method memories, remembers a learned method.
//! - [`Sandbox`]: compiles, trials (on a scratch copy) and installs a method.
//! - [`Facts`]: what the world knows: the receiver's context, relatedness, past attempts.
//!
//! [`run`] takes a miss through gate → recall → reuse → write → review (static checks and the
//! compiler) → trial → review (ALFRED, who sees the trial's result) → repair → install, and
//! answers the [`Learning`] that [`learn`] finishes after the original message is answered.
//! Every stage reports itself through an [`Emitter`] as [`StageEvent`]s.

use std::collections::HashSet;
use std::future::Future;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument as _;

use super::approval::{self, Approval};
use super::prompts::{self, Example, Feedback, PastFailure, ReceiverContext};
use super::{Stage, Status, extract_method, static_checks, verdict};
use crate::error::TelosError;
use crate::llm::{Generated, Message, prompt_text};
use crate::memory::{Found, NewMemory, ORIGIN_KERNEL};
use crate::object::Method;
use crate::sandbox::Miss;
use crate::store::{Attempt, Failure};

/// One step of a kernel run, as streamed to clients.
#[derive(Debug, Clone, Serialize)]
pub struct StageEvent {
    pub run: String,
    pub receiver: String,
    pub selector: String,
    pub stage: Stage,
    pub status: Status,
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

/// Sends a run's stage events to the requester and to the receiver's subscribers.
#[derive(Debug, Clone)]
pub struct Emitter {
    pub run: String,
    receiver: String,
    selector: String,
    started: Instant,
    stages: broadcast::Sender<StageEvent>,
    progress: Option<Progress>,
    /// When each stage last started, for the per-stage duration histogram.
    begun: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Stage, Instant>>>,
}

impl Emitter {
    /// An emitter for a new run on `miss`.
    pub fn new(
        miss: &Miss,
        stages: broadcast::Sender<StageEvent>,
        progress: Option<Progress>,
    ) -> Emitter {
        Emitter {
            run: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            receiver: miss.receiver.clone(),
            selector: miss.selector.clone(),
            started: Instant::now(),
            stages,
            progress,
            begun: Default::default(),
        }
    }

    pub fn emit(&self, stage: Stage, status: Status, detail: Json) {
        let event = StageEvent {
            run: self.run.clone(),
            receiver: self.receiver.clone(),
            selector: self.selector.clone(),
            stage,
            status,
            detail,
            at_ms: self.started.elapsed().as_millis() as u64,
            origin: self.progress.as_ref().map(|p| p.origin).unwrap_or(0),
        };
        tracing::debug!(run = %self.run, stage = %stage, ?status, "kernel stage");
        {
            let mut begun = self.begun.lock().unwrap_or_else(|p| p.into_inner());
            match status {
                Status::Started => {
                    begun.insert(stage, Instant::now());
                }
                Status::Done | Status::Failed => {
                    if let Some(t) = begun.remove(&stage) {
                        crate::metrics::metrics().observe(
                            "telos_kernel_stage_duration_seconds",
                            "How long each kernel stage took.",
                            &[("stage", stage.as_str())],
                            t.elapsed(),
                        );
                    }
                }
            }
        }
        if let Some(p) = &self.progress {
            let _ = p.sink.send(event.clone());
        }
        let _ = self.stages.send(event);
    }

    /// Milliseconds since the run began.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Asks the personas.
pub trait Personas: Sync {
    fn ask(
        &self,
        persona: &str,
        messages: Vec<Message>,
        temperature: Option<f32>,
    ) -> impl Future<Output = Result<Generated, String>> + Send;
}

/// The memory of learned methods.
pub trait Memory: Sync {
    /// The `k` method memories nearest to `query`.
    fn recall(
        &self,
        query: String,
        k: usize,
    ) -> impl Future<Output = Result<Vec<Found>, String>> + Send;
    /// Remembers one memory; answers its key.
    fn remember(&self, item: NewMemory) -> impl Future<Output = Result<u64, String>> + Send;
}

/// The sandbox, on the receiver of a miss.
pub trait Sandbox: Sync {
    /// The sandbox's compiler.
    fn compile(
        &self,
        receiver: &str,
        selector: &str,
        source: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Runs the method on a scratch copy of the receiver with `args`; nothing is committed.
    fn trial(
        &self,
        receiver: &str,
        selector: &str,
        source: &str,
        args: &[Json],
    ) -> impl Future<Output = Result<Json, String>> + Send;
    /// Installs the method in one transaction.
    fn install(
        &self,
        receiver: &str,
        selector: &str,
        method: Method,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// What the world knows around a miss.
pub trait Facts: Sync {
    fn context(
        &self,
        miss: &Miss,
    ) -> impl Future<Output = Result<ReceiverContext, TelosError>> + Send;
    /// Whether `a` and `b` share a non-primordial ancestor.
    fn related(&self, a: &str, b: &str) -> impl Future<Output = bool> + Send;
    /// Failed attempts of `selector` on `receiver` since `since` (unix seconds), oldest first:
    fn failures(
        &self,
        receiver: &str,
        selector: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<Failure>, TelosError>> + Send;
    fn record_attempt(&self, attempt: Attempt) -> impl Future<Output = ()> + Send;
}

/// A person who approves generated methods (`kernel_approval = "ask"`).
pub trait Approver: Sync {
    /// Waits for a person's decision on `request`, at most `timeout`.
    fn approve(
        &self,
        request: approval::Request,
        timeout: std::time::Duration,
    ) -> impl Future<Output = approval::Outcome> + Send;
}

/// The kernel's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub recall_k: usize,
    pub reuse_distance: f32,
    pub repair_rounds: usize,
    pub max_failures: usize,
    pub failure_window_secs: u64,
    /// Whether methods wait for a person (the receiver's `kernel_approval` slot overrides).
    pub approval: Approval,
    pub approval_timeout: std::time::Duration,
}

impl Config {
    pub fn from_settings(s: &crate::config::Settings) -> Config {
        Config {
            recall_k: s.recall_k,
            reuse_distance: s.kernel_reuse_distance,
            repair_rounds: s.kernel_repair_rounds,
            max_failures: s.kernel_max_failures,
            failure_window_secs: s.kernel_failure_window_secs,
            approval: s.kernel_approval,
            approval_timeout: std::time::Duration::from_secs(s.kernel_approval_timeout_secs),
        }
    }
}

/// Recalled methods shown to BRICK as examples.
pub const MAX_EXAMPLES: usize = 2;

/// BRICK decodes greedily on the first round; repairs sample, so that a repeated prompt cannot
/// bring back the same answer.
pub const REPAIR_TEMPERATURE: f32 = 0.6;

/// Why one round did not produce a method.
#[derive(Debug, Clone)]
pub struct RoundFailure {
    pub stage: Stage,
    pub error: String,
    pub code: String,
}

/// A method that passed review and trial (or was reused).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub source: String,
    pub raw: Option<Generated>,
    pub verdict: String,
    pub trial: Json,
    pub reused: Option<u64>,
}

/// What is left to do after the answer: remember the method.
#[derive(Debug, Clone)]
pub struct Learning {
    pub ctx: ReceiverContext,
    pub source: String,
    /// A reused method is already remembered (under this memory id).
    pub reused: Option<u64>,
}

/// Milliseconds spent per stage, summed over rounds.
#[derive(Debug, Default)]
pub struct Timings(serde_json::Map<String, Json>);

impl Timings {
    fn add(&mut self, stage: Stage, since: Instant) {
        let ms = since.elapsed().as_millis() as u64;
        let total = self
            .0
            .get(stage.as_str())
            .and_then(Json::as_u64)
            .unwrap_or(0)
            + ms;
        self.0.insert(stage.as_str().to_string(), json!(total));
    }
}

fn fail(miss: &Miss, stage: Stage, reason: impl Into<String>) -> TelosError {
    TelosError::NotLearned {
        receiver: miss.receiver.clone(),
        selector: miss.selector.clone(),
        stage,
        reason: reason.into(),
    }
}

/// A method's code without its whitespace: two answers that differ only in layout are the same.
pub fn normalised(code: &str) -> String {
    code.split_whitespace().collect()
}

/// Gate: refuses a selector that failed too often on this receiver lately; answers the recent
/// failures, which BRICK is shown as mistakes not to repeat.
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "gate"))]
pub async fn gate<F: Facts>(
    facts: &F,
    cfg: &Config,
    miss: &Miss,
    now: i64,
    em: &Emitter,
) -> Result<Vec<PastFailure>, TelosError> {
    let since = now - cfg.failure_window_secs as i64;
    let failures = facts
        .failures(&miss.receiver, &miss.selector, since)
        .await?;
    if cfg.max_failures > 0 && failures.len() >= cfg.max_failures {
        let (stage, why, at) = failures
            .last()
            .map(|f| (f.stage.as_str(), f.reason.as_str(), f.at))
            .unwrap_or(("?", "?", 0));
        let retry_at = at + cfg.failure_window_secs as i64;
        let when = chrono::DateTime::from_timestamp(retry_at, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let reason = format!(
            "it failed {} times in the last {} s (last at the {stage} stage: {why}); not trying again before {when}",
            failures.len(),
            cfg.failure_window_secs,
        );
        em.emit(Stage::Gate, Status::Failed, json!({ "error": reason }));
        return Err(fail(miss, Stage::Gate, reason));
    }
    Ok(failures
        .iter()
        .rev()
        .take(3)
        .map(|f| PastFailure {
            stage: f.stage.clone(),
            reason: f.reason.clone(),
        })
        .collect())
}

/// Recall: the method memories nearest to the message in its situation.
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "recall"))]
pub async fn recall<M: Memory>(
    memory: &M,
    cfg: &Config,
    miss: &Miss,
    ctx: &ReceiverContext,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<Vec<Found>, TelosError> {
    let t = Instant::now();
    em.emit(
        Stage::Recall,
        Status::Started,
        json!({ "query": ctx.recall_query(), "k": cfg.recall_k }),
    );
    let recalled = if cfg.recall_k == 0 {
        Vec::new()
    } else {
        memory
            .recall(ctx.recall_query(), cfg.recall_k)
            .await
            .map_err(|e| {
                em.emit(Stage::Recall, Status::Failed, json!({ "error": e }));
                fail(miss, Stage::Recall, e)
            })?
    };
    timings.add(Stage::Recall, t);
    let memories: Vec<Json> = recalled
        .iter()
        .map(|m| json!({ "id": m.id, "distance": m.distance, "selector": m.selector, "owner": m.owner, "text": m.text, "origin": m.origin }))
        .collect();
    em.emit(
        Stage::Recall,
        Status::Done,
        json!({ "memories": memories, "ms": t.elapsed().as_millis() as u64 }),
    );
    Ok(recalled)
}

/// The static checks and the sandbox's compiler.
async fn checked<S: Sandbox>(sandbox: &S, miss: &Miss, source: &str) -> Result<(), String> {
    static_checks(source, &miss.selector)?;
    sandbox
        .compile(&miss.receiver, &miss.selector, source)
        .await
}

/// Reuse: a tested method the kernel learned for the same selector, in the same situation (same
/// slot names and argument types), on a related receiver, or very close in meaning. Records
/// from outside are never installed as code; a reuse passes the static checks and a trial.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "reuse"))]
pub async fn reuse<S: Sandbox, F: Facts>(
    sandbox: &S,
    facts: &F,
    cfg: &Config,
    miss: &Miss,
    ctx: &ReceiverContext,
    recalled: &[Found],
    timings: &mut Timings,
    em: &Emitter,
) -> Option<Candidate> {
    let situation = ctx.situation();
    for m in recalled.iter().filter(|m| {
        m.selector == miss.selector && !m.source.is_empty() && m.origin == ORIGIN_KERNEL
    }) {
        let fits = m.prompt == situation
            || m.distance <= cfg.reuse_distance
            || facts.related(&m.owner, &miss.receiver).await;
        if !fits {
            continue;
        }
        let t = Instant::now();
        em.emit(
            Stage::Trial,
            Status::Started,
            json!({ "reuse": m.id, "args": miss.args }),
        );
        let tried = match checked(sandbox, miss, &m.source).await {
            Ok(()) => {
                sandbox
                    .trial(&miss.receiver, &miss.selector, &m.source, &miss.args)
                    .await
            }
            Err(e) => Err(format!(
                "the remembered method fails the review's checks: {e}"
            )),
        };
        timings.add(Stage::Trial, t);
        match tried {
            Ok(value) => {
                em.emit(
                    Stage::Trial,
                    Status::Done,
                    json!({ "reuse": m.id, "code": m.source, "value": value, "ms": t.elapsed().as_millis() as u64 }),
                );
                return Some(Candidate {
                    source: m.source.clone(),
                    raw: None,
                    verdict: format!(
                        "reused memory {} (a tested method learned by the kernel); static checks and trial passed",
                        m.id
                    ),
                    trial: value,
                    reused: Some(m.id),
                });
            }
            Err(e) => em.emit(
                Stage::Trial,
                Status::Failed,
                json!({ "reuse": m.id, "error": e }),
            ),
        }
    }
    None
}

/// Asks `persona`; a persona that cannot answer fails `stage` (reported, not retried).
async fn ask<P: Personas>(
    personas: &P,
    persona: &str,
    messages: Vec<Message>,
    temperature: Option<f32>,
    stage: Stage,
    miss: &Miss,
    em: &Emitter,
) -> Result<Generated, TelosError> {
    personas
        .ask(persona, messages, temperature)
        .await
        .map_err(|e| {
            em.emit(stage, Status::Failed, json!({ "error": e }));
            fail(miss, stage, format!("{persona} could not answer: {e}"))
        })
}

/// What BRICK wrote, read as one method.
#[derive(Debug, Clone)]
pub struct Written {
    pub source: String,
    pub answer: Generated,
    pub temperature: Option<f32>,
}

/// Write: BRICK's method. A repair round samples; code already tried is refused.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "write"))]
pub async fn write<P: Personas>(
    personas: &P,
    miss: &Miss,
    ctx: &ReceiverContext,
    examples: &[Example],
    past: &[PastFailure],
    feedback: Option<&Feedback>,
    tried: &mut HashSet<String>,
    prompts_seen: &mut Vec<String>,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<Result<Written, RoundFailure>, TelosError> {
    let t = Instant::now();
    em.emit(Stage::Write, Status::Started, json!({ "persona": "BRICK" }));
    let messages = prompts::brick(ctx, examples, past, feedback);
    prompts_seen.push(prompt_text(&messages));
    let temperature = feedback.map(|_| REPAIR_TEMPERATURE);
    let answer = ask(
        personas,
        "BRICK",
        messages,
        temperature,
        Stage::Write,
        miss,
        em,
    )
    .await?;
    timings.add(Stage::Write, t);
    let source = match extract_method(&answer.text, &miss.selector) {
        Ok(s) => s,
        Err(e) => {
            em.emit(
                Stage::Write,
                Status::Failed,
                json!({ "error": e, "raw": answer.text, "model": answer.model }),
            );
            return Ok(Err(RoundFailure {
                stage: Stage::Write,
                error: e,
                code: answer.text.clone(),
            }));
        }
    };
    if !tried.insert(normalised(&source)) {
        let error = "BRICK wrote the same code as an earlier attempt, which failed; the same code is never tried twice".to_string();
        em.emit(
            Stage::Write,
            Status::Failed,
            json!({ "error": error, "code": source, "raw": answer.text, "model": answer.model }),
        );
        return Ok(Err(RoundFailure {
            stage: Stage::Write,
            error,
            code: source,
        }));
    }
    em.emit(
        Stage::Write,
        Status::Done,
        json!({
            "code": source, "raw": answer.text, "model": answer.model, "backend": answer.backend,
            "ms": answer.ms, "temperature": temperature,
            "prompt_tokens": answer.prompt_tokens, "reused_tokens": answer.reused_tokens,
        }),
    );
    Ok(Ok(Written {
        source,
        answer,
        temperature,
    }))
}

/// Review, first half: the static checks and the sandbox's compiler.
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "review"))]
pub async fn review_code<S: Sandbox>(
    sandbox: &S,
    miss: &Miss,
    source: &str,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<(), RoundFailure> {
    let t = Instant::now();
    em.emit(Stage::Review, Status::Started, json!({ "check": "static" }));
    let result = checked(sandbox, miss, source).await;
    timings.add(Stage::Review, t);
    result.map_err(|e| {
        em.emit(
            Stage::Review,
            Status::Failed,
            json!({ "error": e, "check": "static" }),
        );
        RoundFailure {
            stage: Stage::Review,
            error: e,
            code: source.to_string(),
        }
    })
}

/// Trial: the method on a scratch copy of the receiver, with the real arguments.
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "trial"))]
pub async fn trial<S: Sandbox>(
    sandbox: &S,
    miss: &Miss,
    source: &str,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<Json, RoundFailure> {
    let t = Instant::now();
    em.emit(Stage::Trial, Status::Started, json!({ "args": miss.args }));
    let tried = sandbox
        .trial(&miss.receiver, &miss.selector, source, &miss.args)
        .await;
    timings.add(Stage::Trial, t);
    match tried {
        Ok(value) => {
            em.emit(
                Stage::Trial,
                Status::Done,
                json!({ "value": value, "ms": t.elapsed().as_millis() as u64 }),
            );
            Ok(value)
        }
        Err(e) => {
            em.emit(Stage::Trial, Status::Failed, json!({ "error": e }));
            Err(RoundFailure {
                stage: Stage::Trial,
                error: e,
                code: source.to_string(),
            })
        }
    }
}

/// Review, second half: ALFRED sees the method and what the trial returned. Only an explicit
/// VALID passes.
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "review"))]
pub async fn review_verdict<P: Personas>(
    personas: &P,
    miss: &Miss,
    ctx: &ReceiverContext,
    source: &str,
    value: &Json,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<Result<String, RoundFailure>, TelosError> {
    let t = Instant::now();
    let messages = prompts::alfred(ctx, source, value);
    let review = ask(personas, "ALFRED", messages, None, Stage::Review, miss, em).await?;
    timings.add(Stage::Review, t);
    match verdict(&review.text) {
        Ok(reason) => {
            em.emit(
                Stage::Review,
                Status::Done,
                json!({
                    "verdict": "VALID", "reason": reason, "model": review.model, "trial": value,
                    "ms": review.ms, "prompt_tokens": review.prompt_tokens,
                    "reused_tokens": review.reused_tokens,
                }),
            );
            Ok(Ok(reason))
        }
        Err(reason) => {
            let error = format!("ALFRED says INVALID: {reason}");
            em.emit(
                Stage::Review,
                Status::Failed,
                json!({
                    "verdict": "INVALID", "reason": reason, "error": error, "raw": review.text,
                    "ms": review.ms, "prompt_tokens": review.prompt_tokens,
                    "reused_tokens": review.reused_tokens,
                }),
            );
            Ok(Err(RoundFailure {
                stage: Stage::Review,
                error,
                code: source.to_string(),
            }))
        }
    }
}

/// Write → review → trial → review rounds, with repair, until a method passes or the repair
/// budget runs out. Answers the method and how many repair rounds it took.
#[allow(clippy::too_many_arguments)]
pub async fn generate<X: Personas + Sandbox>(
    x: &X,
    cfg: &Config,
    miss: &Miss,
    ctx: &ReceiverContext,
    examples: &[Example],
    past: &[PastFailure],
    prompts_seen: &mut Vec<String>,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<(Candidate, usize), TelosError> {
    let mut feedback: Option<Feedback> = None;
    let mut tried = HashSet::new();
    // Methods that passed the static checks and the trial but that ALFRED called INVALID, by
    // their normalised code.
    let mut disputed: std::collections::HashMap<String, Candidate> = Default::default();
    let mut rounds = 0;
    loop {
        if let Some(fb) = &feedback {
            em.emit(
                Stage::Repair,
                Status::Started,
                json!({ "round": rounds, "of": cfg.repair_rounds, "stage": fb.stage, "error": fb.error }),
            );
        }
        // Round 0 writes; every later round is a repair of the one before.
        let span = if rounds == 0 {
            tracing::info_span!("round", round = rounds)
        } else {
            tracing::info_span!("stage", stage = "repair", round = rounds)
        };
        let outcome = async {
            let w = match write(
                x,
                miss,
                ctx,
                examples,
                past,
                feedback.as_ref(),
                &mut tried,
                prompts_seen,
                timings,
                em,
            )
            .await?
            {
                Ok(w) => w,
                Err(f) => return Ok(Err((f, None))),
            };
            if let Err(f) = review_code(x, miss, &w.source, timings, em).await {
                return Ok(Err((f, None)));
            }
            let value = match trial(x, miss, &w.source, timings, em).await {
                Ok(v) => v,
                Err(f) => return Ok(Err((f, None))),
            };
            let verdict = review_verdict(x, miss, ctx, &w.source, &value, timings, em).await?;
            let candidate = |verdict: String| Candidate {
                source: w.source.clone(),
                raw: Some(w.answer.clone()),
                verdict,
                trial: value.clone(),
                reused: None,
            };
            Ok::<_, TelosError>(match verdict {
                Ok(reason) => Ok(candidate(format!("VALID: {reason}"))),
                Err(f) => {
                    let c = candidate(f.error.clone());
                    Err((f, Some(c)))
                }
            })
        }
        .instrument(span)
        .await?;
        let f = match outcome {
            Ok(c) => return Ok((c, rounds)),
            Err((f, rejected)) => {
                if let Some(c) = rejected {
                    disputed.insert(normalised(&c.source), c);
                }
                f
            }
        };
        // BRICK, asked for a different method after ALFRED's objection, wrote the same code
        // again: two answers (one sampled) agree on code that passed the static checks and the
        // trial, against a small reviewer's one. The builder wins; the provenance says so.
        if f.stage == Stage::Write
            && let Some(mut c) = disputed.remove(&normalised(&f.code))
        {
            c.verdict = format!(
                "VALID (ALFRED overruled: {}; BRICK wrote the same method again when asked for another, and it passed the static checks and the trial)",
                c.verdict
            );
            em.emit(
                Stage::Review,
                Status::Done,
                json!({ "verdict": "OVERRULED", "reason": c.verdict, "code": c.source }),
            );
            return Ok((c, rounds));
        }
        if rounds >= cfg.repair_rounds {
            if cfg.repair_rounds == 0 {
                return Err(fail(miss, f.stage, f.error));
            }
            let reason = format!(
                "gave up after {} repair rounds; the last attempt failed at the {} stage: {}",
                cfg.repair_rounds, f.stage, f.error
            );
            em.emit(Stage::Repair, Status::Failed, json!({ "error": reason }));
            return Err(fail(miss, Stage::Repair, reason));
        }
        rounds += 1;
        feedback = Some(Feedback {
            code: f.code,
            stage: f.stage.as_str().to_string(),
            error: f.error,
            round: rounds,
        });
    }
}

/// Install: the method with its provenance, in one transaction.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "install"))]
pub async fn install<S: Sandbox>(
    sandbox: &S,
    miss: &Miss,
    ctx: &ReceiverContext,
    c: &Candidate,
    recalled: &[Found],
    prompts_seen: &[String],
    rounds: usize,
    approved: Option<Json>,
    timings: &Timings,
    em: &Emitter,
) -> Result<(), TelosError> {
    let t = Instant::now();
    em.emit(Stage::Install, Status::Started, json!({}));
    let mut method = Method::new(c.source.clone(), "kernel");
    method.provenance = Some(json!({
        "run": em.run,
        "message": ctx.call_text(),
        "situation": ctx.situation(),
        "prompt": prompts_seen.last().cloned().unwrap_or_default(),
        "recalled": recalled.iter().map(|m| json!({"id": m.id, "distance": m.distance, "origin": m.origin})).collect::<Vec<_>>(),
        "reused": c.reused,
        "brick": c.raw.as_ref().map(|g| json!({
            "answer": g.text, "model": g.model, "backend": g.backend, "ms": g.ms,
            "tokens": g.tokens, "prompt_tokens": g.prompt_tokens, "reused_tokens": g.reused_tokens,
        })),
        "alfred": c.verdict,
        "trial": c.trial,
        "repair_rounds": rounds,
        "approved": approved,
        "stage_ms": Json::Object(timings.0.clone()),
    }));
    if let Err(e) = sandbox
        .install(&miss.receiver, &miss.selector, method)
        .await
    {
        em.emit(Stage::Install, Status::Failed, json!({ "error": e }));
        return Err(fail(miss, Stage::Install, e));
    }
    em.emit(
        Stage::Install,
        Status::Done,
        json!({ "method": miss.selector, "on": miss.receiver, "ms": t.elapsed().as_millis() as u64 }),
    );
    Ok(())
}

/// Approve, when asked for (`kernel_approval = "ask"`, or a `kernel_approval` slot saying so
/// along the receiver's chain, which can only ask, never waive): a person sees the method, ALFRED's review and the trial's answer, and approves or
/// rejects it; nobody answering within the timeout rejects it. Answers who approved and when
/// (for the provenance), or `None` when no approval was needed.
pub async fn approve<A: Approver>(
    approver: &A,
    cfg: &Config,
    miss: &Miss,
    ctx: &ReceiverContext,
    c: &Candidate,
    timings: &mut Timings,
    em: &Emitter,
) -> Result<Option<Json>, TelosError> {
    // The receiver's slot can only ask where the server would not: any message could write
    // the slot, so it must never switch a server's `ask` off.
    let asked = match (cfg.approval, ctx.approval) {
        (Approval::Ask, _) | (_, Some(Approval::Ask)) => Approval::Ask,
        _ => Approval::Never,
    };
    if asked == Approval::Never {
        return Ok(None);
    }
    let t = Instant::now();
    let request = approval::Request {
        run: em.run.clone(),
        receiver: miss.receiver.clone(),
        selector: miss.selector.clone(),
        args: miss.args.clone(),
        code: c.source.clone(),
        review: c.verdict.clone(),
        trial: c.trial.clone(),
        asked_at: chrono::Utc::now().to_rfc3339(),
        timeout_secs: cfg.approval_timeout.as_secs(),
    };
    em.emit(
        Stage::Approve,
        Status::Started,
        json!({
            "code": request.code, "review": request.review, "trial": request.trial,
            "timeout_secs": request.timeout_secs,
        }),
    );
    let outcome = approver
        .approve(request, cfg.approval_timeout)
        .instrument(tracing::info_span!("stage", stage = "approve"))
        .await;
    timings.add(Stage::Approve, t);
    let reason = match outcome {
        approval::Outcome::Approved { by, at } => {
            em.emit(Stage::Approve, Status::Done, json!({ "by": by, "at": at }));
            return Ok(Some(json!({ "by": by, "at": at })));
        }
        approval::Outcome::Rejected { by, reason } if reason.trim().is_empty() => {
            format!("{by} rejected the method (no reason given)")
        }
        approval::Outcome::Rejected { by, reason } => {
            format!("{by}{}{}", prompts::REJECTED, reason.trim())
        }
        approval::Outcome::TimedOut => format!(
            "nobody approved the method within {} s, so it was rejected",
            cfg.approval_timeout.as_secs()
        ),
    };
    em.emit(Stage::Approve, Status::Failed, json!({ "error": reason }));
    Err(fail(miss, Stage::Approve, reason))
}

/// Every stage up to install. The answer and the learn stage follow.
pub async fn run<X: Personas + Memory + Sandbox + Facts + Approver>(
    x: &X,
    cfg: &Config,
    miss: &Miss,
    now: i64,
    em: &Emitter,
) -> Result<Learning, TelosError> {
    let past = gate(x, cfg, miss, now, em).await?;
    let ctx = x.context(miss).await?;
    let mut timings = Timings::default();
    let recalled = recall(x, cfg, miss, &ctx, &mut timings, em).await?;
    // At most two examples, each named by its situation: every token of them is evaluated on
    // every call, and small models copy the nearest example anyway.
    // Oldest first: consecutive misses that recall the same methods then share the examples'
    // tokens as a prompt prefix, which a local backend does not evaluate again.
    let mut nearest: Vec<&Found> = recalled
        .iter()
        .filter(|m| !m.source.is_empty())
        .take(MAX_EXAMPLES)
        .collect();
    nearest.sort_by_key(|m| m.id);
    let examples: Vec<Example> = nearest
        .into_iter()
        .map(|m| Example {
            description: if m.prompt.is_empty() {
                prompts::short(&m.text, 80)
            } else {
                m.prompt.clone()
            },
            source: m.source.clone(),
        })
        .collect();
    let mut prompts_seen = Vec::new();
    let (candidate, rounds) = match reuse(x, x, cfg, miss, &ctx, &recalled, &mut timings, em).await
    {
        Some(c) => (c, 0),
        None => {
            generate(
                x,
                cfg,
                miss,
                &ctx,
                &examples,
                &past,
                &mut prompts_seen,
                &mut timings,
                em,
            )
            .await?
        }
    };
    let approved = approve(x, cfg, miss, &ctx, &candidate, &mut timings, em).await?;
    install(
        x,
        miss,
        &ctx,
        &candidate,
        &recalled,
        &prompts_seen,
        rounds,
        approved,
        &timings,
        em,
    )
    .await?;
    Ok(Learning {
        ctx,
        source: candidate.source,
        reused: candidate.reused,
    })
}

/// Runs [`run`] and records the attempt (negative memory); a refusal at the gate is not a new
/// attempt.
pub async fn run_recorded<X: Personas + Memory + Sandbox + Facts + Approver>(
    x: &X,
    cfg: &Config,
    miss: &Miss,
    em: &Emitter,
) -> Result<Learning, TelosError> {
    let now = chrono::Utc::now().timestamp();
    let span = tracing::info_span!("kernel_run", run = %em.run, receiver = %miss.receiver, selector = %miss.selector);
    let result = run(x, cfg, miss, now, em).instrument(span).await;
    let outcome = match &result {
        Ok(l) if l.reused.is_some() => "reused",
        Ok(_) => "learned",
        Err(_) => "failed",
    };
    crate::metrics::metrics().count(
        "telos_kernel_runs_total",
        "Kernel runs by outcome (learned, reused, failed).",
        &[("outcome", outcome)],
        1,
    );
    // An error outside the stages (e.g. the receiver vanished) is recorded as the kernel's.
    let (ok, stage, reason) = match &result {
        Ok(_) => (true, "", String::new()),
        Err(TelosError::NotLearned { stage, reason, .. }) => {
            (false, stage.as_str(), reason.clone())
        }
        Err(e) => (false, "kernel", e.to_string()),
    };
    if stage != Stage::Gate.as_str() {
        x.record_attempt(Attempt {
            run: em.run.to_string(),
            receiver: miss.receiver.clone(),
            selector: miss.selector.clone(),
            ok,
            stage: stage.to_string(),
            reason,
            at: now,
            ms: em.elapsed_ms(),
        })
        .await;
    }
    match &result {
        Ok(_) => {
            tracing::info!(run = %em.run, receiver = %miss.receiver, selector = %miss.selector, ms = em.elapsed_ms(), "kernel learned a method")
        }
        Err(e) => tracing::info!(run = %em.run, error = %e, "kernel run failed"),
    }
    result
}

/// Tries of the learn stage's memory write.
pub const LEARN_TRIES: u32 = 3;

/// Learn, after the answer: BABS describes the method; the situation and the description are
/// remembered. A failure is retried and logged; the installed method stays either way.
#[tracing::instrument(name = "stage", level = "info", skip_all, fields(stage = "learn", run = %em.run, selector = %miss.selector))]
pub async fn learn<X: Personas + Memory>(
    x: &X,
    miss: &Miss,
    learning: &Learning,
    retry_pause: std::time::Duration,
    em: &Emitter,
) -> Result<u64, String> {
    if let Some(id) = learning.reused {
        em.emit(
            Stage::Learn,
            Status::Done,
            json!({ "reused": id, "description": format!("already remembered as memory #{id}") }),
        );
        return Ok(id);
    }
    let t = Instant::now();
    em.emit(Stage::Learn, Status::Started, json!({ "persona": "BABS" }));
    let ctx = &learning.ctx;
    let mut last_error = String::new();
    for attempt in 1..=LEARN_TRIES {
        let learned = async {
            let description = x
                .ask("BABS", prompts::babs(ctx, &learning.source), None)
                .await
                .map(|g| prompts::one_line(&g.text))?;
            // The situation comes first: a later message of the same shape finds it closest.
            let key = x
                .remember(NewMemory {
                    kind: crate::memory::MemoryKind::Method,
                    text: format!("{}: {}", ctx.situation(), description),
                    prompt: ctx.situation(),
                    owner: miss.receiver.clone(),
                    selector: miss.selector.clone(),
                    source: learning.source.clone(),
                    origin: ORIGIN_KERNEL.into(),
                })
                .await?;
            Ok::<_, String>((description, key))
        }
        .await;
        match learned {
            Ok((description, key)) => {
                em.emit(
                    Stage::Learn,
                    Status::Done,
                    json!({ "description": description, "memory": key, "ms": t.elapsed().as_millis() as u64, "tries": attempt }),
                );
                return Ok(key);
            }
            Err(e) => {
                tracing::warn!(run = %em.run, attempt, error = %e, "remembering a learned method failed");
                last_error = e;
                if attempt < LEARN_TRIES {
                    tokio::time::sleep(retry_pause * attempt).await;
                }
            }
        }
    }
    tracing::error!(run = %em.run, error = %last_error, "a learned method was installed but could not be remembered");
    em.emit(
        Stage::Learn,
        Status::Failed,
        json!({ "error": last_error, "installed": true }),
    );
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// A world of fakes: scripted personas, a list of memories, a sandbox whose trial answers
    /// from a table, and facts about one receiver.
    #[derive(Default)]
    struct Fake {
        /// Replies per persona, in order (the last one repeats).
        replies: Mutex<std::collections::HashMap<String, VecDeque<String>>>,
        /// Every ask: (persona, prompt text, temperature).
        asked: Mutex<Vec<(String, String, Option<f32>)>>,
        memories: Vec<Found>,
        remembered: Mutex<Vec<NewMemory>>,
        remember_fails: Mutex<u32>,
        /// Sources whose trial throws.
        throws: Vec<String>,
        trials: Mutex<Vec<String>>,
        installed: Mutex<Vec<Method>>,
        failures: Vec<Failure>,
        attempts: Mutex<Vec<Attempt>>,
        related: bool,
        slots: Vec<(String, String)>,
        recall_fails: bool,
        install_fails: bool,
        /// The person's answers, in order (none left: silence, which times out).
        decisions: Mutex<VecDeque<approval::Outcome>>,
        /// What the person was asked.
        approvals: Mutex<Vec<approval::Request>>,
    }

    impl Approver for Fake {
        fn approve(
            &self,
            request: approval::Request,
            _: std::time::Duration,
        ) -> impl Future<Output = approval::Outcome> + Send {
            self.approvals.lock().unwrap().push(request);
            let next = self.decisions.lock().unwrap().pop_front();
            async move { next.unwrap_or(approval::Outcome::TimedOut) }
        }
    }

    impl Fake {
        fn reply(self, persona: &str, replies: &[&str]) -> Fake {
            self.replies.lock().unwrap().insert(
                persona.to_string(),
                replies.iter().map(|s| s.to_string()).collect(),
            );
            self
        }
        fn asked(&self, persona: &str) -> Vec<(String, Option<f32>)> {
            self.asked
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.0 == persona)
                .map(|a| (a.1.clone(), a.2))
                .collect()
        }
    }

    fn generated(persona: &str, text: String) -> Generated {
        Generated {
            persona: persona.into(),
            backend: crate::llm::BackendKind::Scripted,
            model: "fake".into(),
            text,
            ms: 1,
            tokens: None,
            prompt_tokens: None,
            reused_tokens: None,
        }
    }

    impl Personas for Fake {
        fn ask(
            &self,
            persona: &str,
            messages: Vec<Message>,
            temperature: Option<f32>,
        ) -> impl Future<Output = Result<Generated, String>> + Send {
            self.asked.lock().unwrap().push((
                persona.to_string(),
                prompt_text(&messages),
                temperature,
            ));
            let mut replies = self.replies.lock().unwrap();
            let answer = match replies.get_mut(persona) {
                Some(q) if q.len() > 1 => Ok(q.pop_front().unwrap()),
                Some(q) if q.len() == 1 => Ok(q[0].clone()),
                _ => Err(format!("no reply for {persona}")),
            };
            let persona = persona.to_string();
            async move { answer.map(|t| generated(&persona, t)) }
        }
    }

    impl Memory for Fake {
        fn recall(
            &self,
            _: String,
            k: usize,
        ) -> impl Future<Output = Result<Vec<Found>, String>> + Send {
            let found = if self.recall_fails {
                Err("the memory is not running".to_string())
            } else {
                Ok(self.memories.iter().take(k).cloned().collect())
            };
            async move { found }
        }
        fn remember(&self, item: NewMemory) -> impl Future<Output = Result<u64, String>> + Send {
            let mut fails = self.remember_fails.lock().unwrap();
            let result = if *fails > 0 {
                *fails -= 1;
                Err("the database is busy".to_string())
            } else {
                let mut r = self.remembered.lock().unwrap();
                r.push(item);
                Ok(r.len() as u64)
            };
            async move { result }
        }
    }

    impl Sandbox for Fake {
        fn compile(
            &self,
            _: &str,
            _: &str,
            source: &str,
        ) -> impl Future<Output = Result<(), String>> + Send {
            let ok = if source.contains("syntax!") {
                Err("syntax error at line 1".to_string())
            } else {
                Ok(())
            };
            async move { ok }
        }
        fn trial(
            &self,
            _: &str,
            _: &str,
            source: &str,
            _: &[Json],
        ) -> impl Future<Output = Result<Json, String>> + Send {
            self.trials.lock().unwrap().push(source.to_string());
            let result = if self.throws.iter().any(|t| source.contains(t.as_str())) {
                Err("o1.area: cannot read property 'width' of undefined\n    at area (o1.area:1:30)".to_string())
            } else {
                Ok(json!(12))
            };
            async move { result }
        }
        fn install(
            &self,
            _: &str,
            _: &str,
            method: Method,
        ) -> impl Future<Output = Result<(), String>> + Send {
            let result = if self.install_fails {
                Err("the receiver was deleted meanwhile".to_string())
            } else {
                self.installed.lock().unwrap().push(method);
                Ok(())
            };
            async move { result }
        }
    }

    impl Facts for Fake {
        fn context(
            &self,
            miss: &Miss,
        ) -> impl Future<Output = Result<ReceiverContext, TelosError>> + Send {
            let ctx = ReceiverContext {
                oid: miss.receiver.clone(),
                name: "box".into(),
                ancestors: vec!["genesis_obj".into(), "traits_obj".into()],
                values: self.slots.clone(),
                methods: vec![],
                selector: miss.selector.clone(),
                args: miss.args.clone(),
                approval: None,
            };
            async move { Ok(ctx) }
        }
        fn related(&self, _: &str, _: &str) -> impl Future<Output = bool> + Send {
            let r = self.related;
            async move { r }
        }
        fn failures(
            &self,
            _: &str,
            _: &str,
            _: i64,
        ) -> impl Future<Output = Result<Vec<Failure>, TelosError>> + Send {
            let f = self.failures.clone();
            async move { Ok(f) }
        }
        fn record_attempt(&self, attempt: Attempt) -> impl Future<Output = ()> + Send {
            self.attempts.lock().unwrap().push(attempt);
            async {}
        }
    }

    fn cfg(repair_rounds: usize) -> Config {
        Config {
            recall_k: 3,
            reuse_distance: 0.1,
            repair_rounds,
            max_failures: 3,
            failure_window_secs: 600,
            approval: Approval::Never,
            approval_timeout: std::time::Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn with_approval_asked_a_person_sees_the_method_and_approves_it() {
        let x = Fake {
            slots: box_slots(),
            decisions: Mutex::new(VecDeque::from([approval::Outcome::Approved {
                by: "ada".into(),
                at: "2026-11-28T00:00:00Z".into(),
            }])),
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID: multiplies the sides"]);
        let (em, mut rx) = emitter();
        let cfg = Config {
            approval: Approval::Ask,
            ..cfg(3)
        };
        run_recorded(&x, &cfg, &miss(), &em).await.unwrap();
        let seen = stages(&mut rx);
        let at = seen.iter().position(|s| s == "approve:started").unwrap();
        assert_eq!(
            seen[at..],
            [
                "approve:started",
                "approve:done",
                "install:started",
                "install:done"
            ]
        );
        let asked = x.approvals.lock().unwrap();
        assert_eq!(asked[0].code, GOOD);
        assert_eq!(asked[0].trial, 12);
        assert!(asked[0].review.contains("multiplies the sides"));
        let installed = x.installed.lock().unwrap();
        assert_eq!(
            installed[0].provenance.as_ref().unwrap()["approved"]["by"],
            "ada"
        );
    }

    #[tokio::test]
    async fn a_rejection_or_silence_installs_nothing_and_names_the_reason() {
        let rejecting = |outcome: Option<approval::Outcome>| {
            Fake {
                slots: box_slots(),
                decisions: Mutex::new(outcome.into_iter().collect()),
                ..Fake::default()
            }
            .reply("BRICK", &[GOOD])
            .reply("ALFRED", &["VALID: multiplies the sides"])
        };
        let cfg = Config {
            approval: Approval::Ask,
            ..cfg(3)
        };
        let x = rejecting(Some(approval::Outcome::Rejected {
            by: "ada".into(),
            reason: "use the width slot, not an argument".into(),
        }));
        let (em, _rx) = emitter();
        let err = run_recorded(&x, &cfg, &miss(), &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Approve));
        assert!(
            err.to_string()
                .contains("ada rejected the method: use the width slot"),
            "{err}"
        );
        assert!(x.installed.lock().unwrap().is_empty());
        // The attempt is recorded with the reason: the next run's BRICK prompt shows it.
        let attempt = x.attempts.lock().unwrap()[0].clone();
        assert_eq!((attempt.ok, attempt.stage.as_str()), (false, "approve"));
        assert!(attempt.reason.contains("use the width slot"));

        let x = rejecting(None);
        let (em, _rx) = emitter();
        let err = run_recorded(&x, &cfg, &miss(), &em).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("nobody approved the method within 60 s"),
            "{err}"
        );
        assert!(x.installed.lock().unwrap().is_empty());
    }

    fn miss() -> Miss {
        Miss {
            receiver: "o1".into(),
            selector: "area".into(),
            args: vec![],
        }
    }

    fn box_slots() -> Vec<(String, String)> {
        vec![("width".into(), "3".into()), ("height".into(), "4".into())]
    }

    fn emitter() -> (Emitter, broadcast::Receiver<StageEvent>) {
        let (tx, rx) = broadcast::channel(256);
        (Emitter::new(&miss(), tx, None), rx)
    }

    fn stages(rx: &mut broadcast::Receiver<StageEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(format!(
                "{}:{}",
                e.stage,
                serde_json::to_value(e.status).unwrap().as_str().unwrap()
            ));
        }
        out
    }

    const GOOD: &str = "function area(self) { return self.width * self.height; }";
    const BAD: &str = "function area(self) { return self.slot.width * self.slot.height; }";

    #[tokio::test]
    async fn a_miss_goes_through_every_stage_in_order() {
        let x = Fake {
            slots: box_slots(),
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID: multiplies the sides"]);
        let (em, mut rx) = emitter();
        let learning = run_recorded(&x, &cfg(3), &miss(), &em).await.unwrap();
        assert_eq!(learning.source, GOOD);
        assert_eq!(
            stages(&mut rx),
            [
                "recall:started",
                "recall:done",
                "write:started",
                "write:done",
                "review:started",
                "trial:started",
                "trial:done",
                "review:done",
                "install:started",
                "install:done",
            ]
        );
        // ALFRED judged a method that had run without error.
        let alfred = x.asked("ALFRED");
        assert!(alfred[0].0.contains("without error"), "{}", alfred[0].0);
        let installed = x.installed.lock().unwrap();
        assert_eq!(installed[0].origin, "kernel");
        assert_eq!(installed[0].provenance.as_ref().unwrap()["trial"], 12);
        assert!(x.attempts.lock().unwrap()[0].ok);
    }

    #[tokio::test]
    async fn the_gate_refuses_a_selector_that_keeps_failing_and_records_nothing() {
        let failure = Failure {
            stage: "trial".into(),
            reason: "NaN".into(),
            at: 100,
        };
        let x = Fake {
            failures: vec![failure.clone(), failure.clone(), failure],
            ..Fake::default()
        };
        let (em, mut rx) = emitter();
        let err = run_recorded(&x, &cfg(3), &miss(), &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Gate));
        assert_eq!(stages(&mut rx), ["gate:failed"]);
        assert!(x.attempts.lock().unwrap().is_empty());
        assert!(x.asked("BRICK").is_empty());
    }

    #[tokio::test]
    async fn past_failures_reach_brick_as_mistakes_not_to_repeat() {
        let x = Fake {
            failures: vec![Failure {
                stage: "trial".into(),
                reason: "self.slot is undefined".into(),
                at: 1,
            }],
            slots: box_slots(),
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID"]);
        let (em, _rx) = emitter();
        run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap();
        assert!(x.asked("BRICK")[0].0.contains("self.slot is undefined"));
    }

    #[tokio::test]
    async fn every_repair_round_asks_differently_and_never_tries_the_same_code_twice() {
        // BRICK repeats its broken method, then repeats it again, then fixes it.
        let x = Fake {
            throws: vec!["self.slot".into()],
            slots: box_slots(),
            ..Fake::default()
        }
        .reply("BRICK", &[BAD, BAD, GOOD])
        .reply("ALFRED", &["VALID"]);
        let (em, mut rx) = emitter();
        let learning = run(&x, &cfg(3), &miss(), 1000, &em).await.unwrap();
        assert_eq!(learning.source, GOOD);
        let brick = x.asked("BRICK");
        assert_eq!(brick.len(), 3);
        assert_ne!(brick[0].0, brick[1].0);
        assert_ne!(brick[1].0, brick[2].0);
        assert_eq!(
            brick.iter().map(|b| b.1).collect::<Vec<_>>(),
            [None, Some(REPAIR_TEMPERATURE), Some(REPAIR_TEMPERATURE)]
        );
        assert!(
            brick[1].0.contains("self.slot is not a slot"),
            "{}",
            brick[1].0
        );
        // The repeated code was refused without a second trial.
        let trials = x.trials.lock().unwrap();
        assert_eq!(trials.iter().filter(|t| t.contains("self.slot")).count(), 1);
        assert!(stages(&mut rx).contains(&"repair:started".to_string()));
    }

    #[tokio::test]
    async fn brick_writing_the_same_checked_method_again_overrules_alfred() {
        // ALFRED objects to a method that passed the checks and the trial; asked for another,
        // BRICK writes the same one: it is installed, once trialled, with the dispute recorded.
        let x = Fake {
            slots: box_slots(),
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD, GOOD])
        .reply("ALFRED", &["INVALID: it changes other objects"]);
        let (em, mut rx) = emitter();
        let learning = run(&x, &cfg(3), &miss(), 1000, &em).await.unwrap();
        assert_eq!(learning.source, GOOD);
        assert_eq!(x.trials.lock().unwrap().len(), 1, "never trialled twice");
        assert_eq!(x.asked("ALFRED").len(), 1);
        let installed = x.installed.lock().unwrap();
        let verdict = installed[0].provenance.as_ref().unwrap()["alfred"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(verdict.contains("ALFRED overruled") && verdict.contains("changes other objects"));
        assert!(stages(&mut rx).contains(&"review:done".to_string()));
    }

    #[tokio::test]
    async fn code_that_failed_its_trial_is_never_overruled_into_the_world() {
        // The same broken code twice: refused (it threw), not installed.
        let x = Fake {
            throws: vec!["self.slot".into()],
            slots: box_slots(),
            ..Fake::default()
        }
        .reply("BRICK", &[BAD])
        .reply("ALFRED", &["VALID"]);
        let (em, _rx) = emitter();
        let err = run(&x, &cfg(2), &miss(), 1000, &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Repair));
        assert!(x.installed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_repair_budget_ends_a_run_that_keeps_failing() {
        let x = Fake {
            throws: vec!["self.slot".into()],
            ..Fake::default()
        }
        .reply(
            "BRICK",
            &[BAD, "function area(self) { return self.slot.w; }"],
        )
        .reply("ALFRED", &["VALID"]);
        let (em, _rx) = emitter();
        let err = run(&x, &cfg(1), &miss(), 1000, &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Repair));
        assert!(x.installed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn alfred_fails_closed_and_a_bad_compile_never_reaches_the_trial() {
        let x = Fake::default()
            .reply("BRICK", &[GOOD])
            .reply("ALFRED", &["Looks fine to me"]);
        let (em, _rx) = emitter();
        let err = run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Review));
        let x = Fake::default().reply("BRICK", &["function area(self) { syntax! }"]);
        let (em, _rx) = emitter();
        let err = run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Review));
        assert!(x.trials.lock().unwrap().is_empty());
        assert!(x.asked("ALFRED").is_empty());
    }

    fn memory(origin: &str, prompt: &str, source: &str) -> Found {
        Found {
            id: 7,
            distance: 0.4,
            kind: crate::memory::MemoryKind::Method,
            selector: "area".into(),
            owner: "o9".into(),
            prompt: prompt.into(),
            source: source.into(),
            origin: origin.into(),
            ..Found::default()
        }
    }

    #[tokio::test]
    async fn the_same_situation_is_answered_by_reuse_without_brick() {
        let situation = "area() on an object with slots height, width";
        let x = Fake {
            memories: vec![memory(ORIGIN_KERNEL, situation, GOOD)],
            slots: box_slots(),
            ..Fake::default()
        };
        let (em, mut rx) = emitter();
        let learning = run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap();
        assert_eq!(learning.reused, Some(7));
        assert!(x.asked("BRICK").is_empty() && x.asked("ALFRED").is_empty());
        assert!(stages(&mut rx).contains(&"trial:done".to_string()));
        // The learn stage remembers nothing new.
        let (em, _rx) = emitter();
        assert_eq!(
            learn(&x, &miss(), &learning, Default::default(), &em).await,
            Ok(7)
        );
        assert!(x.remembered.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn memories_from_outside_are_examples_never_code() {
        let situation = "area() on an object with slots height, width";
        let planted = "function area(self) { self.pwned = 1; return 12; }";
        let x = Fake {
            memories: vec![memory("external", situation, planted)],
            slots: box_slots(),
            related: true,
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID"]);
        let (em, _rx) = emitter();
        let learning = run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap();
        assert_eq!((learning.reused, learning.source.as_str()), (None, GOOD));
        assert!(!x.trials.lock().unwrap().iter().any(|t| t.contains("pwned")));
        assert!(
            x.asked("BRICK")[0].0.contains("pwned"),
            "shown as an example"
        );
    }

    #[tokio::test]
    async fn learning_remembers_the_situation_and_retries_a_failed_write() {
        let x = Fake {
            slots: box_slots(),
            remember_fails: Mutex::new(1),
            ..Fake::default()
        }
        .reply("BABS", &["Multiplies width by height."]);
        let (em, mut rx) = emitter();
        let ctx = futures_util::FutureExt::now_or_never(x.context(&miss()))
            .unwrap()
            .unwrap();
        let learning = Learning {
            ctx,
            source: GOOD.into(),
            reused: None,
        };
        let key = learn(&x, &miss(), &learning, Default::default(), &em)
            .await
            .unwrap();
        assert_eq!(key, 1);
        {
            let r = x.remembered.lock().unwrap();
            assert_eq!(r[0].origin, ORIGIN_KERNEL);
            assert_eq!(r[0].prompt, "area() on an object with slots height, width");
            assert!(r[0].text.starts_with("area() on an object"));
        }
        assert_eq!(stages(&mut rx), ["learn:started", "learn:done"]);
        // Failing every time: an error, and the installed method stays (nothing is taken back).
        let x = Fake {
            slots: box_slots(),
            remember_fails: Mutex::new(LEARN_TRIES),
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID"])
        .reply("BABS", &["x"]);
        let (em, mut rx) = emitter();
        let learning = run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap();
        assert_eq!(x.installed.lock().unwrap().len(), 1);
        assert!(
            learn(&x, &miss(), &learning, Default::default(), &em)
                .await
                .is_err()
        );
        assert_eq!(stages(&mut rx).last().unwrap(), "learn:failed");
        // Every try was made before giving up.
        assert_eq!(*x.remember_fails.lock().unwrap(), 0);
        let installed = x.installed.lock().unwrap();
        assert_eq!((installed.len(), installed[0].source.as_str()), (1, GOOD));
    }

    #[tokio::test]
    async fn a_failing_recall_is_a_recall_error_and_nobody_is_asked() {
        let x = Fake {
            slots: box_slots(),
            recall_fails: true,
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD]);
        let (em, mut rx) = emitter();
        let err = run(&x, &cfg(3), &miss(), 1000, &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Recall));
        assert!(err.to_string().contains("not running"), "{err}");
        assert!(x.asked("BRICK").is_empty());
        assert_eq!(stages(&mut rx), ["recall:started", "recall:failed"]);
    }

    #[tokio::test]
    async fn a_failing_install_is_an_install_error_after_every_check_passed() {
        let x = Fake {
            slots: box_slots(),
            install_fails: true,
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID"]);
        let (em, mut rx) = emitter();
        let err = run(&x, &cfg(3), &miss(), 1000, &em).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Install));
        assert!(err.to_string().contains("deleted meanwhile"), "{err}");
        assert_eq!(
            stages(&mut rx).last().map(String::as_str),
            Some("install:failed")
        );
        // Not retried as a repair: the method was fine, the world changed.
        assert_eq!(x.asked("BRICK").len(), 1);
    }

    #[tokio::test]
    async fn a_reused_method_whose_trial_throws_falls_back_to_brick() {
        let situation = "area() on an object with slots height, width";
        let x = Fake {
            memories: vec![memory(ORIGIN_KERNEL, situation, BAD)],
            slots: box_slots(),
            throws: vec!["self.slot".into()],
            ..Fake::default()
        }
        .reply("BRICK", &[GOOD])
        .reply("ALFRED", &["VALID"]);
        let (em, _rx) = emitter();
        let learning = run(&x, &cfg(0), &miss(), 1000, &em).await.unwrap();
        assert_eq!((learning.reused, learning.source.as_str()), (None, GOOD));
        assert_eq!(x.asked("BRICK").len(), 1);
        assert_eq!(*x.trials.lock().unwrap(), [BAD, GOOD]);
    }
}
