//! Compiling a method's source once per script thread (cached by holder, name and source),
//! and reading positions from QuickJS's stacks.

use rquickjs::context::EvalOptions;
use rquickjs::function::This;
use rquickjs::{CatchResultExt, CaughtError, Ctx, Function, Object, Persistent};

use crate::error::{Result, TelosError};

use super::state::{COMPILED, HARDEN, with_exec};

/// Compiles a method's source (cached by holder, name and source).
pub(super) fn compile<'js>(
    ctx: &Ctx<'js>,
    holder: &str,
    name: &str,
    source: &str,
) -> Result<Function<'js>> {
    // Keyed by holder and name (not by the whole source, which would be hashed on every
    // send); a changed source is a miss.
    let key = format!("{holder}\u{0}{name}");
    let cached = COMPILED.with(|c| {
        c.borrow_mut().as_mut().and_then(|c| {
            c.get(&key)
                .filter(|(s, _)| s == source)
                .map(|(_, f)| f.clone())
        })
    });
    if let Some(f) = cached {
        return f.restore(ctx).map_err(TelosError::internal);
    }
    let file = format!("{holder}.{name}");
    let mut options = EvalOptions::default();
    options.strict = true;
    options.global = true;
    options.filename = Some(file.clone());
    // Parenthesised, a function declaration becomes an expression that keeps its own name for
    // recursion, and anything after the function is a syntax error rather than code that runs.
    let wrapped = format!("({source}\n)");
    // A source is one function expression, but a comma expression around it would run code
    // here: with `compiling` set every host function refuses, so such code reaches nothing.
    let was = with_exec(|e| std::mem::replace(&mut e.compiling, true));
    let value = ctx.eval_with_options(wrapped, options).catch(ctx);
    with_exec(|e| e.compiling = was);
    let value: rquickjs::Value = value.map_err(|e| compile_error(&file, e))?;
    let Some(func) = value.as_function().cloned() else {
        return Err(TelosError::MethodError(format!(
            "{file} is not a function: a method is `function {name}(self, ...args) {{ ... }}`"
        )));
    };
    // Only a function expression: its own text is the whole source, but for comments around
    // it. Anything else (a call that returns a function, say) could keep state in a closure
    // from one message to the next, outside every transaction.
    let text = ctx
        .globals()
        .get::<_, Object>("Function")
        .and_then(|f| f.get::<_, Object>("prototype"))
        .and_then(|p| p.get::<_, Function>("toString"))
        .and_then(|to_string| to_string.call::<_, String>((This(func.clone()),)))
        .map_err(TelosError::internal)?;
    if !source
        .find(&text)
        .is_some_and(|at| only_comments(&source[..at]) && only_comments(&source[at + text.len()..]))
    {
        return Err(TelosError::MethodError(format!(
            "{file} must be a function expression and nothing else (`function {name}(self, ...args) {{ ... }}`): code around it would run once per script thread, and any state it keeps would outlive the message"
        )));
    }
    let harden = HARDEN
        .with(|h| h.borrow().clone())
        .expect("engine initialised")
        .restore(ctx)
        .map_err(TelosError::internal)?;
    let _: rquickjs::Value = harden
        .call((func.clone(),))
        .catch(ctx)
        .map_err(|e| compile_error(&file, e))?;
    COMPILED.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.put(
                key,
                (source.to_string(), Persistent::save(ctx, func.clone())),
            );
        }
    });
    Ok(func)
}

pub(super) fn compile_error(file: &str, err: CaughtError<'_>) -> TelosError {
    let (message, stack) = match &err {
        CaughtError::Exception(ex) => (
            ex.message().unwrap_or_default(),
            ex.stack().unwrap_or_default(),
        ),
        other => (other.to_string(), String::new()),
    };
    match position(file, &stack) {
        Some((line, column)) => {
            // The source is wrapped in "(" on its first line.
            let column = if line == 1 {
                column.saturating_sub(1)
            } else {
                column
            };
            TelosError::MethodError(format!(
                "syntax error in {file} at line {line}, column {column}: {message}"
            ))
        }
        None => TelosError::MethodError(format!("syntax error in {file}: {message}")),
    }
}

/// `text` holds nothing but whitespace and comments. A line comment ends at any of
/// JavaScript's line terminators (`\n`, `\r`, U+2028, U+2029), as QuickJS ends it: ending it
/// only at `\n` would take code after a `\r` for comment.
fn only_comments(text: &str) -> bool {
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after
                .split_once(['\n', '\r', '\u{2028}', '\u{2029}'])
                .map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            match after.split_once("*/") {
                Some((_, r)) => rest = r,
                None => return false,
            }
        } else {
            return false;
        }
        rest = rest.trim_start();
    }
    true
}

/// Finds `file:LINE:COL` in a QuickJS stack trace.
pub(super) fn position(file: &str, stack: &str) -> Option<(usize, usize)> {
    let at = stack.find(&format!("{file}:"))? + file.len() + 1;
    let mut nums = stack[at..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let line = nums.next()?.parse().ok()?;
    let column = nums.next()?.parse().ok()?;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whitespace_and_comments_may_surround_a_method() {
        assert!(only_comments(""));
        assert!(only_comments("  // a note\n /* and\n another */ \n"));
        assert!(!only_comments("/* open"));
        assert!(!only_comments("(() => { let r; return "));
        assert!(!only_comments(")()"));
        // Code after any line terminator is code, not the comment's rest.
        for end in ["\r", "\u{2028}", "\u{2029}", "\r\n"] {
            assert!(!only_comments(&format!("//{end}(function(){{")), "{end:?}");
            assert!(only_comments(&format!("// note{end}")), "{end:?}");
        }
    }

    #[test]
    fn positions_are_read_from_quickjs_stacks() {
        assert_eq!(position("o1.area", "    at o1.area:3:17\n"), Some((3, 17)));
        assert_eq!(position("o1.area", "no position"), None);
    }
}
