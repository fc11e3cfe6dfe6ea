//! Settings: defaults, then a TOML file (`--config`), then `TELOS_*` environment variables, then
//! command-line flags; each layer overrides the one before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::sandbox::Limits;
use crate::store::StoreConfig;

/// Every setting of the server. Field names are also the TOML keys; the environment variable of
/// a field is `TELOS_` + its name in upper case.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub bind: String,
    /// The embedded database and its lock file.
    pub data_dir: PathBuf,
    /// Where backups are written.
    pub backup_dir: PathBuf,
    /// Where model files are cached.
    pub models_dir: PathBuf,
    /// Empty: embedded database in `data_dir`. Else `ws://host:port` of a SurrealDB server.
    pub db_url: String,
    /// Root credentials for a SurrealDB server (unused when embedded).
    pub db_user: String,
    pub db_pass: String,
    pub db_namespace: String,
    pub db_database: String,
    /// The admin token: required to bind beyond loopback; with it set, writes, the WebSocket,
    /// embeddings (and off loopback every read but the health check and the page) need
    /// `Authorization: Bearer TOKEN`. See SECURITY.md.
    pub admin_token: String,
    /// Extra host names this server answers to (comma-separated), besides the loopback names
    /// and the bind address: requests naming any other `Host` are refused (DNS rebinding).
    pub allowed_hosts: String,
    /// `local`, `ollama`, `openai` or `scripted` (used by the personas).
    pub persona_backend: crate::llm::BackendKind,
    /// File of the scripted persona backend (tests only).
    pub scripted_personas: String,
    /// The GGUF file of the `local` backend when a persona names none (empty: the default
    /// Qwen2.5-Coder-1.5B-Instruct in `models_dir`).
    pub persona_model: String,
    /// Per-persona settings (`[personas.BRICK]` backend, model, temperature, max_tokens).
    pub personas: std::collections::BTreeMap<String, crate::llm::PersonaConfig>,
    /// Threads llama.cpp uses for one generation.
    pub llm_threads: i32,
    /// Context window of local generations, tokens.
    pub llm_context: u32,
    /// Memory the loaded local models may use together, MiB; the least recently used is unloaded.
    pub model_budget_mib: u64,
    /// Load the personas' local model at start and evaluate their fixed instructions, so the
    /// first miss does not wait for either (about 10 s on two cores).
    pub llm_preload: bool,
    /// Base URL of the Ollama server (`ollama` backend).
    pub ollama_url: String,
    /// Base URL of the OpenAI-compatible server (`openai` backend), and its key.
    pub openai_url: String,
    pub openai_api_key: String,
    /// A PEM file of CA certificates to trust for HTTPS model servers, besides the system's
    /// and the webpki roots (a private CA); empty: none.
    pub llm_ca_file: String,
    /// Longest wait for a remote model server, seconds.
    pub llm_timeout_secs: u64,
    /// Repair rounds after a failed review or trial.
    pub kernel_repair_rounds: usize,
    /// `never`: generated methods are installed once review and trial pass; `ask`: each waits
    /// for a person to approve it (page, `telos approve`, REST). A `kernel_approval` slot along
    /// an object's chain can ask for its messages where this says `never`, never the reverse.
    pub kernel_approval: crate::kernel::approval::Approval,
    /// How long a method waits for approval before it counts as rejected, seconds.
    pub kernel_approval_timeout_secs: u64,
    /// A selector that failed this many times on one receiver within the window is not retried.
    pub kernel_max_failures: usize,
    pub kernel_failure_window_secs: u64,
    /// A recalled method of the same selector closer than this (cosine distance) is reused.
    pub kernel_reuse_distance: f32,
    /// Memories recalled per miss; 0 turns recall and reuse off.
    pub recall_k: usize,
    /// libtorch threads for the embedder.
    pub torch_threads: i32,
    /// Embedder workers, each with its own copy of MiniLM (~90 MB): with 2, a search never
    /// waits behind the kernel embedding what it learned.
    pub embedder_workers: usize,
    /// The memory index is saved after this many changes (and at shutdown, and on request).
    pub memory_save_every: usize,
    /// The semantic chunker ends a chunk where the topic turns more than this percentile (0-100).
    pub chunk_percentile: f32,
    /// The largest chunk embedded as one memory, in characters.
    pub chunk_max_chars: usize,
    /// Script threads (each owns one QuickJS runtime).
    pub script_threads: usize,
    /// Seconds an object actor may stay idle before it is passivated.
    pub passivate_after_secs: f64,
    /// Sandbox wall time per top-level message, milliseconds.
    pub wall_time_ms: u64,
    /// Sandbox heap limit, MiB.
    pub heap_mib: usize,
    /// Sandbox stack limit, KiB.
    pub stack_kib: usize,
    /// Largest method result / total log output per message, KiB.
    pub output_kib: usize,
    /// Deepest chain of nested sends.
    pub max_call_depth: usize,
    /// Compiled methods cached per script thread.
    pub method_cache: usize,
    /// Bytes one top-level message may write in all (slot values and sources), KiB.
    pub max_write_kib: usize,
    /// Largest single slot value, KiB.
    pub max_slot_kib: usize,
    /// Objects one top-level message may create.
    pub max_objects_per_message: usize,
    /// Runs of one message whose reads went stale before it gives up (all within wall_time_ms).
    pub max_reruns: usize,
    /// Messages that may wait for a script thread before new ones are answered `busy`.
    pub script_queue: usize,
    /// Open HTTP/WebSocket connections at most.
    pub max_connections: usize,
    /// Messages in flight per WebSocket connection.
    pub ws_inflight: usize,
    /// Subscriptions per WebSocket connection.
    pub ws_subscriptions: usize,
    /// Kernel runs at once (more wait their turn), and kernel runs started per minute.
    pub kernel_concurrent_runs: usize,
    pub kernel_runs_per_minute: usize,
    /// Largest WebSocket frame or REST body, KiB.
    pub max_frame_kib: usize,
    /// WebSocket frames per second allowed per connection (burst: twice this).
    pub ws_rate_per_sec: u32,
    /// Tracing filter, e.g. `info` or `telos=debug`.
    pub log: String,
    /// `text` (for people) or `json` (one object per line, for log collectors).
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One object per line with the span fields, for log collectors.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        let models_dir = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/telos/models"))
            .unwrap_or_else(|| PathBuf::from(".cache/telos/models"));
        Settings {
            bind: "127.0.0.1:7777".into(),
            data_dir: "./data".into(),
            backup_dir: "./backups".into(),
            models_dir,
            db_url: String::new(),
            db_user: String::new(),
            db_pass: String::new(),
            db_namespace: "telos".into(),
            db_database: "world".into(),
            admin_token: String::new(),
            allowed_hosts: String::new(),
            persona_backend: crate::llm::BackendKind::Local,
            scripted_personas: String::new(),
            persona_model: String::new(),
            personas: crate::llm::PERSONAS
                .iter()
                .map(|p| (p.to_string(), crate::llm::PersonaConfig::default_for(p)))
                .collect(),
            llm_threads: 2,
            llm_context: 4096,
            model_budget_mib: 4096,
            llm_preload: true,
            ollama_url: "http://127.0.0.1:11434".into(),
            openai_url: String::new(),
            openai_api_key: String::new(),
            llm_ca_file: String::new(),
            llm_timeout_secs: 300,
            kernel_repair_rounds: 3,
            kernel_approval: crate::kernel::approval::Approval::Never,
            kernel_approval_timeout_secs: 600,
            kernel_max_failures: 3,
            kernel_failure_window_secs: 600,
            kernel_reuse_distance: 0.25,
            recall_k: 3,
            torch_threads: 1,
            embedder_workers: 2,
            memory_save_every: 10,
            chunk_percentile: 95.0,
            chunk_max_chars: 1000,
            script_threads: 2,
            passivate_after_secs: 300.0,
            wall_time_ms: 2000,
            heap_mib: 64,
            stack_kib: 512,
            output_kib: 1024,
            max_call_depth: 100,
            method_cache: 4096,
            max_write_kib: 16 << 10,
            max_slot_kib: 1024,
            max_objects_per_message: 1000,
            max_reruns: 32,
            script_queue: crate::exec::DEFAULT_QUEUE,
            max_connections: 4096,
            ws_inflight: 256,
            ws_subscriptions: 1024,
            kernel_concurrent_runs: 1,
            kernel_runs_per_minute: 30,
            max_frame_kib: 1024,
            ws_rate_per_sec: 500,
            log: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// The environment variables read, with the field each one sets.
const ENV: &[&str] = &[
    "bind",
    "data_dir",
    "backup_dir",
    "models_dir",
    "db_url",
    "db_user",
    "db_pass",
    "db_namespace",
    "db_database",
    "admin_token",
    "allowed_hosts",
    "persona_backend",
    "scripted_personas",
    "persona_model",
    "llm_threads",
    "llm_context",
    "model_budget_mib",
    "llm_preload",
    "ollama_url",
    "openai_url",
    "openai_api_key",
    "llm_ca_file",
    "llm_timeout_secs",
    "kernel_repair_rounds",
    "kernel_approval",
    "kernel_approval_timeout_secs",
    "kernel_max_failures",
    "kernel_failure_window_secs",
    "kernel_reuse_distance",
    "recall_k",
    "torch_threads",
    "embedder_workers",
    "memory_save_every",
    "chunk_percentile",
    "chunk_max_chars",
    "script_threads",
    "passivate_after_secs",
    "wall_time_ms",
    "heap_mib",
    "stack_kib",
    "output_kib",
    "max_call_depth",
    "method_cache",
    "max_write_kib",
    "max_slot_kib",
    "max_objects_per_message",
    "max_reruns",
    "script_queue",
    "max_connections",
    "ws_inflight",
    "ws_subscriptions",
    "kernel_concurrent_runs",
    "kernel_runs_per_minute",
    "max_frame_kib",
    "ws_rate_per_sec",
    "log",
    "log_format",
];

impl Settings {
    /// Defaults, then the file (if given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            table = text
                .parse::<toml::Table>()
                .with_context(|| format!("parsing config file {}", path.display()))?;
        }
        for key in ENV {
            let var = format!("TELOS_{}", key.to_uppercase());
            if let Ok(value) = std::env::var(&var) {
                table.insert(key.to_string(), env_value(key, &value, &var)?);
            }
        }
        let settings: Settings = toml::Value::Table(table)
            .try_into()
            .context("reading settings (file and TELOS_* variables)")?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for name in self.personas.keys() {
            if !crate::llm::PERSONAS.contains(&name.as_str()) {
                bail!(
                    "unknown persona {name:?}: the personas are {}",
                    crate::llm::PERSONAS.join(", ")
                );
            }
        }
        if self.script_threads == 0 {
            bail!("script_threads must be at least 1");
        }
        Ok(())
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            db_url: self.db_url.clone(),
            db_user: self.db_user.clone(),
            db_pass: self.db_pass.clone(),
            namespace: self.db_namespace.clone(),
            database: self.db_database.clone(),
            log_in_database: false,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            wall_time: Duration::from_millis(self.wall_time_ms),
            heap_bytes: self.heap_mib << 20,
            stack_bytes: self.stack_kib << 10,
            output_bytes: self.output_kib << 10,
            max_depth: self.max_call_depth,
            cache_capacity: self.method_cache,
            budget: crate::world::Budget {
                write_bytes: self.max_write_kib << 10,
                slot_bytes: self.max_slot_kib << 10,
                objects: self.max_objects_per_message,
                ..crate::world::Budget::default()
            },
            max_attempts: self.max_reruns.max(1),
        }
    }

    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs_f64(self.passivate_after_secs.max(0.05))
    }

    /// The GGUF file of the `local` backend when a persona names none.
    pub fn default_model_path(&self) -> PathBuf {
        if self.persona_model.is_empty() {
            self.models_dir.join(crate::llm::local::DEFAULT_MODEL_FILE)
        } else {
            PathBuf::from(&self.persona_model)
        }
    }

    /// The memory index file (a cache of the memory records).
    pub fn memory_index_path(&self) -> PathBuf {
        self.data_dir.join("memory.usearch")
    }

    pub fn chunking(&self) -> crate::memory::chunker::ChunkConfig {
        crate::memory::chunker::ChunkConfig {
            percentile: self.chunk_percentile,
            max_chars: self.chunk_max_chars.max(64),
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_kib << 10
    }
}

/// Environment values are strings; numeric fields are parsed so TOML typing applies.
fn env_value(key: &str, value: &str, var: &str) -> anyhow::Result<toml::Value> {
    let defaults = toml::Value::try_from(Settings::default()).ok();
    let kind = defaults
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.type_str())
        .unwrap_or("string");
    Ok(match kind {
        "integer" => toml::Value::Integer(
            value
                .parse()
                .with_context(|| format!("{var} must be a whole number, got {value:?}"))?,
        ),
        "float" => toml::Value::Float(
            value
                .parse()
                .with_context(|| format!("{var} must be a number, got {value:?}"))?,
        ),
        "boolean" => toml::Value::Boolean(match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => bail!("{var} must be true or false, got {value:?}"),
        }),
        _ => toml::Value::String(value.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_typed_like_their_fields() {
        assert_eq!(
            env_value("wall_time_ms", "250", "X").unwrap(),
            toml::Value::Integer(250)
        );
        assert_eq!(
            env_value("passivate_after_secs", "0.5", "X").unwrap(),
            toml::Value::Float(0.5)
        );
        assert_eq!(
            env_value("bind", "127.0.0.1:0", "X").unwrap(),
            toml::Value::String("127.0.0.1:0".into())
        );
        assert!(env_value("heap_mib", "lots", "X").is_err());
        assert_eq!(
            env_value("llm_preload", "0", "X").unwrap(),
            toml::Value::Boolean(false)
        );
        assert!(env_value("llm_preload", "maybe", "X").is_err());
    }

    #[test]
    fn closed_choices_are_enums_with_clear_errors() {
        let load = |key: &str, value: &str| {
            toml::from_str::<Settings>(&format!("{key} = {value:?}")).map_err(anyhow::Error::from)
        };
        assert_eq!(
            load("log_format", "json").unwrap().log_format,
            LogFormat::Json
        );
        let err = format!("{:#}", load("log_format", "xml").unwrap_err());
        assert!(err.contains("xml") && err.contains("json"), "{err}");
        assert_eq!(
            load("persona_backend", "ollama").unwrap().persona_backend,
            crate::llm::BackendKind::Ollama
        );
        let err = format!("{:#}", load("persona_backend", "telepathy").unwrap_err());
        assert!(err.contains("telepathy") && err.contains("openai"), "{err}");
    }
}
