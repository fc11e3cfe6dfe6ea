//! HTTP backends: an Ollama server (`/api/chat`) and any OpenAI-compatible endpoint
//! (`/v1/chat/completions`). Plain HTTP (a local or in-cluster server); called from the
//! persona host's own thread, each request on a small private runtime.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value as Json, json};

use super::{Backend, Message, PersonaConfig};

/// Which HTTP dialect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dialect {
    Ollama,
    OpenAi,
}

pub struct Remote {
    dialect: Dialect,
    base: String,
    api_key: String,
    timeout: Duration,
}

impl Remote {
    pub fn new(dialect: Dialect, base: &str, api_key: &str, timeout: Duration) -> Remote {
        Remote {
            dialect,
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            timeout,
        }
    }

    fn request(&self, cfg: &PersonaConfig, messages: &[Message]) -> (String, Json) {
        match self.dialect {
            Dialect::Ollama => (
                format!("{}/api/chat", self.base),
                json!({
                    "model": cfg.model,
                    "messages": messages,
                    "stream": false,
                    "options": { "temperature": cfg.temperature, "num_predict": cfg.max_tokens },
                }),
            ),
            Dialect::OpenAi => (
                format!("{}/v1/chat/completions", self.base),
                json!({
                    "model": cfg.model,
                    "messages": messages,
                    "temperature": cfg.temperature,
                    "max_tokens": cfg.max_tokens,
                }),
            ),
        }
    }
}

/// The reply text (and token count) in an answer of `dialect`.
pub fn parse_answer(dialect: Dialect, body: &Json) -> anyhow::Result<(String, Option<u32>)> {
    let (text, tokens) = match dialect {
        Dialect::Ollama => (
            body["message"]["content"].as_str(),
            body["eval_count"].as_u64(),
        ),
        Dialect::OpenAi => (
            body["choices"][0]["message"]["content"].as_str(),
            body["usage"]["completion_tokens"].as_u64(),
        ),
    };
    let text = text.ok_or_else(|| anyhow!("the answer has no message content: {body}"))?;
    Ok((text.to_string(), tokens.map(|t| t as u32)))
}

impl Backend for Remote {
    fn complete(
        &mut self,
        _persona: &str,
        cfg: &PersonaConfig,
        messages: &[Message],
    ) -> anyhow::Result<(String, Option<u32>)> {
        if self.base.starts_with("https://") {
            tracing::warn!(url = %self.base, "the model server's address is HTTPS");
            bail!(
                "the model server's address is HTTPS; this build talks plain HTTP to model servers (put a local proxy in front)"
            );
        }
        let (url, body) = self.request(cfg, messages);
        let (timeout, key) = (self.timeout, self.api_key.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        let (status, answer) = local.block_on(&rt, async move {
            let client = awc::Client::builder().timeout(timeout).finish();
            let mut req = client.post(&url);
            if !key.is_empty() {
                req = req.bearer_auth(&key);
            }
            let mut resp = req.send_json(&body).await.map_err(|e| {
                // The address is the operator's business: logged, not told to clients.
                tracing::warn!(%url, error = %e, "cannot reach the model server");
                anyhow!("cannot reach the model server: {e}")
            })?;
            let bytes = resp
                .body()
                .limit(16 << 20)
                .await
                .context("reading the model server's answer")?;
            Ok::<_, anyhow::Error>((resp.status(), bytes))
        })?;
        if !status.is_success() {
            bail!(
                "the model server answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let body: Json = serde_json::from_slice(&answer).context("the answer is not JSON")?;
        parse_answer(self.dialect, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_both_dialects_are_read() {
        let o = json!({"message": {"role": "assistant", "content": "hi"}, "eval_count": 3});
        assert_eq!(
            parse_answer(Dialect::Ollama, &o).unwrap(),
            ("hi".into(), Some(3))
        );
        let a =
            json!({"choices": [{"message": {"content": "yo"}}], "usage": {"completion_tokens": 2}});
        assert_eq!(
            parse_answer(Dialect::OpenAi, &a).unwrap(),
            ("yo".into(), Some(2))
        );
        assert!(parse_answer(Dialect::OpenAi, &o).is_err());
    }
}
