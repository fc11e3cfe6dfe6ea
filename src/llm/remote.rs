//! HTTP backends: an Ollama server (`/api/chat`) and any OpenAI-compatible endpoint
//! (`/v1/chat/completions`), over HTTP or HTTPS (rustls; the system's roots and the webpki
//! roots, plus `llm_ca_file` for a private CA), with an API key for OpenAI-compatible servers.
//! Called from the persona host's own thread, each request on a small private runtime. A
//! refused or reset connection, 429 or 502–504 is retried twice (after 0.5 s and 1 s);
//! anything else (a certificate, a timeout, another status) is a clear error at once, with the
//! server's own words.

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
    /// PEM file of extra CA certificates to trust (empty: none).
    ca_file: String,
}

/// The largest answer read from a model server.
const MAX_ANSWER: usize = 16 << 20;
/// Tries per request (the first and two retries) and the pause before each retry.
const TRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(500);

impl Remote {
    pub fn new(dialect: Dialect, base: &str, api_key: &str, timeout: Duration) -> Remote {
        Remote {
            dialect,
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            timeout,
            ca_file: String::new(),
        }
    }

    /// Also trusts the CA certificates in the PEM file `path` (`llm_ca_file`).
    pub fn with_ca_file(mut self, path: &str) -> Remote {
        self.ca_file = path.to_string();
        self
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)));
        if !self.ca_file.is_empty() {
            let pem = std::fs::read(&self.ca_file)
                .with_context(|| format!("reading llm_ca_file {}", self.ca_file))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("llm_ca_file {} holds no PEM certificates", self.ca_file)
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().context("building the HTTP client")
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

/// Whether a connection failed for a reason worth retrying (refused or reset: a server
/// restarting), not a certificate or name that will fail the same way again.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            );
        }
        source = s.source();
    }
    false
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
        if !(self.base.starts_with("http://") || self.base.starts_with("https://")) {
            bail!("the model server's address must start with http:// or https://");
        }
        let (url, body) = self.request(cfg, messages);
        let body = serde_json::to_vec(&body)?;
        let client = self.client()?;
        let key = self.api_key.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (status, answer) = rt.block_on(async move {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut req = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if !key.is_empty() {
                    req = req.bearer_auth(&key);
                }
                let sent = req.send().await;
                let again = match &sent {
                    Err(e) => e.is_connect() && refused(e),
                    Ok(r) => matches!(r.status().as_u16(), 429 | 502..=504),
                };
                if again && tries < TRIES {
                    tracing::info!(%url, tries, "the model server is unavailable; trying again");
                    tokio::time::sleep(RETRY_PAUSE * tries).await;
                    continue;
                }
                let resp = sent.map_err(|e| {
                    // The address is the operator's business: logged, not told to clients.
                    tracing::warn!(%url, error = %e, "cannot reach the model server");
                    if e.is_timeout() {
                        anyhow!("the model server did not answer within llm_timeout_secs")
                    } else {
                        // Without the URL (it may carry credentials): the cause only.
                        anyhow!(
                            "cannot reach the model server: {}",
                            crate::error::chain(&e.without_url())
                        )
                    }
                })?;
                let status = resp.status();
                // Read at most MAX_ANSWER bytes, whatever the server sends.
                let mut resp = resp;
                let mut bytes = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| {
                    anyhow!(
                        "reading the model server's answer: {}",
                        crate::error::chain(&e.without_url())
                    )
                })? {
                    if bytes.len() + chunk.len() > MAX_ANSWER {
                        bail!("the model server's answer is larger than 16 MiB");
                    }
                    bytes.extend_from_slice(&chunk);
                }
                return Ok::<_, anyhow::Error>((status, bytes));
            }
        })?;
        if !status.is_success() {
            // The server's own words, shortened (they reach the person and the attempt log), with
            // the key masked should a proxy echo it.
            let mut words: String = String::from_utf8_lossy(&answer).chars().take(512).collect();
            if !self.api_key.is_empty() {
                words = words.replace(&self.api_key, "***");
            }
            bail!("the model server answered {status}: {words}");
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

    #[test]
    fn a_refused_connection_is_retried_and_then_named() {
        // A port nobody listens on: refused at once, tried three times, then a clear error.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let err = Remote::new(Dialect::Ollama, &url, "", Duration::from_secs(5))
            .complete("ROBIN", &PersonaConfig::default(), &[Message::user("hi")])
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot reach the model server"),
            "{err:#}"
        );
        // Two pauses (0.5 s, then 1 s) came before the error.
        assert!(
            started.elapsed() >= RETRY_PAUSE * 3,
            "{:?}",
            started.elapsed()
        );
        let err = Remote::new(Dialect::Ollama, "ftp://x", "", Duration::from_secs(1))
            .complete("ROBIN", &PersonaConfig::default(), &[Message::user("hi")])
            .unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
    }
}
