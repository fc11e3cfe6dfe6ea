//! The method runtime: QuickJS (rquickjs) on script threads, one runtime per thread.
//!
//! A top-level operation runs here from start to finish: its whole synchronous call tree (`self.m()`,
//! `send(...)`, nested to any depth, cycles included) executes on this thread inside one
//! [`Txn`]. JavaScript sees objects through proxies: `self.x` looks `x` up along the parent chain,
//! `self.x = v` writes the receiver's slot, `self.m(a)` sends a message. A send from one method
//! to another runs in JavaScript (the prelude's `call`): the host hands out the compiled method
//! and keeps the call stack, the limits and the error translation. Primitives cross between Rust
//! and JavaScript as values, anything else as JSON text; references to objects are
//! `{"$ref": oid}` in JSON and proxies in JavaScript.
//!
//! Limits, all per top-level operation: wall time (an interrupt JavaScript cannot catch), heap,
//! stack, output size and call depth. A limit, once hit, is sticky: every later host call of the
//! same operation fails again, so a `try`/`catch` cannot swallow it.
//!
//! The globals a method sees are the ECMAScript built-ins plus `send`, `clone` and `log`: no
//! file, network, process, environment, module or timer access exists in this runtime at all.

use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use rquickjs::context::EvalOptions;
use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Object, Persistent, Runtime};
use serde_json::{Value as Json, json};

use crate::error::{Result, TelosError};
use crate::object::{Method, Slot, validate_slot_name};
use crate::world::{CommitError, Committed, Txn, World, slots_arg};

/// Per-operation limits of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub wall_time: Duration,
    pub heap_bytes: usize,
    pub stack_bytes: usize,
    /// Largest result and largest total `log` output, in bytes of JSON/text.
    pub output_bytes: usize,
    /// Deepest chain of nested sends.
    pub max_depth: usize,
    /// Compiled methods kept per script thread.
    pub cache_capacity: usize,
    /// What one top-level operation may write (bytes, slot size, objects created).
    pub budget: crate::world::Budget,
    /// Runs of one operation whose reads went stale before it gives up (all within
    /// `wall_time`).
    pub max_attempts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_time: Duration::from_secs(2),
            heap_bytes: 64 << 20,
            stack_bytes: 512 << 10,
            output_bytes: 1 << 20,
            max_depth: 100,
            cache_capacity: 4096,
            budget: crate::world::Budget::default(),
            max_attempts: 32,
        }
    }
}

/// What a top-level operation asks of its target object.
#[derive(Debug, Clone)]
pub enum Op {
    /// Send a message.
    Send {
        selector: String,
        args: Vec<Json>,
    },
    /// Clone the target, with optional initial slots.
    Clone {
        slots: serde_json::Map<String, Json>,
    },
    /// Set a value slot.
    SetValue {
        name: String,
        value: Json,
    },
    /// Set a value slot as the server itself (the admin endpoints): may write the managers'
    /// policy slots, which no message may.
    SystemSet {
        name: String,
        value: Json,
    },
    /// Install (or replace) a method; its source is compiled first.
    SetMethod {
        name: String,
        source: String,
    },
    RemoveSlot {
        name: String,
    },
    Delete,
    /// Send a message that may change nothing (background work such as a Retrievable's
    /// `to_text_chunks`): any write fails it, nothing is committed, and a miss is an error
    /// rather than a kernel run.
    Query {
        selector: String,
        args: Vec<Json>,
    },
    /// Compile a method without installing it (the kernel's review).
    Check {
        name: String,
        source: String,
    },
    /// Run a method that is not installed, on a scratch copy of the target, with `args`.
    /// Nothing is committed; writing to any object but the target fails the trial.
    Trial {
        name: String,
        source: String,
        args: Vec<Json>,
    },
    /// Install a method with its metadata; a replaced version joins the history.
    Install {
        name: String,
        method: Method,
    },
    /// Make the previous version of a method current again.
    Rollback {
        name: String,
    },
}

impl Op {
    /// Operations that never commit.
    fn is_dry(&self) -> bool {
        matches!(self, Op::Check { .. } | Op::Trial { .. } | Op::Query { .. })
    }

    /// The operation's name and the selector or slot it concerns, for logs and spans.
    pub fn describe(&self) -> (&'static str, &str) {
        match self {
            Op::Send { selector, .. } => ("send", selector),
            Op::Query { selector, .. } => ("query", selector),
            Op::Clone { .. } => ("clone", ""),
            Op::SetValue { name, .. } => ("set_value", name),
            Op::SystemSet { name, .. } => ("system_set", name),
            Op::SetMethod { name, .. } => ("set_method", name),
            Op::RemoveSlot { name } => ("remove_slot", name),
            Op::Delete => ("delete", ""),
            Op::Check { name, .. } => ("check", name),
            Op::Trial { name, .. } => ("trial", name),
            Op::Install { name, .. } => ("install", name),
            Op::Rollback { name } => ("rollback", name),
        }
    }
}

/// A message nothing in the chain understood: the generative kernel's business.
#[derive(Debug, Clone)]
pub struct Miss {
    pub receiver: String,
    pub selector: String,
    pub args: Vec<Json>,
}

/// How a top-level operation ended. Nothing is written unless it is `Done`.
#[derive(Debug)]
pub enum Outcome {
    Done {
        value: Json,
        logs: Vec<String>,
    },
    Failed {
        error: TelosError,
        logs: Vec<String>,
    },
    /// Some object in the call tree did not understand a message and had no
    /// `doesNotUnderstand_`; nothing was written.
    Miss {
        miss: Miss,
        logs: Vec<String>,
    },
}

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

fn settle(outcome: Outcome, written: Result<Vec<crate::world::Change>>) -> Outcome {
    match (outcome, written) {
        (Outcome::Done { logs, .. }, Err(error)) => Outcome::Failed { error, logs },
        (outcome, _) => outcome,
    }
}

/// The state of the operation running on this thread, reached by the host functions.
struct Exec {
    txn: Txn,
    limits: Limits,
    /// (receiver, selector) of each active method, outermost first.
    stack: Vec<(String, String)>,
    logs: Vec<String>,
    log_bytes: usize,
    miss: Option<Miss>,
    /// A limit was hit: everything from now on fails with this.
    fatal: Option<TelosError>,
    /// The native stack address where the operation began (nested sends are measured from it).
    stack_base: usize,
    /// The typed error behind the exception a host function threw last.
    pending: Option<TelosError>,
    /// The heap limit was hit.
    out_of_memory: bool,
    /// A method's source is being evaluated: whatever it runs may not touch the world.
    compiling: bool,
}

/// Compiled methods of one script thread: (holder, name) → (source, function).
type MethodCache = LruCache<String, (String, Persistent<Function<'static>>)>;

thread_local! {
    static EXEC: RefCell<Option<Exec>> = const { RefCell::new(None) };
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Compiled methods by holder and name, with the source they were compiled from.
    static COMPILED: RefCell<Option<MethodCache>> =
        const { RefCell::new(None) };
    static INVOKE: RefCell<Option<Persistent<Function<'static>>>> = const { RefCell::new(None) };
    /// Deep-freezes a value (the prelude's `harden`): compiled methods are frozen so that no
    /// state can be kept on a function object from one message to the next.
    static HARDEN: RefCell<Option<Persistent<Function<'static>>>> = const { RefCell::new(None) };
    /// The prelude's `decode`: JSON text with `{"$ref": oid}` references to a value with proxies.
    static DECODE: RefCell<Option<Persistent<Function<'static>>>> = const { RefCell::new(None) };
}

fn with_exec<R>(f: impl FnOnce(&mut Exec) -> R) -> R {
    EXEC.with(|e| f(e.borrow_mut().as_mut().expect("called inside an operation")))
}

/// The JavaScript side of the bridge. Receives the host functions, defines `send`, `clone` and
/// `log` as globals, and answers `invoke(fn, oid, argsJson)` for the host to call methods with.
const PRELUDE: &str = r#"
(function (host) {
  "use strict";
  const oids = new WeakMap();
  const encode = (v) => {
    const s = JSON.stringify(v, (k, x) =>
      (x !== null && typeof x === "object" && oids.has(x)) ? { "$ref": oids.get(x) } : x);
    return s === undefined ? "null" : s;
  };
  const revive = (k, x) =>
    (x !== null && typeof x === "object" && !Array.isArray(x) && typeof x.$ref === "string"
      && Object.keys(x).length === 1) ? ref(x.$ref) : x;
  // The reviver is slow; most values hold no reference.
  const decode = (s) => s.includes('"$ref"') ? JSON.parse(s, revive) : JSON.parse(s);
  const idOf = (t) => {
    if (typeof t === "string") return t;
    if (t !== null && typeof t === "object" && oids.has(t)) return oids.get(t);
    throw new TypeError("expected an object or an oid, got " + String(t));
  };
  // Values cross between methods as copies, the way JSON would carry them: primitives as
  // they are (non-finite numbers, undefined, functions and symbols as null), references as
  // the same proxy, anything else through JSON text.
  const copy = (v) => {
    switch (typeof v) {
      case "string": case "boolean": return v;
      case "number": return Number.isFinite(v) ? (v === 0 ? 0 : v) : null;
      case "object": return v === null ? null : (oids.has(v) ? v : decode(encode(v)));
      case "bigint": return decode(encode(v));
      default: return null;
    }
  };
  // A send to a method runs here, in JavaScript: the host looks the method up (compiled once
  // per script thread) and keeps the call stack, limits and error translation. Arguments are
  // copied as the caller, the result as the callee.
  const call = (oid, k, f, args, self) => {
    const a = args.length === 0 ? args : args.map(copy);
    const depth = host.enter(oid, k);
    let out;
    try {
      out = copy(f(self, ...a));
    } catch (e) {
      host.fail(oid, k, e, depth);
      throw e;
    }
    host.leave(depth);
    return out;
  };
  // Within a message, what `self.k` found (a primitive, a method, or nothing) is kept per
  // proxy until anything is written: `gen` moves on at every write and every message.
  let gen = 0;
  const MISSING = Object.freeze(Object.create(null));
  // One proxy per object (a reference keeps its identity within a message); bounded.
  const proxies = new Map();
  function ref(oid) {
    let p = proxies.get(oid);
    if (p !== undefined) return p;
    if (proxies.size >= 1024) proxies.clear();
    const found = new Map();
    let at = -1;
    p = new Proxy(Object.create(null), harden({
      get(t, k) {
        if (typeof k !== "string") return undefined;
        if (at !== gen) { found.clear(); at = gen; }
        let r = found.get(k);
        if (r !== undefined) return r === MISSING ? undefined : r;
        r = host.get(oid, k);
        if (typeof r === "function") {
          const f = r;
          r = (...args) => call(oid, k, f, args, p);
        } else if (r !== null && typeof r === "object") {
          return r; // a fresh copy at every read: the caller may change it
        }
        found.set(k, r === undefined ? MISSING : r);
        return r;
      },
      set(t, k, v) {
        k = String(k);
        gen++;
        if ((typeof v === "object" && v !== null) || typeof v === "bigint") host.setText(oid, k, encode(v));
        else host.set(oid, k, copy(v));
        return true;
      },
      has(t, k) { return typeof k === "string" && host.has(oid, k); },
      deleteProperty(t, k) { throw new TypeError("slots are removed over the admin API, not with delete"); },
      defineProperty(t, k) { throw new TypeError("define slots by assignment: self." + String(k) + " = value"); },
      preventExtensions(t) { return false; },
      setPrototypeOf(t, p) { return false; },
    }));
    oids.set(p, oid);
    proxies.set(oid, p);
    return p;
  }
  globalThis.send = (target, selector, ...args) => {
    const oid = idOf(target), s = String(selector);
    const f = host.method(oid, s);
    if (typeof f === "function") return call(oid, s, f, args, ref(oid));
    gen++; // setters, clone and doesNotUnderstand_ may write
    return decode(host.send(oid, s, encode(args)));
  };
  globalThis.clone = (target, slots) => {
    const made = ref(host.clone(target === undefined ? host.current() : idOf(target), encode(slots === undefined ? {} : slots)));
    gen++;
    return made;
  };
  globalThis.log = (...parts) =>
    host.log(parts.map((p) => typeof p === "string" ? p : encode(p)).join(" "));
  // Lockdown: every built-in reachable from the global object (constructors, prototypes,
  // JSON, Math, Reflect, accessors included) is frozen, so no message can change what a later
  // message computes. Methods compiled later are frozen too (see harden below).
  const seen = new WeakSet();
  const harden = (root) => {
    const todo = [root];
    while (todo.length > 0) {
      const o = todo.pop();
      if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) continue;
      seen.add(o);
      Object.freeze(o);
      todo.push(Object.getPrototypeOf(o));
      for (const k of Reflect.ownKeys(o)) {
        const d = Reflect.getOwnPropertyDescriptor(o, k);
        if (d === undefined) continue;
        if ("value" in d) todo.push(d.value);
        if (d.get) todo.push(d.get);
        if (d.set) todo.push(d.set);
      }
    }
    return root;
  };
  // Freezing a prototype makes its data properties read-only for every object that inherits
  // them, so `err.message = m` or `obj.toString = f` would throw (the "override mistake").
  // These common ones become accessors whose setter gives the object an own property.
  const tame = (proto, key) => {
    const d = Reflect.getOwnPropertyDescriptor(proto, key);
    if (d === undefined || !("value" in d) || !d.configurable) return;
    const value = d.value;
    Object.defineProperty(proto, key, {
      get() { return value; },
      set(v) {
        if (this === proto) throw new TypeError("built-ins are frozen: " + String(key));
        Object.defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: d.enumerable,
      configurable: false,
    });
  };
  const errors = [Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError,
    typeof AggregateError === "function" ? AggregateError : Error];
  for (const E of errors) for (const k of ["message", "name", "constructor", "toString"]) tame(E.prototype, k);
  for (const P of [Object.prototype, Array.prototype, Function.prototype, Promise.prototype])
    for (const k of ["constructor", "toString", "valueOf", "toLocaleString", "name"]) tame(P, k);
  // Prototypes reached only through syntax, not through a global name.
  harden(Object.getPrototypeOf(function* () {}));
  harden(Object.getPrototypeOf(async function () {}));
  harden(Object.getPrototypeOf(async function* () {}));
  harden(Object.getPrototypeOf([][Symbol.iterator]()));
  harden(Object.getPrototypeOf(""[Symbol.iterator]()));
  harden(Object.getPrototypeOf(new Map()[Symbol.iterator]()));
  harden(Object.getPrototypeOf(new Set()[Symbol.iterator]()));
  harden(Object.getPrototypeOf(/x/[Symbol.matchAll]("")));
  // Finalizers and weak references would let code of one message run, or observe garbage
  // collection, during a later one: methods get neither.
  delete globalThis.FinalizationRegistry;
  delete globalThis.WeakRef;
  // V8-style stack hooks are context-wide setters that freezing does not disable: through
  // them a method could reach the prelude's functions or run its code in later messages.
  delete Error.prepareStackTrace;
  delete Error.stackTraceLimit;
  delete Error.captureStackTrace;
  harden(globalThis);
  const invoke = (f, oid, argsJson) => {
    gen++; // a new message, or a send the host ran (which may have written)
    return encode(f(ref(oid), ...decode(argsJson)));
  };
  for (const f of [encode, revive, decode, idOf, copy, call, ref, invoke, tame]) harden(f);
  return { invoke, harden, decode };
})
"#;

/// Operations between two garbage collections of a script thread's heap.
const GC_EVERY: u32 = 64;

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
        with_exec(|x| {
            x.stack
                .push((target.to_string(), "<promise job>".to_string()))
        });
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

fn run_op(ctx: &Ctx<'_>, target: &str, op: &Op) -> Result<Json> {
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
fn stack_address() -> usize {
    let here = 0u8;
    std::hint::black_box(&here) as *const u8 as usize
}

/// Sends `selector(args)` to `target` within the current operation.
fn dispatch(ctx: &Ctx<'_>, target: &str, selector: &str, args: Vec<Json>) -> Result<Json> {
    let depth = with_exec(|e| e.stack.len());
    enter(target.to_string(), selector.to_string())?;
    let result = dispatch_inner(ctx, target, selector, args);
    with_exec(|e| e.stack.truncate(depth));
    result
}

/// Pushes a method call onto the operation's stack, after the checks every send passes: a
/// sticky limit, the native stack and the depth limit.
fn enter(target: String, selector: String) -> Result<()> {
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
        e.stack.push((target, selector));
        Ok(())
    })
}

fn dispatch_inner(ctx: &Ctx<'_>, target: &str, selector: &str, args: Vec<Json>) -> Result<Json> {
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

/// Compiles a method's source (cached by holder, name and source).
fn compile<'js>(ctx: &Ctx<'js>, holder: &str, name: &str, source: &str) -> Result<Function<'js>> {
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

fn compile_error(file: &str, err: CaughtError<'_>) -> TelosError {
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
fn position(file: &str, stack: &str) -> Option<(usize, usize)> {
    let at = stack.find(&format!("{file}:"))? + file.len() + 1;
    let mut nums = stack[at..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let line = nums.next()?.parse().ok()?;
    let column = nums.next()?.parse().ok()?;
    Some((line, column))
}

fn call_method(
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
fn runtime_error(receiver: &str, name: &str, err: CaughtError<'_>) -> TelosError {
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
fn thrown_text(v: &rquickjs::Value<'_>) -> String {
    v.as_string()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| format!("{v:?}"))
}

/// The error behind an exception with `message` and `stack` thrown out of `receiver.name`: a
/// limit (made sticky), the typed error a host function threw, or a method error.
fn translate(receiver: &str, name: &str, message: &str, stack: &str) -> TelosError {
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

/// A slot value as JavaScript sees it: primitives directly, anything else through JSON text
/// (and the prelude's `decode` when it holds references).
fn to_js<'js>(ctx: &Ctx<'js>, v: &Json) -> rquickjs::Result<rquickjs::Value<'js>> {
    use rquickjs::Value;
    Ok(match v {
        Json::Null => Value::new_null(ctx.clone()),
        Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
        Json::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Value::new_int(ctx.clone(), i),
            None => Value::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        other => {
            let text = other.to_string();
            if text.contains("\"$ref\"") {
                let decode = DECODE
                    .with(|d| d.borrow().clone())
                    .expect("engine initialised")
                    .restore(ctx)?;
                decode.call((text,))?
            } else {
                ctx.json_parse(text)?
            }
        }
    })
}

/// A primitive JavaScript value (the prelude sends nothing else here) as JSON.
fn primitive_json(ctx: &Ctx<'_>, v: &rquickjs::Value<'_>) -> rquickjs::Result<Json> {
    if let Some(b) = v.as_bool() {
        return Ok(Json::Bool(b));
    }
    if let Some(i) = v.as_int() {
        return Ok(Json::from(i));
    }
    if let Some(f) = v.as_float() {
        // As JSON text would carry it: integral values as integers (and -0 as 0).
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            return Ok(Json::from(f as i64));
        }
        return Ok(serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number));
    }
    if let Some(s) = v.as_string() {
        return Ok(Json::String(s.to_string()?));
    }
    if v.is_null() || v.is_undefined() {
        return Ok(Json::Null);
    }
    Err(throw(
        ctx,
        TelosError::MethodError("value is not JSON-compatible".into()),
    ))
}

/// Throws `err` into JavaScript, remembering the typed error for the host.
fn throw(ctx: &Ctx<'_>, err: TelosError) -> rquickjs::Error {
    let message = err.to_string();
    with_exec(|e| {
        // A budget, once exceeded, fails the whole message even if a method catches it.
        if matches!(err, TelosError::LimitExceeded(_)) {
            e.fatal.get_or_insert(err.clone());
        }
        e.pending = Some(err)
    });
    rquickjs::Exception::throw_message(ctx, &message)
}

fn check_fatal(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let (fatal, compiling) = with_exec(|e| (e.fatal.clone(), e.compiling));
    if compiling {
        return Err(throw(
            ctx,
            TelosError::MethodError(
                "a method's source must be one function: nothing may run while it is compiled"
                    .into(),
            ),
        ));
    }
    match fatal {
        Some(f) => Err(throw(ctx, f)),
        None => Ok(()),
    }
}

fn parse_json(ctx: &Ctx<'_>, text: &str) -> rquickjs::Result<Json> {
    serde_json::from_str(text).map_err(|e| {
        throw(
            ctx,
            TelosError::MethodError(format!("value is not JSON-compatible: {e}")),
        )
    })
}

/// `self.name = v` is for a method of `oid` only: other objects are changed by sending them a
/// setter.
fn check_assigner(ctx: &Ctx<'_>, oid: &str, name: &str) -> rquickjs::Result<()> {
    if with_exec(|e| e.stack.last().is_some_and(|(r, _)| r == oid)) {
        return Ok(());
    }
    let receiver = with_exec(|e| e.stack.last().map(|(r, _)| r.clone()));
    Err(throw(
        ctx,
        TelosError::MethodError(format!(
            "cannot assign {oid}.{name} from a method of {}: send {oid} a setter message ({name}_) instead",
            receiver.unwrap_or_default()
        )),
    ))
}

/// The host functions the prelude wraps. Each checks the sticky limit first.
fn host_object<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
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
            enter(oid, name).map_err(|e| throw(&ctx, e))?;
            Ok::<_, rquickjs::Error>(depth)
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
            with_exec(|e| e.stack.last().map(|(r, _)| r.clone()).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_quickjs_stacks() {
        assert_eq!(position("o1.area", "    at o1.area:3:17\n"), Some((3, 17)));
        assert_eq!(position("o1.area", "no position"), None);
    }
}
