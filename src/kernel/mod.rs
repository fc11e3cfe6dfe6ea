//! The generative kernel's pure parts (no actix): reading a persona's answer as one method,
//! the static checks of the review stage, and the prompts. The `GenerativeKernel` actor runs
//! the stages with them.

pub mod admission;
pub mod approval;
pub mod context;
pub mod pipeline;
pub mod prompts;

/// A stage of a kernel run, as streamed in `stage` frames and named in errors.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Gate,
    Recall,
    Write,
    Review,
    Trial,
    Repair,
    /// A person approves the method (with `kernel_approval = "ask"`).
    Approve,
    Install,
    Answer,
    Learn,
}

impl Stage {
    /// Every stage, in the order a run usually shows them.
    pub const ALL: [Stage; 10] = [
        Stage::Gate,
        Stage::Recall,
        Stage::Write,
        Stage::Review,
        Stage::Trial,
        Stage::Repair,
        Stage::Approve,
        Stage::Install,
        Stage::Answer,
        Stage::Learn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Gate => "gate",
            Stage::Recall => "recall",
            Stage::Write => "write",
            Stage::Review => "review",
            Stage::Trial => "trial",
            Stage::Repair => "repair",
            Stage::Approve => "approve",
            Stage::Install => "install",
            Stage::Answer => "answer",
            Stage::Learn => "learn",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Started,
    Done,
    Failed,
}

use std::sync::LazyLock;

use regex::Regex;

use crate::llm::strip_fences;
use crate::memory::chunker::skip_literal;

/// Names a generated method may not use: no modules, no dynamic code, no host escape hatches.
static FORBIDDEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b(require|import|eval|Function|process|globalThis|fetch|XMLHttpRequest|setTimeout|setInterval|WebAssembly|Deno|Bun)\b",
    )
    .expect("valid regex")
});

/// Where the body of a function that starts at `start` (at or before its `{`) ends: the byte
/// after the matching `}`, skipping strings, template literals and comments.
fn body_end(code: &str, start: usize) -> Option<usize> {
    let b = code.as_bytes();
    let mut i = start + code[start..].find('{')?;
    let mut depth = 0i32;
    while i < b.len() {
        if let Some(next) = skip_literal(b, i) {
            i = next;
            continue;
        }
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Reads a persona's answer as the method `selector`, in the form the sandbox installs:
/// `function selector(self, ...) { ... }`. Accepts fenced code, `function selector(...)`,
/// `selector = function (...)`, arrow functions and method shorthand `selector(self) {...}`.
pub fn extract_method(answer: &str, selector: &str) -> Result<String, String> {
    let code = strip_fences(answer);
    let sel = regex::escape(selector);
    let unterminated = || format!("the function {selector} is not closed (unbalanced braces)");
    // function selector(...) { ... }
    let decl = Regex::new(&format!(r"function\s+{sel}\s*\(")).expect("valid regex");
    if let Some(m) = decl.find(&code) {
        let end = body_end(&code, m.start()).ok_or_else(unterminated)?;
        return Ok(code[m.start()..end].to_string());
    }
    // selector = function (...) { ... }   /   selector: function (...) { ... }
    let assigned = Regex::new(&format!(r"\b{sel}\s*[:=]\s*function\s*\w*\s*\(")).expect("valid");
    if let Some(m) = assigned.find(&code) {
        let paren = m.end() - 1;
        let end = body_end(&code, paren).ok_or_else(unterminated)?;
        return Ok(format!("function {selector}{}", &code[paren..end]));
    }
    // selector = (...) => { ... }   /   selector = (...) => expr
    let arrow = Regex::new(&format!(r"\b{sel}\s*[:=]\s*\(([^)]*)\)\s*=>\s*")).expect("valid");
    if let Some(c) = arrow.captures(&code) {
        let whole = c.get(0).expect("match");
        let params = c[1].trim().to_string();
        let rest = &code[whole.end()..];
        if rest.starts_with('{') {
            let end = body_end(rest, 0).ok_or_else(unterminated)?;
            return Ok(format!("function {selector}({params}) {}", &rest[..end]));
        }
        let expr = rest
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .trim_end_matches(';');
        return Ok(format!(
            "function {selector}({params}) {{ return {expr}; }}"
        ));
    }
    // Method shorthand at the start of a line: selector(self, ...) { ... }
    let shorthand = Regex::new(&format!(r"(?m)^\s*{sel}\s*\([^)]*\)\s*\{{")).expect("valid");
    if let Some(m) = shorthand.find(&code) {
        let start = m.start() + (m.as_str().len() - m.as_str().trim_start().len());
        let end = body_end(&code, start).ok_or_else(unterminated)?;
        return Ok(format!("function {}", &code[start..end]));
    }
    let other = Regex::new(r"function\s+([A-Za-z_$][\w$]*)\s*\(").expect("valid");
    match other.captures(&code) {
        Some(c) => Err(format!(
            "the answer defines function {}, not {selector}",
            &c[1]
        )),
        None => Err(format!(
            "the answer holds no function {selector}(self, ...): {}",
            code.chars().take(200).collect::<String>()
        )),
    }
}

/// The review's static checks on an extracted method: its first parameter is `self` and it
/// uses none of the forbidden names.
pub fn static_checks(source: &str, selector: &str) -> Result<(), String> {
    let head = Regex::new(&format!(
        r"^function\s+{}\s*\(\s*([A-Za-z_$][\w$]*)?",
        regex::escape(selector)
    ))
    .expect("valid");
    match head.captures(source).and_then(|c| c.get(1)) {
        Some(p) if p.as_str() == "self" => {}
        Some(p) => {
            return Err(format!(
                "the first parameter must be self (the receiver), not {}",
                p.as_str()
            ));
        }
        None => return Err("the method must take self as its first parameter".into()),
    }
    if let Some(m) = FORBIDDEN.find(source) {
        return Err(format!(
            "uses {}, which methods may not use (no modules, dynamic code, timers or I/O)",
            m.as_str()
        ));
    }
    Ok(())
}

/// ALFRED's verdict: `Ok(reason)` for VALID, `Err(reason)` otherwise. Fails closed: only an
/// explicit VALID (before any INVALID) passes; an answer with neither word is a refusal. The
/// answer is read by regex on the original text, never by byte offsets into a case-changed copy
/// (whose length can differ for some letters).
pub fn verdict(answer: &str) -> Result<String, String> {
    static WORD: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\b(in)?valid\b").expect("valid regex"));
    let text = answer.trim();
    let Some(m) = WORD.find(text) else {
        let shown: String = text.chars().take(200).collect();
        return Err(format!(
            "no clear verdict (neither VALID nor INVALID): {shown}"
        ));
    };
    let reason = text[m.end()..]
        .trim_start_matches([':', '.', '-', ',', ' ', '\n', '*'])
        .trim();
    let reason: String = reason.chars().take(300).collect();
    let invalid = m
        .as_str()
        .get(..2)
        .is_some_and(|p| p.eq_ignore_ascii_case("in"));
    // "not valid", "isn't valid": a negated VALID is a refusal too.
    let before = text[..m.start()].trim_end().to_lowercase();
    let negated = before.ends_with("not") || before.ends_with("n't") || before.ends_with("n’t");
    if invalid || negated {
        Err(reason)
    } else {
        Ok(reason)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mangled_persona_answers_never_panic() {
        let mut fuzz = crate::testing::Fuzz(0xa1f_12ed);
        let seeds = [
            "```javascript\nfunction area(self, a) { return self.w * a; }\n```",
            "area = (self) => { return `x${self.y}`; }",
            "VALID: it computes the area of ß and ŉ",
            "INVALID - it writes /* } */ files",
            "area(self) { if (a) { return '}'; } }",
        ];
        for i in 0..3_000 {
            let answer = fuzz.mangle(seeds[i % seeds.len()]);
            let _ = verdict(&answer);
            if let Ok(source) = extract_method(&answer, "area") {
                let _ = static_checks(&source, "area");
            }
        }
    }

    use super::*;

    #[test]
    fn the_shapes_small_models_write_are_read() {
        let want = "function area(self, a) { return self.w * a; }";
        for answer in [
            "```javascript\nfunction area(self, a) { return self.w * a; }\n```",
            "Sure! Here it is:\nfunction area(self, a) { return self.w * a; }\nHope it helps.",
            "area = function(self, a) { return self.w * a; }",
            "const area = function (self, a) { return self.w * a; };",
            "area(self, a) { return self.w * a; }",
        ] {
            let got = extract_method(answer, "area").unwrap();
            assert_eq!(
                got.split_whitespace().collect::<String>(),
                want.split_whitespace().collect::<String>(),
                "{answer}"
            );
        }
        assert_eq!(
            extract_method("const area = (self, a) => self.w * a;", "area").unwrap(),
            "function area(self, a) { return self.w * a; }"
        );
        let nested = "function f(self) { if (1) { return '}'; } /* } */ return 2; } trailing";
        assert_eq!(
            extract_method(nested, "f").unwrap(),
            "function f(self) { if (1) { return '}'; } /* } */ return 2; }"
        );
        assert!(
            extract_method("function other(self) {}", "area")
                .unwrap_err()
                .contains("other")
        );
        assert!(extract_method("no code here", "area").is_err());
        assert!(extract_method("function area(self) { return 1;", "area").is_err());
    }

    #[test]
    fn static_checks_want_self_and_no_escape_hatches() {
        assert!(static_checks("function area(self, a) { return 1; }", "area").is_ok());
        assert!(
            static_checks("function area(w, h) { return w * h; }", "area")
                .unwrap_err()
                .contains("self")
        );
        assert!(
            static_checks("function area(self) { return require('fs'); }", "area")
                .unwrap_err()
                .contains("require")
        );
    }

    #[test]
    fn verdicts_are_read() {
        assert_eq!(
            verdict("VALID: computes the area").unwrap(),
            "computes the area"
        );
        assert_eq!(
            verdict("INVALID - it deletes things").unwrap_err(),
            "it deletes things"
        );
        assert!(verdict("The code is INVALID because x").is_err());
        // Fails closed: no verdict is a refusal.
        assert!(verdict("Looks fine to me").is_err());
        assert!(verdict("This is not valid: it writes files").is_err());
        assert!(verdict("It isn't VALID").is_err());
        assert!(verdict("").is_err());
        // Letters whose upper case is longer than their lower case (ß → SS, ŉ → ʼN) and
        // mixed scripts never panic.
        for answer in [
            "ßßßß valid",
            "ŉŉŉ INVALID: ﬃ",
            "İİİ VALID – ok ǰ",
            "VALİD",
            "\u{10FFFF}valid",
        ] {
            let _ = verdict(answer);
        }
        assert!(verdict("ßßßß VALID: fine").is_ok());
        assert_eq!(verdict("ŉŉŉ INVALID: ﬃ").unwrap_err(), "ﬃ");
    }
}
