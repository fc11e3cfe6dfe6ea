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

//!
//! One concept per file: [`op`] (the operation vocabulary), [`limits`], [`engine`] (one
//! thread's runtime and its retry loop), [`state`] (the running operation's state), [`send`]
//! (send semantics), [`compile`] (the compile cache), [`errors`] (error translation),
//! [`bridge`] (values across the bridge) and [`host`] (the host functions); the JavaScript
//! side is `prelude.js`.

mod bridge;
mod compile;
mod engine;
mod errors;
mod host;
mod limits;
mod op;
mod send;
mod state;

pub use engine::{Engine, Ran};
pub use limits::Limits;
pub use op::{Miss, Op, Outcome};
