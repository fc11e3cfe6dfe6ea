//! TelOS: a live, persistent world of prototype objects that learn.
//!
//! # Layout
//!
//! Pure cores (no actix):
//! - [`object`]: oids, slots, the `parent*` chain and cycle-safe lookup.
//! - [`store`]: SurrealDB (embedded or remote), schema files, awakening, one-transaction commits.
//! - [`world`]: the object cache over the store, transactions and the optimistic commit protocol.
//! - [`sandbox`]: QuickJS methods with limits; runs one top-level operation's whole call tree.
//! - [`exec`]: the script threads that own the QuickJS runtimes.
//! - [`line`]: the chat syntax `target.selector(args)`.
//! - [`memory`]: memory records, the usearch index over them, the semantic chunker.
//! - [`embed`]: the MiniLM sentence embedder on libtorch.
//! - [`kernel`]: the generative kernel: its stages as a pipeline over four small ports
//!   (personas, memory, sandbox, facts), the answer parsing, static checks and prompts.
//! - [`llm`]: the persona language-model backends (llama.cpp, Ollama, OpenAI-compatible, scripted).
//! - [`progress`]: long work (backups, verifications, reindexing) as jobs that report progress.
//!
//! Actors ([`actors`]) own the cores and talk in typed messages:
//! HTTP/WS → [`telos::Telos`] → `Directory` (oid → `ObjectActor`) → `ObjectActor` (one mailbox per
//! object) → script threads → world → store; a miss goes `ObjectActor` → kernel (`Understand`),
//! whose pipeline asks `PersonaActor` (generation) and `MemoryActor` (which embeds through
//! `EmbedderActor`, on a thread of its own so recall never waits for a generation).
//!
//! Edges guard themselves: [`http::guard`] checks every request's Host, Origin, content type and
//! token before any handler runs (see SECURITY.md).
//!
//! Edges: [`http`] (REST, WebSocket, the page), [`app`] (the one startup path: wiring only),
//! [`config`] (file → env → flags), [`bench`] (printed figures).
//!
//! Layers, lowest first: cores → [`actors`] → [`telos`] (the [`Telos`] handle) → [`http`] →
//! [`app`] (the wiring) → the CLI ([`bench`], `main.rs`). Nothing imports from a layer above its own; actors
//! take narrow dependencies ([`actors::retrievable::Indexer`], [`actors::backup::BackupDeps`],
//! [`actors::kernel_deps::KernelDeps`]), not the handle. `layers::nothing_imports_from_above`
//! checks it on every test run.

pub mod actors;
pub mod app;
pub mod backup;
pub mod bench;
pub mod config;
pub mod embed;
pub mod error;
pub mod exec;
pub mod http;
pub mod kernel;
pub mod line;
pub mod llm;
pub mod memory;
pub mod metrics;
pub mod object;
pub mod progress;
pub mod sandbox;
pub mod store;
pub mod telos;
#[cfg(test)]
pub(crate) mod testing;
pub mod world;

pub use app::{Application, Telos};
pub use config::Settings;
pub use error::TelosError;

/// The layer rule of the crate map above, checked over the source text.
#[cfg(test)]
mod layers {
    /// `crate::` paths each layer may not name: the layers above it.
    fn forbidden(file: &str) -> &'static [&'static str] {
        const ABOVE_CORES: &[&str] = &[
            "crate::actors",
            "crate::telos",
            "crate::app",
            "crate::http",
            "crate::bench",
        ];
        const ABOVE_ACTORS: &[&str] = &[
            "crate::telos",
            "crate::app",
            "crate::http",
            "crate::bench",
            "crate::Telos",
        ];
        const ABOVE_HANDLE: &[&str] = &["crate::app", "crate::http", "crate::bench"];
        const ABOVE_HTTP: &[&str] = &["crate::app", "crate::bench"];
        match file.split('/').next().unwrap_or_default() {
            "actors" => ABOVE_ACTORS,
            "telos.rs" => ABOVE_HANDLE,
            "http" => ABOVE_HTTP,
            "app.rs" | "bench" | "main.rs" | "lib.rs" => &[],
            _ => ABOVE_CORES,
        }
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("reading src") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn nothing_imports_from_above() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut wrong = Vec::new();
        for path in files {
            let rel = path
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("reading a source file");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                // Grouped paths would hide what they name from this check.
                let grouped = concat!("crate", "::{");
                let climbing = concat!("super", "::super");
                if code.contains(grouped) || code.contains(climbing) {
                    wrong.push(format!(
                        "{rel}:{}: {} (name each module)",
                        n + 1,
                        line.trim()
                    ));
                }
                for above in forbidden(&rel) {
                    if code.contains(above) {
                        wrong.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports from a layer above:\n{}",
            wrong.join("\n")
        );
    }
}
