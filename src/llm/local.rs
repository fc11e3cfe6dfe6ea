//! The `local` backend: a GGUF model run in-process by llama.cpp (`llama-cpp-2`).
//!
//! The model's own chat template formats the conversation. Generation is greedy at temperature
//! 0, else top-k/top-p/temperature sampling. llama.cpp's OpenMP threads must not spin on a busy
//! 2-core machine: `main` sets `OMP_WAIT_POLICY=passive` before any thread starts.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

use super::{Backend, Message, PersonaConfig};

/// The default model's file name in the models directory (put there by ops/setup-models.sh).
pub const DEFAULT_MODEL_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

fn backend() -> anyhow::Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            LlamaBackend::init()
                .map(|mut b| {
                    b.void_logs();
                    b
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("llama.cpp could not start: {e}"))
}

/// One loaded GGUF model.
pub struct LocalModel {
    model: LlamaModel,
    path: PathBuf,
    bytes: u64,
    threads: i32,
    n_ctx: u32,
}

impl LocalModel {
    /// Loads `path` (CPU) to run with `threads` threads and a context of `n_ctx` tokens.
    pub fn load(path: &Path, threads: i32, n_ctx: u32) -> anyhow::Result<LocalModel> {
        if !path.exists() {
            bail!(
                "the model file {} does not exist: run ./ops/setup-models.sh, or point the persona at another GGUF file",
                path.display()
            );
        }
        let bytes = std::fs::metadata(path)?.len();
        let t = Instant::now();
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default())
            .with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(
            model = %path.display(),
            mib = bytes >> 20,
            ms = t.elapsed().as_millis() as u64,
            "language model loaded"
        );
        Ok(LocalModel {
            model,
            path: path.to_path_buf(),
            bytes,
            threads: threads.max(1),
            n_ctx: n_ctx.max(512),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the model costs in memory (its file size: weights are mapped whole).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The assistant's reply to `messages` and the number of tokens generated.
    pub fn generate(
        &self,
        messages: &[Message],
        temperature: f32,
        max_tokens: u32,
    ) -> anyhow::Result<(String, u32)> {
        let template = self
            .model
            .chat_template(None)
            .map_err(|e| anyhow!("the model has no chat template: {e}"))?;
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("a message holds a NUL byte: {e}"))?;
        let prompt = self
            .model
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| anyhow!("applying the chat template: {e}"))?;
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(prompt.as_bytes(), false, true);
        let budget = max_tokens.max(1) as usize;
        if tokens.len() + budget > self.n_ctx as usize {
            bail!(
                "the prompt is {} tokens; with {budget} to generate it does not fit the context of {}",
                tokens.len(),
                self.n_ctx
            );
        }
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.n_ctx))
            .with_n_batch(self.n_ctx)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx = self
            .model
            .new_context(backend()?, params)
            .map_err(|e| anyhow!("creating a llama.cpp context: {e}"))?;
        let mut batch = LlamaBatch::new(tokens.len().max(16), 1);
        let last = tokens.len() as i32 - 1;
        for (i, t) in tokens.iter().enumerate() {
            batch.add(*t, i as i32, &[0], i as i32 == last)?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("evaluating the prompt: {e}"))?;
        let mut sampler = if temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::top_k(40),
                LlamaSampler::top_p(0.95, 1),
                LlamaSampler::temp(temperature),
                LlamaSampler::dist(rand_seed()),
            ])
        };
        let mut out = Vec::new();
        let mut pos = tokens.len() as i32;
        let mut generated = 0u32;
        while (generated as usize) < budget {
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break;
            }
            out.extend(vocab.token_to_piece(token, false, None));
            generated += 1;
            batch.clear();
            batch.add(token, pos, &[0], true)?;
            pos += 1;
            ctx.decode(&mut batch)
                .map_err(|e| anyhow!("generating: {e}"))?;
        }
        Ok((String::from_utf8_lossy(&out).into_owned(), generated))
    }
}

fn rand_seed() -> u32 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff_ffff) as u32
}

/// A persona backend over a shared, loaded model.
pub struct Local<'a> {
    pub model: &'a LocalModel,
}

impl Backend for Local<'_> {
    fn complete(
        &mut self,
        _persona: &str,
        cfg: &PersonaConfig,
        messages: &[Message],
    ) -> anyhow::Result<(String, Option<u32>)> {
        let (text, n) = self
            .model
            .generate(messages, cfg.temperature, cfg.max_tokens)?;
        Ok((text, Some(n)))
    }
}
