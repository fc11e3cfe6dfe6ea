//! The `local` backend: a GGUF model run in-process by llama.cpp (`llama-cpp-2`).
//!
//! The model's own chat template formats the conversation. Generation is greedy at temperature
//! 0, else top-k/top-p/temperature sampling. llama.cpp's OpenMP threads must not spin on a busy
//! 2-core machine: `main` sets `OMP_WAIT_POLICY=passive` before any thread starts.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::Message;

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

/// One loaded GGUF model, with one context per caller (persona) kept for prompt-prefix reuse:
/// each persona's fixed instructions stay evaluated between its calls.
pub struct LocalModel {
    // Field order matters: the cached contexts refer to the model and must be dropped first.
    cache: Mutex<HashMap<String, Cached>>,
    model: LlamaModel,
    path: PathBuf,
    bytes: u64,
    threads: i32,
    n_ctx: u32,
}

/// A llama.cpp context and the tokens its KV cache holds, in order.
struct Cached {
    ctx: LlamaContext<'static>,
    tokens: Vec<LlamaToken>,
}

// SAFETY: a llama.cpp context may be used from any thread, one at a time; `Cached` lives behind
// the model's mutex, so only one thread ever touches it at once.
unsafe impl Send for Cached {}

/// What one local generation did.
#[derive(Debug, Clone)]
pub struct LocalRun {
    pub text: String,
    pub generated: u32,
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Prompt tokens whose evaluation was reused from the previous call (not evaluated again).
    pub reused_tokens: u32,
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Of a prompt of `prompt_len` tokens sharing `common` leading tokens with what the cache
/// holds, how many to keep: never the whole prompt, since the last prompt token must be
/// evaluated again to get the logits the first new token is sampled from.
pub fn reusable(common: usize, prompt_len: usize) -> usize {
    common.min(prompt_len.saturating_sub(1))
}

impl LocalModel {
    /// Loads `path` (CPU) to run with `threads` threads and a context of `n_ctx` tokens.
    pub fn load(path: &Path, threads: i32, n_ctx: u32) -> anyhow::Result<LocalModel> {
        Self::load_reporting(path, threads, n_ctx, |_| {})
    }

    /// [`LocalModel::load`], telling `progress` how far the load is (0.0 to 1.0).
    pub fn load_reporting(
        path: &Path,
        threads: i32,
        n_ctx: u32,
        progress: impl FnMut(f32) + 'static,
    ) -> anyhow::Result<LocalModel> {
        let mut progress = progress;
        if !path.exists() {
            bail!(
                "the model file {} does not exist: run ./ops/setup-models.sh, or point the persona at another GGUF file",
                path.display()
            );
        }
        let bytes = std::fs::metadata(path)?.len();
        let t = Instant::now();
        let params = LlamaModelParams::default().with_progress_callback(move |p| {
            progress(p);
            true
        });
        let model = LlamaModel::load_from_file(backend()?, path, &params)
            .with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(
            model = %path.display(),
            mib = bytes >> 20,
            ms = t.elapsed().as_millis() as u64,
            "language model loaded"
        );
        Ok(LocalModel {
            cache: Mutex::new(HashMap::new()),
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

    fn new_context(&self) -> anyhow::Result<LlamaContext<'static>> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.n_ctx))
            .with_n_batch(self.n_ctx)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = self
            .model
            .new_context(backend()?, params)
            .map_err(|e| anyhow!("creating a llama.cpp context: {e}"))?;
        // SAFETY: the context only borrows the model to keep it alive; `LocalModel` owns both
        // and drops the cached context (declared first) before the model.
        Ok(unsafe { std::mem::transmute::<LlamaContext<'_>, LlamaContext<'static>>(ctx) })
    }

    /// The assistant's reply to `messages`. The prompt's longest common prefix with the
    /// previous call of the same `caller` is not evaluated again: only the new suffix is.
    /// `stop` ends the answer as soon as what is wanted is complete, so no tokens are spent on
    /// what would be thrown away.
    pub fn generate(
        &self,
        caller: &str,
        messages: &[Message],
        temperature: f32,
        max_tokens: u32,
        stop: Stop,
    ) -> anyhow::Result<LocalRun> {
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
        if tokens.is_empty() || tokens.len() + budget > self.n_ctx as usize {
            bail!(
                "the prompt is {} tokens; with {budget} to generate it does not fit the context of {}",
                tokens.len(),
                self.n_ctx
            );
        }
        let mut guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut cached = match guard.remove(caller) {
            Some(c) => c,
            None => Cached {
                ctx: self.new_context()?,
                tokens: Vec::new(),
            },
        };
        let mut keep = reusable(common_prefix(&cached.tokens, &tokens), tokens.len());
        if keep < cached.tokens.len() {
            // Drop the KV cells after the divergence point; a model whose memory cannot be
            // cut part-way starts over.
            let cut = cached
                .ctx
                .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
                .unwrap_or(false);
            if !cut {
                cached.ctx.clear_kv_cache();
                keep = 0;
            }
            cached.tokens.truncate(keep);
        }
        let result = self.decode(&mut cached, &tokens, keep, temperature, budget, stop);
        match result {
            Ok(run) => {
                guard.insert(caller.to_string(), cached);
                Ok(run)
            }
            // After a failure the cache's contents are unknown: start the next call afresh.
            Err(e) => Err(e),
        }
    }

    fn decode(
        &self,
        cached: &mut Cached,
        tokens: &[LlamaToken],
        keep: usize,
        temperature: f32,
        budget: usize,
        stop: Stop,
    ) -> anyhow::Result<LocalRun> {
        let vocab = self.model.vocab();
        let suffix = &tokens[keep..];
        let mut batch = LlamaBatch::new(suffix.len().max(16), 1);
        let last = tokens.len() - 1;
        for (i, t) in suffix.iter().enumerate() {
            let pos = keep + i;
            batch.add(*t, pos as i32, &[0], pos == last)?;
        }
        let t = Instant::now();
        cached
            .ctx
            .decode(&mut batch)
            .map_err(|e| anyhow!("evaluating the prompt: {e}"))?;
        let prompt_ms = t.elapsed().as_millis() as u64;
        let t = Instant::now();
        cached.tokens.truncate(keep);
        cached.tokens.extend_from_slice(suffix);
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
            let token = sampler.sample(&cached.ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break;
            }
            let piece = vocab.token_to_piece(token, false, None);
            if stop == Stop::Line
                && piece.contains(&b'\n')
                && out.iter().any(|b: &u8| !b.is_ascii_whitespace())
            {
                break;
            }
            out.extend(piece);
            generated += 1;
            if stop == Stop::Function && function_closed(&String::from_utf8_lossy(&out)) {
                break;
            }
            batch.clear();
            batch.add(token, pos, &[0], true)?;
            pos += 1;
            cached
                .ctx
                .decode(&mut batch)
                .map_err(|e| anyhow!("generating: {e}"))?;
            cached.tokens.push(token);
        }
        tracing::debug!(
            prompt = tokens.len(),
            reused = keep,
            prompt_ms,
            generated,
            generate_ms = t.elapsed().as_millis() as u64,
            "local generation"
        );
        Ok(LocalRun {
            text: String::from_utf8_lossy(&out).into_owned(),
            generated,
            prompt_tokens: tokens.len() as u32,
            reused_tokens: keep as u32,
        })
    }
}

/// When a generation ends besides the model's own end token and the token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Only at the end token.
    EndOfText,
    /// At the first line break after some text (verdicts, one-line descriptions).
    Line,
    /// When the first `function` has closed its body (a method: any explanation a model adds
    /// after the code would be thrown away).
    Function,
}

/// Whether `text` holds a `function` whose body has closed: braces balance again after the
/// first `{` that follows the word, not counting braces in strings, template literals or
/// comments.
pub fn function_closed(text: &str) -> bool {
    let Some(start) = text.find("function") else {
        return false;
    };
    let bytes = &text.as_bytes()[start..];
    let mut depth = 0usize;
    let mut opened = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'"' | b'\'' | b'`') => {
                // Skip the literal (a backslash escapes the next byte); unterminated: not closed.
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if i >= bytes.len() {
                    return false;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => match text[start + i + 2..].find("*/") {
                Some(end) => i += end + 3,
                None => return false,
            },
            b'{' => {
                depth += 1;
                opened = true;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 && opened {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

fn rand_seed() -> u32 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff_ffff) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_ends_where_its_body_closes() {
        assert!(!function_closed(
            "```javascript\nfunction area(self) {\n  return 1;"
        ));
        assert!(function_closed(
            "```javascript\nfunction area(self) {\n  return 1;\n}"
        ));
        assert!(function_closed(
            "function f(self) { if (self.a) { return {x: 1}; } return 2; }\nThis function"
        ));
        // Braces in strings, templates and comments do not count.
        assert!(!function_closed("function f(self) { return \"}\";"));
        assert!(!function_closed("function f(self) { return `${self.a}}`;"));
        assert!(!function_closed("function f(self) { // }\n return 1;"));
        assert!(!function_closed("function f(self) { /* } */ return 1;"));
        assert!(function_closed("function f(self) { return '\\'}'; }"));
        // Nothing before the word counts; no body yet is not closed.
        assert!(!function_closed("} function f(self)"));
        assert!(!function_closed("no code"));
    }

    #[test]
    fn only_the_new_suffix_is_evaluated() {
        let cached = [1, 2, 3, 4, 5, 6];
        // Same instructions, another task: the shared prefix is kept.
        assert_eq!(reusable(common_prefix(&cached, &[1, 2, 3, 9, 9]), 5), 3);
        // The same prompt again: all but its last token (which gives the logits) is kept.
        assert_eq!(reusable(common_prefix(&cached, &[1, 2, 3]), 3), 2);
        assert_eq!(reusable(common_prefix(&cached, &cached), 6), 5);
        // Nothing in common, or nothing cached.
        assert_eq!(reusable(common_prefix(&cached, &[7, 8]), 2), 0);
        assert_eq!(reusable(common_prefix(&[], &[1, 2]), 2), 0);
        assert_eq!(reusable(0, 0), 0);
    }
}
