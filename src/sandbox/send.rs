//! Send semantics: lookup along the chain, the built-in selectors, the call stack and depth
//! limits, and the fallback to `doesNotUnderstand_`.

use std::rc::Rc;

use rquickjs::Ctx;
use serde_json::{Value as Json, json};

use crate::error::{Result, TelosError};
use crate::object::Slot;
use crate::world::slots_arg;

use super::engine::stack_address;
use super::errors::call_method;
use super::op::Miss;
use super::state::{Frame, with_exec};

/// Sends `selector(args)` to `target` within the current operation.
pub(super) fn dispatch(
    ctx: &Ctx<'_>,
    target: &str,
    selector: &str,
    args: Vec<Json>,
) -> Result<Json> {
    let depth = with_exec(|e| e.stack.len());
    enter((Rc::from(target), Rc::from(selector)))?;
    let result = dispatch_inner(ctx, target, selector, args);
    with_exec(|e| e.stack.truncate(depth));
    result
}

/// Pushes a method call onto the operation's stack, after the checks every send passes: a
/// sticky limit, the native stack and the depth limit.
pub(super) fn enter(frame: Frame) -> Result<()> {
    let used = stack_address();
    with_exec(|e| -> Result<()> {
        if let Some(fatal) = &e.fatal {
            return Err(fatal.clone());
        }
        // Nested sends recurse through QuickJS (and Rust) frames; stop them before QuickJS's
        // own stack check throws a RangeError that a method could catch and carry on from.
        if e.stack_base.abs_diff(used) > e.limits.stack_bytes / 4 * 3 {
            let err = TelosError::LimitExceeded(format!(
                "nested sends used up the stack limit of {} KiB ({} sends deep)",
                e.limits.stack_bytes >> 10,
                e.stack.len()
            ));
            e.fatal = Some(err.clone());
            return Err(err);
        }
        if e.stack.len() >= e.limits.max_depth {
            let chain: Vec<String> = e
                .stack
                .iter()
                .rev()
                .take(6)
                .map(|(r, s)| format!("{r}.{s}"))
                .collect();
            let err = TelosError::LimitExceeded(format!(
                "call depth limit of {} nested sends exceeded (innermost: {} ...)",
                e.limits.max_depth,
                chain.join(" ← ")
            ));
            e.fatal = Some(err.clone());
            return Err(err);
        }
        e.stack.push(frame);
        Ok(())
    })
}

pub(super) fn dispatch_inner(
    ctx: &Ctx<'_>,
    target: &str,
    selector: &str,
    args: Vec<Json>,
) -> Result<Json> {
    with_exec(|e| e.txn.require(target))?;
    let holder = with_exec(|e| e.txn.lookup(target, selector))?;
    if let Some(holder) = holder {
        return match &holder.slots[selector] {
            Slot::Method(m) => call_method(ctx, target, &holder.oid, selector, &m.source, &args),
            Slot::Value(v) if args.is_empty() => Ok(v.clone()),
            Slot::Value(_) => Err(TelosError::MethodError(format!(
                "{target}.{selector} is a value slot, not a method: it takes no arguments (set it with {selector}_(value))"
            ))),
        };
    }
    match (selector, args.len()) {
        ("clone", 0 | 1) => {
            let slots = slots_arg(args.first())?;
            let oid = with_exec(|e| e.txn.clone_object(target, slots))?;
            return Ok(json!({ "$ref": oid }));
        }
        ("setSlot_value_", 2) => {
            let name = args[0].as_str().ok_or_else(|| {
                TelosError::BadRequest(
                    "setSlot_value_ takes a slot name (a string) and a value".into(),
                )
            })?;
            with_exec(|e| e.txn.set_slot(target, name, Slot::Value(args[1].clone())))?;
            return Ok(Json::Null);
        }
        (s, 1) if s.len() > 1 && s.ends_with('_') => {
            let name = &s[..s.len() - 1];
            with_exec(|e| e.txn.set_slot(target, name, Slot::Value(args[0].clone())))?;
            return Ok(Json::Null);
        }
        _ => {}
    }
    let dnu = with_exec(|e| e.txn.lookup(target, "doesNotUnderstand_"))?;
    if let Some(holder) = dnu
        && let Slot::Method(m) = &holder.slots["doesNotUnderstand_"]
    {
        let dnu_args = [json!(selector), Json::Array(args)];
        return call_method(
            ctx,
            target,
            &holder.oid,
            "doesNotUnderstand_",
            &m.source,
            &dnu_args,
        );
    }
    with_exec(|e| {
        e.miss.get_or_insert(Miss {
            receiver: target.to_string(),
            selector: selector.to_string(),
            args,
        });
    });
    Err(TelosError::DoesNotUnderstand {
        receiver: target.to_string(),
        selector: selector.to_string(),
    })
}
