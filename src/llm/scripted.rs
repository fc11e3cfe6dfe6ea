//! The scripted backend (tests only): replies from a JSON-lines file.
//!
//! Each line is `{"persona": "BRICK", "match": "<regex searched in the prompt>", "reply": "..."}`.
//! Lines are tried in order; the first whose persona is the asking one and whose regex is found
//! in the prompt answers; a line may answer any number of times. No match is an error naming the
//! persona, so a test never gets a silent default.

use std::path::Path;

use anyhow::{Context as _, bail};
use regex::Regex;
use serde::Deserialize;

use super::{Backend, Message, PersonaConfig, prompt_text};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    persona: String,
    #[serde(rename = "match")]
    pattern: String,
    reply: String,
    /// Panic instead of answering: tests that a failing backend cannot wedge the server.
    #[serde(default)]
    panic: bool,
}

pub struct Scripted {
    rules: Vec<(String, Regex, String, bool)>,
}

impl Scripted {
    pub fn load(path: &Path) -> anyhow::Result<Scripted> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the scripted personas file {}", path.display()))?;
        Scripted::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scripted> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            let re = Regex::new(&l.pattern)
                .with_context(|| format!("line {}: bad regex {:?}", i + 1, l.pattern))?;
            rules.push((l.persona.to_uppercase(), re, l.reply, l.panic));
        }
        Ok(Scripted { rules })
    }
}

impl Backend for Scripted {
    fn complete(
        &mut self,
        persona: &str,
        _: &PersonaConfig,
        messages: &[Message],
    ) -> anyhow::Result<(String, Option<u32>)> {
        let prompt = prompt_text(messages);
        let persona = persona.to_uppercase();
        for (p, re, reply, panic) in &self.rules {
            if *p == persona && re.is_match(&prompt) {
                assert!(!panic, "the scripted backend panics for {persona}, as told");
                return Ok((reply.clone(), None));
            }
        }
        bail!("the scripted backend has no reply for {persona} matching this prompt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_of_the_persona_answers() {
        let mut s = Scripted::parse(
            r#"{"persona":"BRICK","match":"selector: area","reply":"A"}
{"persona":"ALFRED","match":".","reply":"VALID"}
{"persona":"BRICK","match":".","reply":"B"}"#,
        )
        .unwrap();
        let cfg = PersonaConfig::default();
        let ask = |s: &mut Scripted, p: &str, text: &str| {
            s.complete(p, &cfg, &[Message::user(text)]).map(|r| r.0)
        };
        assert_eq!(ask(&mut s, "BRICK", "selector: area").unwrap(), "A");
        assert_eq!(ask(&mut s, "BRICK", "selector: area").unwrap(), "A");
        assert_eq!(ask(&mut s, "brick", "other").unwrap(), "B");
        assert_eq!(ask(&mut s, "ALFRED", "x").unwrap(), "VALID");
        let err = ask(&mut s, "BABS", "x").unwrap_err().to_string();
        assert!(err.contains("BABS"), "{err}");
        assert!(Scripted::parse("{not json").is_err());
        assert!(Scripted::parse(r#"{"persona":"X","match":"(","reply":""}"#).is_err());
    }
}
