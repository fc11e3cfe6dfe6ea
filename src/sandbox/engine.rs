//! One script thread's QuickJS runtime: builds the locked-down context, runs a top-level
//! operation to its end (collecting garbage, re-running once after running out of memory), and
//! hands back its outcome with the commit still on its way.

use std::cell::Cell;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;
use rquickjs::{Context, Ctx, Function, Object, Persistent, Runtime};
use serde_json::{Value as Json, json};

use crate::error::{Result, TelosError};
use crate::object::{Method, Slot, validate_slot_name};
use crate::world::{CommitError, Committed, Txn, World};

use super::compile::compile;
use super::host::host_object;
use super::limits::Limits;
use super::op::{Op, Outcome};
use super::send::dispatch;
use super::state::{COMPILED, DEADLINE, DECODE, EPOCH, EXEC, Exec, HARDEN, INVOKE, with_exec};

/// An operation that has run; its writes may still be on their way to disk.
#[derive(Debug)]
pub struct Ran {
    pub outcome: Outcome,
    /// The commit of a `Done` outcome that wrote something, until it is durable.
    pub durable: Option<Committed>,
}

impl Ran {
    /// The outcome once its writes are durable; a failed write fails the operation.
    pub fn wait_blocking(self) -> Outcome {
        match self.durable {
            None => self.outcome,
            Some(c) => settle(self.outcome, c.wait_blocking()),
        }
    }

    /// [`Ran::wait_blocking`] for async callers.
    pub async fn wait(self) -> Outcome {
        match self.durable {
            None => self.outcome,
            Some(c) => settle(self.outcome, c.wait().await),
        }
    }
}

pub(super) fn settle(outcome: Outcome, written: Result<Vec<crate::world::Change>>) -> Outcome {
    match (outcome, written) {
        (Outcome::Done { logs, .. }, Err(error)) => Outcome::Failed { error, logs },
        (outcome, _) => outcome,
    }
}

/// The JavaScript side of the bridge (`prelude.js`). Receives the host functions, defines
/// `send`, `clone` and `log` as globals, and answers `invoke(fn, oid, argsJson)` for the host to
/// call methods with.
pub(super) const PRELUDE: &str = include_str!("prelude.js");

/// Operations between two garbage collections of a script thread's heap.
pub(super) const GC_EVERY: u32 = 64;

/// One script thread's QuickJS runtime.
pub struct Engine {
    world: Arc<World>,
    limits: Limits,
    /// Jobs were left queued that could not be run or dropped: the thread must make a new
    /// engine before the next operation.
    spoiled: Cell<bool>,
    /// Operations since the last garbage collection (see [`GC_EVERY`]).
    since_gc: Cell<u32>,
    // Field order matters: the context must go before the runtime.
    ctx: Context,
    rt: Runtime,
}

impl Engine {
    pub fn new(world: Arc<World>, limits: Limits) -> anyhow::Result<Engine> {
        let rt = Runtime::new()?;
        rt.set_memory_limit(limits.heap_bytes);
        rt.set_max_stack_size(limits.stack_bytes);
        rt.set_interrupt_handler(Some(Box::new(|| {
            DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() >= t))
        })));
        let ctx = Context::full(&rt)?;
        ctx.with(|ctx| -> anyhow::Result<()> {
            let host = host_object(&ctx).map_err(|e| anyhow::anyhow!("host functions: {e}"))?;
            let prelude: Function = ctx
                .eval(PRELUDE)
                .map_err(|e| anyhow::anyhow!("prelude: {e}"))?;
            let exported: Object = prelude
                .call((host,))
                .map_err(|e| anyhow::anyhow!("prelude: {e}"))?;
            let invoke: Function = exported
                .get("invoke")
                .map_err(|e| anyhow::anyhow!("prelude: {e}"))?;
            let harden: Function = exported
                .get("harden")
                .map_err(|e| anyhow::anyhow!("prelude: {e}"))?;
            let decode: Function = exported
                .get("decode")
                .map_err(|e| anyhow::anyhow!("prelude: {e}"))?;
            INVOKE.with(|i| *i.borrow_mut() = Some(Persistent::save(&ctx, invoke)));
            DECODE.with(|d| *d.borrow_mut() = Some(Persistent::save(&ctx, decode)));
            HARDEN.with(|h| *h.borrow_mut() = Some(Persistent::save(&ctx, harden)));
            Ok(())
        })?;
        let capacity = NonZeroUsize::new(limits.cache_capacity.max(1)).expect("max(1)");
        COMPILED.with(|c| *c.borrow_mut() = Some(LruCache::new(capacity)));
        Ok(Engine {
            world,
            limits,
            spoiled: Cell::new(false),
            since_gc: Cell::new(0),
            ctx,
            rt,
        })
    }

    /// Runs one top-level operation on `target` to its end, committing it if it succeeds, and
    /// waits until its writes are durable.
    pub fn run(&self, target: &str, op: &Op) -> Outcome {
        self.start(target, op).wait_blocking()
    }

    /// Runs one top-level operation on `target` to its end and queues its writes for the
    /// committer: the script thread can go on with the next operation while they are written
    /// (group commit). The outcome holds until [`Ran`] says the writes are durable.
    pub fn start(&self, target: &str, op: &Op) -> Ran {
        let outcome = |outcome| Ran {
            outcome,
            durable: None,
        };
        // One wall-time budget for the whole operation: a re-run never gets a fresh one.
        let deadline = Instant::now() + self.limits.wall_time;
        let attempts = self.limits.max_attempts.max(1);
        for attempt in 0..attempts {
            if attempt > 0 && Instant::now() >= deadline {
                return outcome(Outcome::Failed {
                    error: TelosError::LimitExceeded(format!(
                        "{target}: wall time limit of {} ms used up by {attempt} runs that conflicted with other messages",
                        self.limits.wall_time.as_millis()
                    )),
                    logs: Vec::new(),
                });
            }
            let garbage = self.since_gc.get() > 0;
            let (result, exec) = self.attempt(target, op, deadline);
            if exec.out_of_memory && garbage {
                tracing::debug!(
                    target,
                    "out of memory over uncollected garbage: running again"
                );
                continue;
            }
            let Exec {
                txn, logs, miss, ..
            } = exec;
            let still_current = || txn.still_current().unwrap_or(true);
            if let Some(miss) = miss {
                if still_current() {
                    return outcome(Outcome::Miss { miss, logs });
                }
            } else {
                match result {
                    Ok(value) if op.is_dry() => return outcome(Outcome::Done { value, logs }),
                    Ok(value) => match txn.commit() {
                        Ok(Committed::Now(_)) => return outcome(Outcome::Done { value, logs }),
                        Ok(Committed::Pending(durable)) => {
                            return Ran {
                                outcome: Outcome::Done { value, logs },
                                durable: Some(Committed::Pending(durable)),
                            };
                        }
                        Err(CommitError::Stale) => {}
                        Err(CommitError::Failed(error)) => {
                            return outcome(Outcome::Failed { error, logs });
                        }
                    },
                    Err(error) => {
                        if still_current() {
                            return outcome(Outcome::Failed { error, logs });
                        }
                    }
                }
            }
            tracing::debug!(
                target,
                attempt,
                "read set went stale; running the operation again"
            );
        }
        outcome(Outcome::Failed {
            error: TelosError::Conflict(format!(
                "{target}: gave up after {attempts} attempts, other messages kept changing the objects it reads"
            )),
            logs: Vec::new(),
        })
    }

    /// Whether this engine must be replaced before it runs another operation.
    pub fn spoiled(&self) -> bool {
        self.spoiled.get()
    }

    /// Past the deadline every job is interrupted as soon as it starts; a job that keeps
    /// queueing others is bounded here, and if some remain the engine is replaced.
    fn discard_jobs(&self) {
        for _ in 0..10_000 {
            if !self.rt.is_job_pending() {
                return;
            }
            let _ = self.rt.execute_pending_job();
        }
        if self.rt.is_job_pending() {
            tracing::warn!("promise jobs outlived their message: replacing the script engine");
            self.spoiled.set(true);
        }
    }

    fn attempt(&self, target: &str, op: &Op, deadline: Instant) -> (Result<Json>, Exec) {
        EXEC.with(|e| {
            *e.borrow_mut() = Some(Exec {
                txn: Txn::with_budget(self.world.clone(), self.limits.budget),
                limits: self.limits,
                stack: Vec::new(),
                sites: Vec::new(),
                site_numbers: HashMap::new(),
                epoch: EPOCH.with(|n| {
                    n.set(n.get() + 1);
                    n.get()
                }),
                logs: Vec::new(),
                log_bytes: 0,
                miss: None,
                fatal: None,
                pending: None,
                out_of_memory: false,
                compiling: false,
                stack_base: stack_address(),
            })
        });
        DEADLINE.with(|d| d.set(Some(deadline)));
        let result = self.ctx.with(|ctx| run_op(&ctx, target, op));
        // Promise jobs a method queued belong to its message: they run now, under the same
        // deadline and transaction, so nothing it started can run during a later message.
        let mut result = result;
        // Jobs act for the message's receiver (`self.x = v` in a callback writes it).
        with_exec(|x| x.stack.push((Rc::from(target), Rc::from("<promise job>"))));
        while self.rt.is_job_pending() {
            if let Err(e) = self.rt.execute_pending_job() {
                let message = e.0.with(|ctx| {
                    let caught = ctx.catch();
                    caught
                        .as_exception()
                        .and_then(|x| x.message())
                        .unwrap_or_else(|| "an exception".to_string())
                });
                if result.is_ok() && with_exec(|x| x.fatal.is_none()) {
                    result = Err(TelosError::MethodError(format!(
                        "{target}: a promise job failed: {message}"
                    )));
                }
                if Instant::now() >= deadline {
                    with_exec(|x| {
                        x.fatal.get_or_insert(TelosError::LimitExceeded(format!(
                            "{target}: promise jobs ran past the wall time limit of {} ms",
                            self.limits.wall_time.as_millis()
                        )));
                    });
                    self.discard_jobs();
                    break;
                }
            }
        }
        with_exec(|x| x.stack.pop());
        DEADLINE.with(|d| d.set(None));
        let exec = EXEC.with(|e| e.borrow_mut().take()).expect("set above");
        // Reference counting frees most garbage at once; cycles wait for a collection, which
        // walks the whole heap (built-ins included), so it runs every few operations and after
        // a failure rather than after every message. An operation that ran out of memory over
        // uncollected garbage is run again after the collection (see `start`).
        let since = self.since_gc.get() + 1;
        if since >= GC_EVERY || result.is_err() || exec.fatal.is_some() {
            self.rt.run_gc();
            self.since_gc.set(0);
        } else {
            self.since_gc.set(since);
        }
        // A limit hit anywhere in the call tree fails the whole operation, even if a method
        // caught the exception.
        let result = match &exec.fatal {
            Some(fatal) => Err(fatal.clone()),
            None => result,
        };
        (result, exec)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Persistent handles must be released while their runtime is alive.
        COMPILED.with(|c| c.borrow_mut().take());
        INVOKE.with(|i| i.borrow_mut().take());
        DECODE.with(|d| d.borrow_mut().take());
        HARDEN.with(|h| h.borrow_mut().take());
    }
}

pub(super) fn run_op(ctx: &Ctx<'_>, target: &str, op: &Op) -> Result<Json> {
    match op {
        Op::Send { selector, args } => dispatch(ctx, target, selector, args.clone()),
        Op::Query { selector, args } => {
            let value = dispatch(ctx, target, selector, args.clone())?;
            let written = with_exec(|e| e.txn.written());
            if !written.is_empty() {
                return Err(TelosError::MethodError(format!(
                    "{target}.{selector} runs read-only but changed {}",
                    written.join(", ")
                )));
            }
            Ok(value)
        }
        Op::Clone { slots } => {
            let oid = with_exec(|e| e.txn.clone_object(target, slots.clone()))?;
            Ok(json!({ "oid": oid }))
        }
        Op::SetValue { name, value } => {
            with_exec(|e| e.txn.set_slot(target, name, Slot::Value(value.clone())))?;
            Ok(Json::Null)
        }
        Op::SystemSet { name, value } => {
            with_exec(|e| {
                e.txn.set_system();
                e.txn.set_slot(target, name, Slot::Value(value.clone()))
            })?;
            Ok(Json::Null)
        }
        Op::SetMethod { name, source } => {
            validate_slot_name(name)?;
            with_exec(|e| e.txn.require(target))?;
            compile(ctx, target, name, source)?;
            let old = with_exec(|e| e.txn.require(target))?;
            let method = Method::new(source.clone(), "user").replacing(old.slots.get(name));
            with_exec(|e| e.txn.set_slot(target, name, Slot::Method(method)))?;
            Ok(Json::Null)
        }
        Op::Check { name, source } => {
            validate_slot_name(name)?;
            compile(ctx, target, name, source)?;
            Ok(Json::Null)
        }
        Op::Trial { name, source, args } => {
            validate_slot_name(name)?;
            with_exec(|e| e.txn.require(target))?;
            compile(ctx, target, name, source)?;
            let method = Method::new(source.clone(), "trial");
            with_exec(|e| e.txn.set_slot(target, name, Slot::Method(method)))?;
            let value = dispatch(ctx, target, name, args.clone())?;
            let outside: Vec<String> = with_exec(|e| e.txn.written())
                .into_iter()
                .filter(|o| o != target)
                .collect();
            if !outside.is_empty() {
                return Err(TelosError::MethodError(format!(
                    "the trial changed other objects ({}): a new method may only change its receiver",
                    outside.join(", ")
                )));
            }
            Ok(value)
        }
        Op::Install { name, method } => {
            validate_slot_name(name)?;
            compile(ctx, target, name, &method.source)?;
            let old = with_exec(|e| e.txn.require(target))?;
            let method = method.clone().replacing(old.slots.get(name));
            with_exec(|e| e.txn.set_slot(target, name, Slot::Method(method)))?;
            Ok(Json::Null)
        }
        Op::Rollback { name } => {
            let obj = with_exec(|e| e.txn.require(target))?;
            let Some(Slot::Method(current)) = obj.slots.get(name) else {
                return Err(TelosError::NotFound(format!(
                    "{target} has no method {name}"
                )));
            };
            let Some(previous) = current.rolled_back() else {
                return Err(TelosError::Conflict(format!(
                    "{target}.{name} has no earlier version to roll back to"
                )));
            };
            compile(ctx, target, name, &previous.source)?;
            with_exec(|e| e.txn.set_slot(target, name, Slot::Method(previous)))?;
            Ok(Json::Null)
        }
        Op::RemoveSlot { name } => {
            with_exec(|e| e.txn.remove_slot(target, name))?;
            Ok(Json::Null)
        }
        Op::Delete => {
            with_exec(|e| e.txn.delete(target))?;
            Ok(Json::Null)
        }
    }
}

/// The address of a local: where the native stack is now.
#[inline(never)]
pub(super) fn stack_address() -> usize {
    let here = 0u8;
    std::hint::black_box(&here) as *const u8 as usize
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use std::time::Duration;

    use crate::store::{Store, StoreConfig};

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::embedded(dir.path().join("data"))).unwrap();
        let world = World::new(store).unwrap();
        let limits = Limits {
            wall_time: Duration::from_secs(2),
            ..Limits::default()
        };
        (dir, Engine::new(world, limits).unwrap())
    }

    fn send(e: &Engine, target: &str, selector: &str, args: Json) -> Outcome {
        let args = args.as_array().cloned().unwrap_or_default();
        e.run(
            target,
            &Op::Send {
                selector: selector.into(),
                args,
            },
        )
    }

    fn value(o: Outcome) -> Json {
        match o {
            Outcome::Done { value, .. } => value,
            other => panic!("expected a value, got {other:?}"),
        }
    }

    fn object(e: &Engine, slots: Json) -> String {
        let slots = slots.as_object().cloned().unwrap();
        let v = value(e.run("genesis_obj", &Op::Clone { slots }));
        v["oid"].as_str().unwrap().to_string()
    }

    fn method(e: &Engine, oid: &str, name: &str, source: &str) {
        value(e.run(
            oid,
            &Op::SetMethod {
                name: name.into(),
                source: source.into(),
            },
        ));
    }

    #[test]
    fn a_value_slot_answers_its_getter_and_a_setter_writes_it() {
        let (_dir, e) = engine();
        let o = object(&e, json!({"w": 3}));
        assert_eq!(value(send(&e, &o, "w", json!([]))), json!(3));
        value(send(&e, &o, "w_", json!([5])));
        assert_eq!(value(send(&e, &o, "w", json!([]))), json!(5));
    }

    #[test]
    fn a_method_reads_slots_along_the_chain_and_sends_to_self() {
        let (_dir, e) = engine();
        let parent = object(&e, json!({"h": 4}));
        method(
            &e,
            &parent,
            "area",
            "function area(self) { return self.w * self.h; }",
        );
        method(
            &e,
            &parent,
            "twice",
            "function twice(self) { return 2 * self.area(); }",
        );
        let child = value(e.run(
            &parent,
            &Op::Clone {
                slots: json!({"w": 3}).as_object().cloned().unwrap(),
            },
        ))["oid"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(value(send(&e, &child, "twice", json!([]))), json!(24));
    }

    #[test]
    fn a_message_nothing_understands_is_a_miss_naming_receiver_and_selector() {
        let (_dir, e) = engine();
        let o = object(&e, json!({}));
        match send(&e, &o, "perimeter", json!([1])) {
            Outcome::Miss { miss, .. } => {
                assert_eq!(miss.receiver, o);
                assert_eq!(miss.selector, "perimeter");
                assert_eq!(miss.args, vec![json!(1)]);
            }
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    #[test]
    fn a_method_that_throws_part_way_leaves_nothing_changed() {
        let (_dir, e) = engine();
        let a = object(&e, json!({"n": 1}));
        let b = object(&e, json!({"n": 1}));
        let source = format!(
            "function spoil(self) {{ self.n = 2; send(\"{b}\", \"n_\", 2); throw new Error(\"no\"); }}"
        );
        method(&e, &a, "spoil", &source);
        assert!(matches!(
            send(&e, &a, "spoil", json!([])),
            Outcome::Failed { .. }
        ));
        assert_eq!(value(send(&e, &a, "n", json!([]))), json!(1));
        assert_eq!(value(send(&e, &b, "n", json!([]))), json!(1));
    }

    #[test]
    fn a_method_that_never_ends_is_stopped_by_the_wall_time_limit() {
        let (_dir, e) = engine();
        let o = object(&e, json!({"n": 1}));
        method(&e, &o, "spin", "function spin(self) { for (;;) {} }");
        match send(&e, &o, "spin", json!([])) {
            Outcome::Failed { error, .. } => {
                assert_eq!(error.code(), "limit_exceeded", "{error}")
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        // The engine serves the next message.
        assert_eq!(value(send(&e, &o, "n", json!([]))), json!(1));
    }

    #[test]
    fn method_references_enter_the_call_stack_as_their_receiver() {
        let (_dir, e) = engine();
        let a = object(&e, json!({"n": 1}));
        let b = object(&e, json!({"n": 10}));
        method(
            &e,
            &a,
            "bump",
            "function bump(self) { self.n = self.n + 1; return self.n; }",
        );
        method(
            &e,
            &b,
            "bump",
            "function bump(self) { self.n = self.n + 1; return self.n; }",
        );
        // Each reference writes its own receiver, however the calls interleave and however
        // many writes (each of which makes fresh references) come between them.
        method(
            &e,
            &a,
            "both",
            &format!(
                "function both(self) {{ const o = send('{b}', 'n') === 10 ? null : 0; let s = 0; \
                 for (let i = 0; i < 3; i++) {{ s += self.bump(); s += send('{b}', 'bump'); }} return [s, o]; }}"
            ),
        );
        assert_eq!(
            value(send(&e, &a, "both", json!([]))),
            json!([2 + 3 + 4 + 11 + 12 + 13, null])
        );
        assert_eq!(value(send(&e, &a, "n", json!([]))), json!(4));
        assert_eq!(value(send(&e, &b, "n", json!([]))), json!(13));
        // A source that is not just a function (here a call returning one, which could keep
        // a reference, or anything else, past its message) is refused, naming the rule.
        let kept = e.run(
            &a,
            &Op::SetMethod {
                name: "kept".into(),
                source: "(() => { let r = null; return function kept(self) { return 1; }; })()"
                    .into(),
            },
        );
        match kept {
            Outcome::Failed { error, .. } => {
                assert!(
                    error.to_string().contains("must be a function expression"),
                    "{error}"
                )
            }
            other => panic!("expected the source to be refused, got {other:?}"),
        }
        // Nor can a line terminator JavaScript honours (and `\n` alone would not) hide one.
        for end in ["\r", "\u{2028}", "\u{2029}"] {
            let source = format!(
                "//{end}(function(){{let n=0;return function g(self){{return ++n}}//{end}}})()"
            );
            let refused = e.run(
                &a,
                &Op::SetMethod {
                    name: "g".into(),
                    source,
                },
            );
            assert!(
                matches!(&refused, Outcome::Failed { error, .. } if error.to_string().contains("must be a function expression")),
                "{end:?}: {refused:?}"
            );
        }
        // Comments around a function are fine.
        method(
            &e,
            &a,
            "noted",
            "// the answer\nfunction noted(self) { return 42; } /* end */",
        );
        assert_eq!(value(send(&e, &a, "noted", json!([]))), json!(42));
    }
}
