//! Calling a compiled method and translating what JavaScript throws into typed errors.

use std::time::Instant;

use rquickjs::{CatchResultExt, CaughtError, Ctx};
use serde_json::Value as Json;

use crate::error::{Result, TelosError};

use super::compile::compile;
use super::state::{DEADLINE, INVOKE, with_exec};

pub(super) fn call_method(
    ctx: &Ctx<'_>,
    receiver: &str,
    holder: &str,
    name: &str,
    source: &str,
    args: &[Json],
) -> Result<Json> {
    let func = compile(ctx, holder, name, source)?;
    let invoke = INVOKE
        .with(|i| i.borrow().clone())
        .expect("engine initialised")
        .restore(ctx)
        .map_err(TelosError::internal)?;
    let args_json = serde_json::to_string(args).map_err(TelosError::internal)?;
    match invoke
        .call::<_, String>((func, receiver, args_json))
        .catch(ctx)
    {
        Ok(out) => {
            let limit = with_exec(|e| e.limits.output_bytes);
            if out.len() > limit {
                return Err(TelosError::LimitExceeded(format!(
                    "{receiver}.{name} returned {} bytes, over the output limit of {limit} bytes",
                    out.len()
                )));
            }
            with_exec(|e| e.pending = None);
            serde_json::from_str(&out).map_err(|e| {
                TelosError::MethodError(format!("{receiver}.{name} returned a non-JSON value: {e}"))
            })
        }
        Err(err) => Err(runtime_error(receiver, name, err)),
    }
}

/// Turns what a method threw into the error the caller sees.
pub(super) fn runtime_error(receiver: &str, name: &str, err: CaughtError<'_>) -> TelosError {
    let (message, stack) = match &err {
        CaughtError::Exception(ex) => (
            ex.message().unwrap_or_default(),
            ex.stack().unwrap_or_default(),
        ),
        CaughtError::Value(v) => (thrown_text(v), String::new()),
        other => (other.to_string(), String::new()),
    };
    translate(receiver, name, &message, &stack)
}

/// The text of a thrown value that is not an `Error`.
pub(super) fn thrown_text(v: &rquickjs::Value<'_>) -> String {
    v.as_string()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| format!("{v:?}"))
}

/// The error behind an exception with `message` and `stack` thrown out of `receiver.name`: a
/// limit (made sticky), the typed error a host function threw, or a method error.
pub(super) fn translate(receiver: &str, name: &str, message: &str, stack: &str) -> TelosError {
    let (fatal, pending, limits) = with_exec(|e| (e.fatal.clone(), e.pending.take(), e.limits));
    if let Some(fatal) = fatal {
        return fatal;
    }
    let timed_out = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() >= t));
    let limit = if timed_out || message == "interrupted" {
        Some(format!(
            "{receiver}.{name} ran past the wall time limit of {} ms",
            limits.wall_time.as_millis()
        ))
    } else if message.contains("out of memory") {
        with_exec(|e| e.out_of_memory = true);
        Some(format!(
            "{receiver}.{name} ran out of memory: heap limit of {} MiB",
            limits.heap_bytes >> 20
        ))
    } else if message.contains("stack overflow") || message.contains("call stack size") {
        Some(format!(
            "{receiver}.{name} overflowed the stack limit of {} KiB",
            limits.stack_bytes >> 10
        ))
    } else {
        None
    };
    if let Some(what) = limit {
        let err = TelosError::LimitExceeded(what);
        with_exec(|e| e.fatal = Some(err.clone()));
        return err;
    }
    if let Some(p) = pending
        && message == p.to_string()
    {
        return p;
    }
    // Only the methods' own frames: the prelude's (`eval_script`) say nothing to their author.
    let stack = stack
        .lines()
        .filter(|l| !l.contains("eval_script"))
        .collect::<Vec<_>>()
        .join("\n");
    let stack = stack.trim_end();
    if stack.is_empty() {
        TelosError::MethodError(format!("{receiver}.{name}: {message}"))
    } else {
        TelosError::MethodError(format!("{receiver}.{name}: {message}\n{stack}"))
    }
}
