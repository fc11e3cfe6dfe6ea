//! The chat line syntax: `target.selector(json, args)` or `target.selector`.

use serde_json::Value as Json;

use crate::error::{Result, TelosError};

/// A parsed message send.
#[derive(Debug, Clone, PartialEq)]
pub struct SendLine {
    pub target: String,
    pub selector: String,
    pub args: Vec<Json>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Parses a line as a message send. `Ok(None)`: it is not one (free text, for ROBIN).
/// `Err`: it looks like one but its arguments are not JSON.
pub fn parse(line: &str) -> Result<Option<SendLine>> {
    let line = line.trim();
    let Some((target, rest)) = line.split_once('.') else {
        return Ok(None);
    };
    let (selector, args) = match rest.split_once('(') {
        Some((sel, tail)) => {
            let Some(inner) = tail.trim_end().strip_suffix(')') else {
                return Ok(None);
            };
            (sel, Some(inner))
        }
        None => (rest, None),
    };
    if !is_ident(target) || !is_ident(selector) {
        return Ok(None);
    }
    let args = match args {
        None => Vec::new(),
        Some(inner) if inner.trim().is_empty() => Vec::new(),
        Some(inner) => match serde_json::from_str::<Json>(&format!("[{inner}]")) {
            Ok(Json::Array(a)) => a,
            Ok(_) => unreachable!("a bracketed JSON text is an array"),
            Err(e) => {
                return Err(TelosError::BadRequest(format!(
                    "the arguments of {target}.{selector}(...) must be JSON values separated by commas: {e}"
                )));
            }
        },
    };
    Ok(Some(SendLine {
        target: target.to_string(),
        selector: selector.to_string(),
        args,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mangled_lines_never_panic() {
        let mut fuzz = crate::testing::Fuzz(0x11ee_5eed);
        let seeds = [
            "genesis_obj.greet(\"Ada\")",
            "o1.area(3, 4)",
            "x.y({\"a\": [1, 2, {\"b\": null}]})",
            "memory_manager.search(\"area\", 3)",
        ];
        for i in 0..3_000 {
            let line = fuzz.mangle(seeds[i % seeds.len()]);
            let _ = parse(&line);
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn sends_with_json_arguments_are_parsed() {
        let p = parse(r#"genesis_obj.greet("Ada", {"x": [1, 2]})"#)
            .unwrap()
            .unwrap();
        assert_eq!(p.target, "genesis_obj");
        assert_eq!(p.selector, "greet");
        assert_eq!(p.args, vec![json!("Ada"), json!({"x": [1, 2]})]);
        assert_eq!(parse("a.b()").unwrap().unwrap().args, Vec::<Json>::new());
        assert_eq!(parse("a.count").unwrap().unwrap().selector, "count");
    }

    #[test]
    fn free_text_is_not_a_send() {
        assert_eq!(parse("hello there").unwrap(), None);
        assert_eq!(parse("What is 2.5 times 3?").unwrap(), None);
        assert_eq!(parse("Hi. How are you?").unwrap(), None);
    }

    #[test]
    fn bad_arguments_are_a_clear_error() {
        let err = parse("a.b(nope)").unwrap_err();
        assert!(err.to_string().contains("must be JSON"), "{err}");
    }
}
