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
    /// Required for REST writes and WebSocket when binding to a non-loopback address.
    pub admin_token: String,
    /// `local`, `ollama`, `openai` or `scripted` (used by the personas).
    pub persona_backend: String,
    /// File of the scripted persona backend (tests only).
    pub scripted_personas: String,
    /// Memories recalled per miss; 0 turns recall and reuse off.
    pub recall_k: usize,
    /// libtorch threads for the embedder.
    pub torch_threads: i32,
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
    /// Largest WebSocket frame or REST body, KiB.
    pub max_frame_kib: usize,
    /// WebSocket frames per second allowed per connection (burst: twice this).
    pub ws_rate_per_sec: u32,
    /// Tracing filter, e.g. `info` or `telos=debug`.
    pub log: String,
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
            persona_backend: "local".into(),
            scripted_personas: String::new(),
            recall_k: 3,
            torch_threads: 1,
            script_threads: 2,
            passivate_after_secs: 300.0,
            wall_time_ms: 2000,
            heap_mib: 64,
            stack_kib: 512,
            output_kib: 1024,
            max_call_depth: 100,
            method_cache: 4096,
            max_frame_kib: 1024,
            ws_rate_per_sec: 500,
            log: "info".into(),
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
    "persona_backend",
    "scripted_personas",
    "recall_k",
    "torch_threads",
    "script_threads",
    "passivate_after_secs",
    "wall_time_ms",
    "heap_mib",
    "stack_kib",
    "output_kib",
    "max_call_depth",
    "method_cache",
    "max_frame_kib",
    "ws_rate_per_sec",
    "log",
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
        if !matches!(
            self.persona_backend.as_str(),
            "local" | "ollama" | "openai" | "scripted"
        ) {
            bail!(
                "persona_backend must be local, ollama, openai or scripted, not {:?}",
                self.persona_backend
            );
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
        }
    }

    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs_f64(self.passivate_after_secs.max(0.05))
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
    }
}
