//! Language-model backends for the personas (pure cores, no actix).
//!
//! A persona (BRICK, ALFRED, BABS, ROBIN) is a name plus a [`PersonaConfig`]: which backend,
//! which model, temperature and token budget. Backends:
//! - `local`: a GGUF file run in-process by llama.cpp ([`local`]), the embedded default;
//! - `ollama`: an Ollama server's `/api/chat`;
//! - `openai`: any OpenAI-compatible `/v1/chat/completions` endpoint (plain HTTP);
//! - `scripted`: replies from a JSON-lines file, for tests only ([`scripted`]).
//!
//! The `PersonaActor` owns the loaded backends and their memory budget.

pub mod local;
pub mod remote;
pub mod scripted;

use serde::{Deserialize, Serialize};

/// The personas, in the order they are shown.
pub const PERSONAS: [&str; 4] = ["BRICK", "ALFRED", "BABS", "ROBIN"];

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// The whole prompt as one text (what scripted replies match against, and what provenance keeps).
pub fn prompt_text(messages: &[Message]) -> String {
    messages
        .iter()
        .map(|m| format!("[{}]\n{}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which kind of language-model server answers a persona.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// llama.cpp in this process, over a GGUF file.
    Local,
    /// An Ollama server (`ollama_url`).
    Ollama,
    /// An OpenAI-compatible server (`openai_url`, `openai_api_key`).
    Openai,
    /// Replies read from the `scripted_personas` file (tests only).
    Scripted,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Ollama => "ollama",
            BackendKind::Openai => "openai",
            BackendKind::Scripted => "scripted",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A persona's backend: absent, null or `""` mean the server's `persona_backend`.
fn backend_or_default<'de, D>(d: D) -> Result<Option<BackendKind>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(name) => BackendKind::deserialize(serde::de::value::StrDeserializer::new(name))
            .map(Some)
            .map_err(|_: serde::de::value::Error| {
                serde::de::Error::custom(format!(
                    "backend must be local, ollama, openai or scripted, not {name:?}"
                ))
            }),
    }
}

/// How one persona is run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PersonaConfig {
    /// None: the server's `persona_backend`.
    #[serde(
        deserialize_with = "backend_or_default",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend: Option<BackendKind>,
    /// `local`: a GGUF path (empty: the default model in `models_dir`); `ollama`/`openai`: the
    /// model name.
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
}

impl Default for PersonaConfig {
    fn default() -> Self {
        PersonaConfig {
            backend: None,
            model: String::new(),
            temperature: 0.2,
            max_tokens: 512,
        }
    }
}

impl PersonaConfig {
    /// The defaults of a persona by name.
    pub fn default_for(name: &str) -> PersonaConfig {
        let (temperature, max_tokens) = match name {
            "BRICK" => (0.0, 512),
            // A verdict is one short line: VALID or INVALID and a few words.
            "ALFRED" => (0.0, 24),
            "BABS" => (0.2, 64),
            _ => (0.7, 256),
        };
        PersonaConfig {
            temperature,
            max_tokens,
            ..PersonaConfig::default()
        }
    }
}

/// What a backend answered.
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    pub persona: String,
    pub backend: BackendKind,
    pub model: String,
    pub text: String,
    pub ms: u64,
    /// Tokens generated, when the backend says.
    pub tokens: Option<u32>,
    /// Tokens of the prompt, and how many of them were reused from the previous call instead
    /// of evaluated again (local backend: prompt-prefix reuse).
    pub prompt_tokens: Option<u32>,
    pub reused_tokens: Option<u32>,
}

/// A generation request to one backend.
pub trait Backend: Send {
    /// Answers the assistant's reply to `messages`.
    fn complete(
        &mut self,
        persona: &str,
        cfg: &PersonaConfig,
        messages: &[Message],
    ) -> anyhow::Result<(String, Option<u32>)>;
}

/// Where a persona's answer begins and ends, tolerant of what small models write around code:
/// strips Markdown fences and answers the first fenced block if there is one, else the text.
pub fn strip_fences(text: &str) -> String {
    let t = text.trim();
    if let Some(start) = t.find("```") {
        let after = &t[start + 3..];
        // Skip the language tag line.
        let body_start = after.find('\n').map(|i| i + 1).unwrap_or(after.len());
        let body = &after[body_start..];
        let end = body.find("```").unwrap_or(body.len());
        return body[..end].trim().to_string();
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_stripped() {
        assert_eq!(
            strip_fences("Here:\n```javascript\nfunction f(self) { return 1; }\n```\nDone."),
            "function f(self) { return 1; }"
        );
        assert_eq!(strip_fences("  plain  "), "plain");
        assert_eq!(strip_fences("```\nx\n"), "x");
    }
}
