//! The host functions the prelude receives (`host.get`, `host.set`, `host.method`, ...).

use std::rc::Rc;

use rquickjs::{Ctx, Function, Object};
use serde_json::Value as Json;

use crate::error::TelosError;
use crate::object::Slot;
use crate::world::slots_arg;

use super::bridge::{check_assigner, check_fatal, parse_json, primitive_json, throw, to_js};
use super::compile::compile;
use super::errors::{thrown_text, translate};
use super::send::{dispatch, enter};
use super::state::with_exec;

/// Call sites one operation may number (`host.site`); beyond them, methods enter by name.
const SITES: usize = 1 << 16;

/// The host functions the prelude wraps. Each checks the sticky limit first.
pub(super) fn host_object<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let host = Object::new(ctx.clone())?;
    // `self.k`: the value of slot `k` along the chain, the compiled method if it is one, or
    // undefined.
    host.set(
        "get",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, oid: String, name: String| -> rquickjs::Result<rquickjs::Value<'js>> {
                check_fatal(&ctx)?;
                let found = with_exec(|e| e.txn.lookup(&oid, &name)).map_err(|e| throw(&ctx, e))?;
                let Some(holder) = found else {
                    return Ok(rquickjs::Value::new_undefined(ctx));
                };
                match &holder.slots[&name] {
                    Slot::Method(m) => compile(&ctx, &holder.oid, &name, &m.source)
                        .map(|f| f.into_value())
                        .map_err(|e| throw(&ctx, e)),
                    Slot::Value(v) => to_js(&ctx, v),
                }
            },
        )?,
    )?;
    // `k in self`.
    host.set(
        "has",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, oid: String, name: String| {
            check_fatal(&ctx)?;
            let found = with_exec(|e| e.txn.lookup(&oid, &name)).map_err(|e| throw(&ctx, e))?;
            Ok::<_, rquickjs::Error>(found.is_some())
        })?,
    )?;
    // `send(oid, k, ...)`: the compiled method if `k` is one in `oid`'s chain, else undefined
    // (the prelude then asks `send`, which knows setters, `clone`, `doesNotUnderstand_`).
    host.set(
        "method",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, oid: String, name: String| -> rquickjs::Result<rquickjs::Value<'js>> {
                check_fatal(&ctx)?;
                let found = with_exec(|e| e.txn.lookup(&oid, &name)).map_err(|e| throw(&ctx, e))?;
                match found.as_deref().map(|h| (h, &h.slots[&name])) {
                    Some((holder, Slot::Method(m))) => compile(&ctx, &holder.oid, &name, &m.source)
                        .map(|f| f.into_value())
                        .map_err(|e| throw(&ctx, e)),
                    _ => Ok(rquickjs::Value::new_undefined(ctx)),
                }
            },
        )?,
    )?;
    // A method call made in JavaScript begins (`enter`), returns (`leave`) or throws (`fail`,
    // which throws the error the caller sees).
    host.set(
        "enter",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, oid: String, name: String| {
            check_fatal(&ctx)?;
            let depth = with_exec(|e| e.stack.len());
            enter((Rc::from(oid), Rc::from(name))).map_err(|e| throw(&ctx, e))?;
            Ok::<_, rquickjs::Error>(depth)
        })?,
    )?;
    // The number of the call site (receiver, selector) in this operation, for `enterSite`; -1
    // when an operation has numbered too many.
    host.set(
        "site",
        Function::new(ctx.clone(), |oid: String, name: String| {
            with_exec(|e| {
                let key = format!("{oid}\u{0}{name}");
                let n = match e.site_numbers.get(&key) {
                    Some(&n) => n,
                    None if e.sites.len() < SITES => {
                        let n = e.sites.len() as u32;
                        e.sites.push((Rc::from(oid), Rc::from(name)));
                        e.site_numbers.insert(key, n);
                        n
                    }
                    None => return -1.0,
                };
                (e.epoch * SITES as u64 + u64::from(n)) as f64
            })
        })?,
    )?;
    // `enter` by site number: the depth, or -1 for a number not of this operation (the caller
    // then enters by name).
    host.set(
        "enterSite",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, site: f64| {
            check_fatal(&ctx)?;
            let found = with_exec(|e| {
                let n = site as u64;
                let frame = e.sites.get((n % SITES as u64) as usize)?;
                (site >= 0.0 && n / SITES as u64 == e.epoch).then(|| (e.stack.len(), frame.clone()))
            });
            match found {
                Some((depth, frame)) => {
                    enter(frame).map_err(|e| throw(&ctx, e))?;
                    Ok::<_, rquickjs::Error>(depth as f64)
                }
                None => Ok(-1.0),
            }
        })?,
    )?;
    // Both put the stack back to where `enter` found it, whatever happened in between.
    host.set(
        "leave",
        Function::new(ctx.clone(), |depth: usize| {
            with_exec(|e| {
                e.stack.truncate(depth);
                e.pending = None;
            })
        })?,
    )?;
    host.set(
        "fail",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>,
             oid: String,
             name: String,
             thrown: rquickjs::Value<'js>,
             depth: usize| {
                // Read what was thrown (its getters run as the callee) before the callee's
                // frame goes.
                let (message, stack) = match thrown
                    .as_object()
                    .and_then(|o| rquickjs::Exception::from_object(o.clone()))
                {
                    Some(ex) => (
                        ex.message().unwrap_or_default(),
                        ex.stack().unwrap_or_default(),
                    ),
                    None => (thrown_text(&thrown), String::new()),
                };
                with_exec(|e| e.stack.truncate(depth));
                Err::<(), _>(throw(&ctx, translate(&oid, &name, &message, &stack)))
            },
        )?,
    )?;
    host.set(
        "set",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, oid: String, name: String, value: rquickjs::Value<'js>| {
                check_fatal(&ctx)?;
                check_assigner(&ctx, &oid, &name)?;
                let value = primitive_json(&ctx, &value)?;
                with_exec(|e| e.txn.set_slot(&oid, &name, Slot::Value(value)))
                    .map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    host.set(
        "setText",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, oid: String, name: String, value: String| {
                check_fatal(&ctx)?;
                check_assigner(&ctx, &oid, &name)?;
                // A value over the slot limit is refused before it is parsed at all.
                let limit = with_exec(|e| e.limits.budget.slot_bytes);
                if value.len() > limit {
                    return Err(throw(
                        &ctx,
                        TelosError::LimitExceeded(format!(
                            "slot size limit: {oid}.{name} would hold {} bytes, more than {limit} bytes (max_slot_kib)",
                            value.len()
                        )),
                    ));
                }
                let value = parse_json(&ctx, &value)?;
                with_exec(|e| e.txn.set_slot(&oid, &name, Slot::Value(value)))
                    .map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    host.set(
        "send",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, oid: String, selector: String, args: String| {
                check_fatal(&ctx)?;
                let args = match parse_json(&ctx, &args)? {
                    Json::Array(a) => a,
                    other => vec![other],
                };
                let value = dispatch(&ctx, &oid, &selector, args).map_err(|e| throw(&ctx, e))?;
                Ok::<_, rquickjs::Error>(value.to_string())
            },
        )?,
    )?;
    host.set(
        "clone",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, oid: String, slots: String| {
            check_fatal(&ctx)?;
            let slots = slots_arg(Some(&parse_json(&ctx, &slots)?)).map_err(|e| throw(&ctx, e))?;
            with_exec(|e| e.txn.clone_object(&oid, slots)).map_err(|e| throw(&ctx, e))
        })?,
    )?;
    host.set(
        "current",
        Function::new(ctx.clone(), || {
            with_exec(|e| {
                e.stack
                    .last()
                    .map(|(r, _)| r.to_string())
                    .unwrap_or_default()
            })
        })?,
    )?;
    host.set(
        "log",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, text: String| {
            check_fatal(&ctx)?;
            let over = with_exec(|e| {
                e.log_bytes += text.len();
                if e.log_bytes > e.limits.output_bytes {
                    Some(e.limits.output_bytes)
                } else {
                    e.logs.push(text);
                    None
                }
            });
            match over {
                Some(limit) => {
                    let err = TelosError::LimitExceeded(format!(
                        "log output passed the output limit of {limit} bytes"
                    ));
                    with_exec(|e| e.fatal = Some(err.clone()));
                    Err(throw(&ctx, err))
                }
                None => Ok(()),
            }
        })?,
    )?;
    Ok(host)
}
