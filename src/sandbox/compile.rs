//! Compiling a method's source once per script thread (cached by holder, name and source),
//! and reading positions from QuickJS's stacks.

use rquickjs::context::EvalOptions;
use rquickjs::{CatchResultExt, CaughtError, Ctx, Function, Persistent};

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
    fn positions_are_read_from_quickjs_stacks() {
        assert_eq!(position("o1.area", "    at o1.area:3:17\n"), Some((3, 17)));
        assert_eq!(position("o1.area", "no position"), None);
    }
}
