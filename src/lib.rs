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
//!
//! Actors ([`actors`]) own the cores and talk in typed messages:
//! HTTP/WS → [`app::Telos`] → `Directory` (oid → `ObjectActor`) → `ObjectActor` (one mailbox per
//! object) → script threads → world → store; a miss goes `ObjectActor` → kernel (`Understand`),
//! whose pipeline asks `PersonaActor` (generation) and `MemoryActor` (which embeds through
//! `EmbedderActor`, on a thread of its own so recall never waits for a generation).
//!
//! Edges guard themselves: [`http::guard`] checks every request's Host, Origin, content type and
//! token before any handler runs (see SECURITY.md).
//!
//! Edges: [`http`] (REST, WebSocket, the page), [`app`] (the one startup path), [`config`]
//! (file → env → flags), [`bench`] (printed figures).

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
pub mod object;
pub mod sandbox;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod world;

pub use app::{Application, Telos};
pub use config::Settings;
pub use error::TelosError;
