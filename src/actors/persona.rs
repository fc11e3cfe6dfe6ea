//! The model hosts, each a sync actor on a thread of its own, so that neither waits for the
//! other:
//!
//! - [`EmbedderActor`] owns the MiniLM embedder (loaded on first use and kept). Callers embed
//!   through an [`EmbedClient`], which micro-batches: a request to an idle embedder goes at
//!   once, and requests that arrive while a batch is being encoded share the next pass.
//!   Recall, memory search and chunking therefore never queue behind a generation.
//! - [`PersonaActor`] owns the persona language models: each persona (BRICK, ALFRED, BABS,
//!   ROBIN) has a backend, a model, a temperature and a token budget. Local GGUF models are
//!   loaded when a persona needs one and the least recently used is unloaded when the memory
//!   budget would be exceeded (the seed's VRAMManager).
//!
//! Threads on a 2-core machine: llama.cpp uses `llm_threads` (2) for a generation and libtorch
//! `torch_threads` (1) for an embedding batch; an embedding that arrives during a generation
//! shares the cores for the few milliseconds it takes rather than waiting seconds for the
//! generation to end. What the personas are doing is published on a [`PersonaBoard`] that
//! health checks and listings read without asking the (possibly busy) actor.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::embed::{DIMS, EMBEDDER_ID, Embedder};
use crate::error::TelosError;
use crate::llm::local::{LocalModel, Stop};
use crate::llm::remote::{Dialect, Remote};
use crate::llm::scripted::Scripted;
use crate::llm::{Backend, BackendKind, Generated, Message, PERSONAS, PersonaConfig, prompt_text};

/// Embeds texts; answers one normalised vector per text.
#[derive(Message)]
#[rtype(result = "Result<Embedded, TelosError>")]
pub struct Embed {
    pub texts: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Embedded {
    pub model: &'static str,
    pub dims: usize,
    pub vectors: Vec<Vec<f32>>,
}

/// Asks a persona for a reply.
#[derive(Message)]
#[rtype(result = "Result<Generated, TelosError>")]
pub struct Generate {
    pub persona: String,
    pub messages: Vec<Message>,
    /// Overrides the persona's temperature for this call (the kernel's repair rounds sample).
    pub temperature: Option<f32>,
}

/// Loads the local model of the personas that use one and evaluates their fixed instructions,
/// so that the first message nobody understands does not pay for either.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Warm;

/// The personas, their settings and whether their model is loaded.
#[derive(Message)]
#[rtype(result = "Vec<PersonaView>")]
pub struct ListPersonas;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PersonaView {
    pub name: String,
    /// The backend in effect (the server default when the persona names none).
    pub backend: BackendKind,
    /// The model in effect (for `local`: the GGUF path).
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub loaded: bool,
    pub answers: u64,
}

/// Changes a persona's settings (unloading its old local model is left to the budget).
#[derive(Message)]
#[rtype(result = "Result<PersonaView, TelosError>")]
pub struct SetPersona {
    pub name: String,
    pub config: PersonaConfig,
}

/// Unloads the local model a persona uses. Answers whether one was loaded.
#[derive(Message)]
#[rtype(result = "Result<bool, TelosError>")]
pub struct Unload {
    pub name: String,
}

/// What the persona host has loaded.
#[derive(Message)]
#[rtype(result = "PersonaStatus")]
pub struct Status;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PersonaStatus {
    pub embedder: &'static str,
    pub embedder_loaded: bool,
    pub embedded_texts: u64,
    /// Forward passes (batches) run: fewer than requests when micro-batching works.
    pub batches: u64,
    pub torch_threads: i32,
    pub default_backend: BackendKind,
    pub loaded_models: Vec<String>,
    pub loaded_mib: u64,
    pub budget_mib: u64,
    /// The persona generating right now (none: idle).
    pub generating: Option<GeneratingView>,
}

/// What the embedder has done, shared with readers that must not wait for it.
#[derive(Debug, Default)]
pub struct EmbedStats {
    loaded: AtomicBool,
    texts: AtomicU64,
    batches: AtomicU64,
}

/// Tokens the local models evaluated, reused (prompt-prefix reuse) and generated, in all.
#[derive(Debug, Default)]
pub struct TokenStats {
    pub prompt: AtomicU64,
    pub reused: AtomicU64,
    pub generated: AtomicU64,
}

/// What the persona host is doing, readable at any time without asking its (busy) actor.
#[derive(Clone)]
pub struct PersonaBoard {
    inner: Arc<Mutex<BoardState>>,
    embed: Arc<EmbedStats>,
    tokens: Arc<TokenStats>,
    torch_threads: i32,
    default_backend: BackendKind,
    budget_mib: u64,
    /// Model loads run as jobs (their progress goes to every connection).
    jobs: crate::progress::Jobs,
}

#[derive(Default)]
struct BoardState {
    views: Vec<PersonaView>,
    loaded_models: Vec<String>,
    loaded_mib: u64,
    /// The persona generating right now, and since when.
    busy: Option<(String, Instant)>,
}

impl PersonaBoard {
    pub fn new(settings: &Settings) -> PersonaBoard {
        PersonaBoard {
            inner: Arc::default(),
            embed: Arc::default(),
            tokens: Arc::default(),
            torch_threads: settings.torch_threads,
            default_backend: settings.persona_backend,
            budget_mib: settings.model_budget_mib,
            jobs: crate::progress::Jobs::default(),
        }
    }

    /// Model loads report to `jobs` (the server's).
    pub fn with_jobs(mut self, jobs: crate::progress::Jobs) -> PersonaBoard {
        self.jobs = jobs;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Token counts of the local models since start.
    pub fn tokens(&self) -> &TokenStats {
        &self.tokens
    }

    /// Texts embedded since start.
    pub fn embedded_texts(&self) -> u64 {
        self.embed.texts.load(Ordering::Relaxed)
    }

    /// The personas, their settings and whether their model is loaded.
    pub fn list(&self) -> Vec<PersonaView> {
        self.state().views.clone()
    }

    /// What the model hosts have loaded and done.
    pub fn status(&self) -> PersonaStatus {
        let st = self.state();
        PersonaStatus {
            embedder: EMBEDDER_ID,
            embedder_loaded: self.embed.loaded.load(Ordering::Relaxed),
            embedded_texts: self.embed.texts.load(Ordering::Relaxed),
            batches: self.embed.batches.load(Ordering::Relaxed),
            torch_threads: self.torch_threads,
            default_backend: self.default_backend,
            loaded_models: st.loaded_models.clone(),
            loaded_mib: st.loaded_mib,
            budget_mib: self.budget_mib,
            generating: st.busy.as_ref().map(|(p, since)| GeneratingView {
                persona: p.clone(),
                ms: since.elapsed().as_millis() as u64,
            }),
        }
    }
}

/// A generation in progress.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratingView {
    pub persona: String,
    pub ms: u64,
}

/// The MiniLM embedder on its own thread.
pub struct EmbedderActor {
    models_dir: PathBuf,
    threads: i32,
    embedder: Option<Embedder>,
    stats: Arc<EmbedStats>,
}

impl EmbedderActor {
    /// `settings.embedder_workers` embedder threads, each loading its own model on first use.
    pub fn start(settings: &Settings, board: &PersonaBoard) -> Addr<EmbedderActor> {
        let (models_dir, threads, stats) = (
            settings.models_dir.clone(),
            settings.torch_threads,
            board.embed.clone(),
        );
        SyncArbiter::start(settings.embedder_workers.max(1), move || EmbedderActor {
            models_dir: models_dir.clone(),
            threads,
            embedder: None,
            stats: stats.clone(),
        })
    }

    fn embedder(&mut self) -> Result<&Embedder, TelosError> {
        if self.embedder.is_none() {
            let t = Instant::now();
            let e = Embedder::load(&self.models_dir, self.threads)
                .map_err(|e| TelosError::unavailable("the embedder could not be loaded", e))?;
            tracing::info!(
                ms = t.elapsed().as_millis() as u64,
                "MiniLM embedder loaded"
            );
            self.embedder = Some(e);
            self.stats.loaded.store(true, Ordering::Relaxed);
        }
        Ok(self.embedder.as_ref().expect("just loaded"))
    }
}

impl Actor for EmbedderActor {
    type Context = SyncContext<Self>;
}

/// Loads the model now (a start with `llm_preload`), so the first search does not pay for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LoadEmbedder;

impl Handler<LoadEmbedder> for EmbedderActor {
    type Result = ();

    fn handle(&mut self, _: LoadEmbedder, _: &mut SyncContext<Self>) {
        if let Err(e) = self.embedder() {
            tracing::warn!(error = %e, "preloading the embedder");
        }
    }
}

impl Handler<Embed> for EmbedderActor {
    type Result = Result<Embedded, TelosError>;

    fn handle(&mut self, msg: Embed, _: &mut SyncContext<Self>) -> Self::Result {
        let n = msg.texts.len() as u64;
        let started = Instant::now();
        let embedded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.embedder()?
                .embed(&msg.texts)
                .map_err(|e| TelosError::Internal(format!("embedding failed: {e:#}")))
        }))
        .unwrap_or_else(|_| Err(TelosError::Internal("the embedder panicked".into())))?;
        crate::metrics::metrics().observe(
            "telos_embedding_duration_seconds",
            "One embedding batch on an embedder thread.",
            &[],
            started.elapsed(),
        );
        self.stats.texts.fetch_add(n, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(Embedded {
            model: EMBEDDER_ID,
            dims: DIMS,
            vectors: embedded,
        })
    }
}

struct Loaded {
    model: LocalModel,
    last_used: Instant,
}

pub struct PersonaActor {
    board: PersonaBoard,
    settings: Settings,
    personas: BTreeMap<String, PersonaConfig>,
    scripted: Option<Scripted>,
    loaded: BTreeMap<PathBuf, Loaded>,
    answers: BTreeMap<String, u64>,
}

impl PersonaActor {
    pub fn new(settings: &Settings, scripted: Option<Scripted>, board: PersonaBoard) -> Self {
        let mut personas = settings.personas.clone();
        for p in PERSONAS {
            personas
                .entry(p.to_string())
                .or_insert_with(|| PersonaConfig::default_for(p));
        }
        let actor = PersonaActor {
            board,
            settings: settings.clone(),
            personas,
            scripted,
            loaded: BTreeMap::new(),
            answers: BTreeMap::new(),
        };
        actor.publish();
        actor
    }

    /// Shows the current state on the board.
    fn publish(&self) {
        let views = self.personas.iter().map(|(n, c)| self.view(n, c)).collect();
        let mut st = self.board.state();
        st.views = views;
        st.loaded_models = self
            .loaded
            .keys()
            .map(|p| p.display().to_string())
            .collect();
        st.loaded_mib = self.loaded.values().map(|l| l.model.bytes()).sum::<u64>() >> 20;
    }

    fn persona(&self, name: &str) -> Result<(String, PersonaConfig), TelosError> {
        let key = name.to_uppercase();
        let cfg = self.personas.get(&key).cloned().ok_or_else(|| {
            TelosError::NotFound(format!(
                "no persona {name}: the personas are {}",
                PERSONAS.join(", ")
            ))
        })?;
        Ok((key, cfg))
    }

    /// The backend and model in effect for `cfg`.
    fn effective(&self, cfg: &PersonaConfig) -> (BackendKind, String) {
        let backend = cfg.backend.unwrap_or(self.settings.persona_backend);
        let model = match backend {
            BackendKind::Local if cfg.model.is_empty() => {
                self.settings.default_model_path().display().to_string()
            }
            BackendKind::Scripted => self.settings.scripted_personas.clone(),
            _ => cfg.model.clone(),
        };
        (backend, model)
    }

    fn view(&self, name: &str, cfg: &PersonaConfig) -> PersonaView {
        let (backend, model) = self.effective(cfg);
        PersonaView {
            name: name.to_string(),
            loaded: backend == BackendKind::Local
                && self.loaded.contains_key(&PathBuf::from(&model)),
            backend,
            model,
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            answers: self.answers.get(name).copied().unwrap_or(0),
        }
    }

    /// Loads the local model at `path`, unloading the least recently used ones if the budget
    /// would be exceeded.
    fn local_model(&mut self, path: PathBuf) -> Result<&LocalModel, TelosError> {
        if !self.loaded.contains_key(&path) {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let budget = self.settings.model_budget_mib << 20;
            if size > budget {
                return Err(TelosError::Unavailable(format!(
                    "the model {} needs {} MiB, more than the whole model budget of {} MiB (model_budget_mib)",
                    path.display(),
                    size >> 20,
                    budget >> 20
                )));
            }
            while self.loaded.values().map(|l| l.model.bytes()).sum::<u64>() + size > budget {
                let oldest = self
                    .loaded
                    .iter()
                    .min_by_key(|(_, l)| l.last_used)
                    .map(|(p, _)| p.clone())
                    .expect("something is loaded when over budget");
                tracing::info!(model = %oldest.display(), "unloading a model to stay within the budget");
                self.loaded.remove(&oldest);
            }
            let running = std::rc::Rc::new(self.board.jobs.begin("load", ""));
            let report = running.clone();
            let model = LocalModel::load_reporting(
                &path,
                self.settings.llm_threads,
                self.settings.llm_context,
                move |p| report.update("model", (p * 100.0) as u64, 100),
            );
            if let Ok(running) = std::rc::Rc::try_unwrap(running) {
                running.finish(model.is_ok());
            }
            let model =
                model.map_err(|e| TelosError::unavailable("the model could not be loaded", e))?;
            self.loaded.insert(
                path.clone(),
                Loaded {
                    model,
                    last_used: Instant::now(),
                },
            );
        }
        let entry = self.loaded.get_mut(&path).expect("loaded above");
        entry.last_used = Instant::now();
        Ok(&entry.model)
    }

    fn generate(
        &mut self,
        persona: &str,
        messages: &[Message],
        temperature: Option<f32>,
    ) -> Result<Generated, TelosError> {
        let (name, mut cfg) = self.persona(persona)?;
        if let Some(t) = temperature {
            cfg.temperature = t.clamp(0.0, 2.0);
        }
        let (backend, model) = self.effective(&cfg);
        let t = Instant::now();
        tracing::debug!(persona = %name, %backend, prompt = %prompt_text(messages), "persona asked");
        let timeout = Duration::from_secs(self.settings.llm_timeout_secs.max(1));
        let mut prompt_tokens = None;
        let mut reused_tokens = None;
        let answer = match backend {
            BackendKind::Scripted => match self.scripted.as_mut() {
                Some(s) => s.complete(&name, &cfg, messages),
                None => Err(anyhow::anyhow!(
                    "persona {name} uses the scripted backend but no scripted_personas file is configured"
                )),
            },
            BackendKind::Ollama => {
                Remote::new(Dialect::Ollama, &self.settings.ollama_url, "", timeout)
                    .with_ca_file(&self.settings.llm_ca_file)
                    .complete(&name, &cfg, messages)
            }
            BackendKind::Openai => Remote::new(
                Dialect::OpenAi,
                &self.settings.openai_url,
                &self.settings.openai_api_key,
                timeout,
            )
            .with_ca_file(&self.settings.llm_ca_file)
            .complete(&name, &cfg, messages),
            BackendKind::Local => {
                let model = self.local_model(PathBuf::from(&model))?;
                model
                    .generate(
                        &name,
                        messages,
                        cfg.temperature,
                        cfg.max_tokens,
                        match name.as_str() {
                            "ALFRED" | "BABS" => Stop::Line,
                            "BRICK" => Stop::Function,
                            _ => Stop::EndOfText,
                        },
                    )
                    .map(|run| {
                        let t = &self.board.tokens;
                        t.prompt
                            .fetch_add(u64::from(run.prompt_tokens), Ordering::Relaxed);
                        t.reused
                            .fetch_add(u64::from(run.reused_tokens), Ordering::Relaxed);
                        t.generated
                            .fetch_add(u64::from(run.generated), Ordering::Relaxed);
                        prompt_tokens = Some(run.prompt_tokens);
                        reused_tokens = Some(run.reused_tokens);
                        (run.text, Some(run.generated))
                    })
            }
        };
        let (text, tokens) = answer.map_err(|e| {
            // The model server's own words (e.g. "out of GPU memory") are what a person needs.
            TelosError::Unavailable(format!("persona {name} ({backend}) failed: {e:#}"))
        })?;
        tracing::debug!(persona = %name, %backend, reply = %text, "persona answered");
        *self.answers.entry(name.clone()).or_default() += 1;
        Ok(Generated {
            persona: name,
            backend,
            model,
            text,
            ms: t.elapsed().as_millis() as u64,
            tokens,
            prompt_tokens,
            reused_tokens,
        })
    }
}

impl Actor for PersonaActor {
    type Context = SyncContext<Self>;

    /// Generation is background work: this thread (and the llama.cpp worker threads it starts,
    /// which inherit its priority) yields the cores to the embedder, the script threads and
    /// the HTTP workers whenever they have something to do, so a search or a message answered
    /// during a generation does not wait for a share of a busy core.
    fn started(&mut self, _: &mut SyncContext<Self>) {
        lower_this_threads_priority(GENERATION_NICE);
    }
}

/// How much lower than the rest of the server generation runs (nice, 0..19).
const GENERATION_NICE: i32 = 19;

/// Lowers the scheduling priority of the calling thread only (Linux threads have their own
/// nice value; threads it starts later inherit it). Raising it back would need privileges.
fn lower_this_threads_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority only read their arguments; PRIO_PROCESS with a thread id
    // applies to that thread alone on Linux.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0 {
            tracing::debug!("could not lower the generation thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

impl Handler<Generate> for PersonaActor {
    type Result = Result<Generated, TelosError>;

    fn handle(&mut self, msg: Generate, _: &mut SyncContext<Self>) -> Self::Result {
        self.board.state().busy = Some((msg.persona.to_uppercase(), Instant::now()));
        // A backend that panics answers with an error; the host keeps serving.
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.generate(&msg.persona, &msg.messages, msg.temperature)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            tracing::error!(persona = %msg.persona, panic = %what, "a persona backend panicked");
            Err(TelosError::Unavailable(format!(
                "persona {} failed unexpectedly (its backend panicked: {what})",
                msg.persona
            )))
        });
        self.board.state().busy = None;
        self.publish();
        answer
    }
}

impl Handler<Warm> for PersonaActor {
    type Result = ();

    fn handle(&mut self, _: Warm, _: &mut SyncContext<Self>) -> Self::Result {
        let t = Instant::now();
        for (persona, system) in crate::kernel::prompts::fixed_instructions() {
            let Ok((name, cfg)) = self.persona(persona) else {
                continue;
            };
            let (backend, model) = self.effective(&cfg);
            if backend != BackendKind::Local {
                continue;
            }
            self.board.state().busy = Some((format!("{name} (warming up)"), Instant::now()));
            let warmed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let model = self.local_model(PathBuf::from(&model))?;
                model
                    .generate(
                        &name,
                        &[Message::system(system), Message::user("")],
                        0.0,
                        1,
                        Stop::Line,
                    )
                    .map_err(|e| TelosError::unavailable("warming the model failed", e))
            }));
            self.board.state().busy = None;
            match warmed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(persona = %name, error = %e, "warming up the local model failed; it loads on first use");
                    break;
                }
                Err(_) => {
                    tracing::error!(persona = %name, "warming up the local model panicked");
                    break;
                }
            }
        }
        self.publish();
        tracing::info!(ms = t.elapsed().as_millis() as u64, "personas warmed up");
    }
}

impl Handler<ListPersonas> for PersonaActor {
    type Result = MessageResult<ListPersonas>;

    fn handle(&mut self, _: ListPersonas, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.personas.iter().map(|(n, c)| self.view(n, c)).collect())
    }
}

impl Handler<SetPersona> for PersonaActor {
    type Result = Result<PersonaView, TelosError>;

    fn handle(&mut self, msg: SetPersona, _: &mut SyncContext<Self>) -> Self::Result {
        let (name, _) = self.persona(&msg.name)?;
        let c = &msg.config;
        if !(0.0..=2.0).contains(&c.temperature) || c.max_tokens == 0 || c.max_tokens > 8192 {
            return Err(TelosError::BadRequest(
                "temperature must be within 0..2 and max_tokens within 1..8192".into(),
            ));
        }
        if c.backend == Some(BackendKind::Scripted) && self.scripted.is_none() {
            return Err(TelosError::BadRequest(
                "the scripted backend needs the scripted_personas file set at start".into(),
            ));
        }
        self.personas.insert(name.clone(), msg.config.clone());
        self.publish();
        Ok(self.view(&name, &msg.config))
    }
}

impl Handler<Unload> for PersonaActor {
    type Result = Result<bool, TelosError>;

    fn handle(&mut self, msg: Unload, _: &mut SyncContext<Self>) -> Self::Result {
        let (_, cfg) = self.persona(&msg.name)?;
        let (backend, model) = self.effective(&cfg);
        if backend != BackendKind::Local {
            return Ok(false);
        }
        let was = self.loaded.remove(&PathBuf::from(&model)).is_some();
        if was {
            tracing::info!(model, "model unloaded on request");
        }
        self.publish();
        Ok(was)
    }
}

impl Handler<Status> for PersonaActor {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.board.status())
    }
}

/// A batch closes early once it holds this many texts.
const BATCH_TEXTS: usize = 64;

type EmbedAnswer = Result<Vec<Vec<f32>>, TelosError>;
type EmbedReply = oneshot::Sender<EmbedAnswer>;

/// The way to embed: a cheap handle that micro-batches concurrent requests into one `Embed`,
/// and remembers the vectors of recent single texts (a search repeated, the recall query of the
/// same selector on objects of the same shape): embedding is deterministic, so a repeated text
/// costs no model call.
#[derive(Clone)]
pub struct EmbedClient {
    tx: mpsc::UnboundedSender<(Vec<String>, EmbedReply)>,
    recent: Arc<Mutex<lru::LruCache<String, Vec<f32>>>>,
}

/// Single texts whose vectors are kept (384 floats each: ~400 KiB in all).
const RECENT_TEXTS: usize = 256;

impl EmbedClient {
    /// Starts the batcher (on the current actix system) in front of `embedder`, which runs
    /// `workers` threads: up to that many batches are embedded at once, so a query never waits
    /// for a long batch to end while a worker is free.
    pub fn start(personas: Addr<EmbedderActor>, workers: usize) -> EmbedClient {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<String>, EmbedReply)>();
        let free = Arc::new(tokio::sync::Semaphore::new(workers.max(1)));
        actix::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(worker) = free.clone().acquire_owned().await else {
                    return;
                };
                let mut n = first.0.len();
                let mut jobs = vec![first];
                // No waiting when the embedder is idle: a lone query goes at once. Requests
                // that arrived meanwhile (or while the last batch ran) join this batch.
                while n < BATCH_TEXTS {
                    match rx.try_recv() {
                        Ok(job) => {
                            n += job.0.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let texts: Vec<String> = jobs.iter().flat_map(|j| j.0.iter().cloned()).collect();
                let request = personas.send(Embed { texts });
                actix::spawn(async move {
                    let answer = match request.await {
                        Ok(a) => a,
                        Err(e) => Err(super::down(super::Who::Embedder)(e)),
                    };
                    drop(worker);
                    match answer {
                        Ok(out) => {
                            let mut vectors = out.vectors.into_iter();
                            for (texts, reply) in jobs {
                                let mine: Vec<Vec<f32>> =
                                    vectors.by_ref().take(texts.len()).collect();
                                let _ = reply.send(Ok(mine));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in jobs {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        EmbedClient {
            tx,
            recent: Arc::new(Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(RECENT_TEXTS).expect("non-zero"),
            ))),
        }
    }

    fn submit(&self, texts: Vec<String>) -> Result<oneshot::Receiver<EmbedAnswer>, TelosError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((texts, reply))
            .map_err(|_| TelosError::Unavailable("the embedder has stopped".into()))?;
        Ok(rx)
    }

    /// One normalised vector per text.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, TelosError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if let [text] = texts.as_slice()
            && let Some(v) = self.recall(text)
        {
            return Ok(vec![v]);
        }
        let _queued = crate::metrics::Held::new(&crate::metrics::metrics().embed_queue);
        let single = (texts.len() == 1).then(|| texts[0].clone());
        let rx = self.submit(texts)?;
        let vectors = rx
            .await
            .map_err(|_| TelosError::Unavailable("the embedder has stopped".into()))??;
        if let (Some(text), [v]) = (single, vectors.as_slice()) {
            self.keep(text, v.clone());
        }
        Ok(vectors)
    }

    fn recall(&self, text: &str) -> Option<Vec<f32>> {
        let hit = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(text)
            .cloned();
        crate::metrics::metrics().count(
            "telos_embed_cache_total",
            "Single-text embeddings asked for, by whether a recent vector answered them.",
            &[("result", if hit.is_some() { "hit" } else { "miss" })],
            1,
        );
        hit
    }

    fn keep(&self, text: String, vector: Vec<f32>) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(text, vector);
    }

    /// [`EmbedClient::embed`] for plain threads (sync actors, blocking tasks).
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, TelosError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(texts)?;
        rx.blocking_recv()
            .map_err(|_| TelosError::Unavailable("the embedder has stopped".into()))?
    }
}
