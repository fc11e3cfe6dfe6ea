//! Long-term memory, as pure cores (no actix): the records kept in the database
//! ([`records`]), the usearch vector index that caches them ([`index`]), and the semantic
//! chunker that cuts texts into what gets embedded ([`chunker`]). The `MemoryActor` owns them.

pub mod chunker;
pub mod index;
pub mod map;
pub mod records;

use serde::{Deserialize, Serialize};

/// What a memory is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// A method the kernel learned (or one posted with its source).
    Method,
    /// A chunk of a Retrievable object's text, kept by the indexer.
    Object,
    /// Anything else a client asked to remember. A stored kind this server does not know
    /// (written by hand into the database) reads as a note.
    #[default]
    #[serde(other)]
    Note,
}

impl MemoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Method => "method",
            MemoryKind::Object => "object",
            MemoryKind::Note => "note",
        }
    }

    /// A kind named by a client: `method`, `object` or `note` (empty: note); anything else is an
    /// error that names the choices, never a silent note.
    pub fn parse(name: &str) -> Result<MemoryKind, String> {
        match name {
            "method" => Ok(MemoryKind::Method),
            "object" => Ok(MemoryKind::Object),
            "note" | "" => Ok(MemoryKind::Note),
            other => Err(format!(
                "a memory's kind is method, object or note, not {other:?}"
            )),
        }
    }

    fn strict<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MemoryKind, D::Error> {
        MemoryKind::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One memory: a text, its embedding, and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Record {
    /// The key in the vector index (also the record id); never reused.
    pub key: u64,
    pub kind: MemoryKind,
    /// What was embedded.
    pub text: String,
    /// The request that led to it (e.g. the selector and arguments of a miss).
    #[serde(default)]
    pub prompt: String,
    /// The oid of the object it belongs to (may be empty).
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub selector: String,
    /// Method source, for method memories.
    #[serde(default)]
    pub source: String,
    /// Who wrote it: `kernel` (learned, tested, with provenance) or `external` (posted over
    /// REST, or older than origins). Only `kernel` methods are ever reused as code.
    #[serde(default)]
    pub origin: String,
    pub embedder: String,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub seq: u64,
    /// The embedding; left out of listings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vector: Vec<f32>,
}

/// A search result: a record (without its vector) and its cosine distance to the query.
#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
pub struct Found {
    /// The record's key.
    pub id: u64,
    pub distance: f32,
    pub kind: MemoryKind,
    pub text: String,
    pub prompt: String,
    pub owner: String,
    pub selector: String,
    pub source: String,
    /// `kernel` or `external` (see [`crate::memory::Record::origin`]).
    pub origin: String,
    pub created: String,
}

/// What a caller asks to remember.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    /// Default: `note`.
    #[serde(default, deserialize_with = "MemoryKind::strict")]
    pub kind: MemoryKind,
    pub text: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub selector: String,
    #[serde(default)]
    pub source: String,
    /// Set by the server, never by a client: `kernel` for what the kernel learned; empty means
    /// `external`.
    #[serde(skip_deserializing)]
    pub origin: String,
}

/// The origin of memories the kernel learned (the only ones reused as code).
pub const ORIGIN_KERNEL: &str = "kernel";
/// The origin of everything else (posted over REST, chunks of objects, older records).
pub const ORIGIN_EXTERNAL: &str = "external";
