//! The state of the operation running on this thread, reached by the host functions, and the
//! thread's caches of compiled methods and prelude functions.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use lru::LruCache;
use rquickjs::{Function, Persistent};

use crate::error::TelosError;
use crate::world::Txn;

use super::limits::Limits;
use super::op::Miss;

/// The state of the operation running on this thread, reached by the host functions.
pub(super) struct Exec {
    pub(super) txn: Txn,
    pub(super) limits: Limits,
    /// (receiver, selector) of each active method, outermost first.
    pub(super) stack: Vec<Frame>,
    /// The call sites `host.site` numbered in this operation, and their numbers by
    /// `receiver\0selector`.
    pub(super) sites: Vec<Frame>,
    pub(super) site_numbers: HashMap<String, u32>,
    /// Tells this operation's site numbers from those of earlier ones.
    pub(super) epoch: u64,
    pub(super) logs: Vec<String>,
    pub(super) log_bytes: usize,
    pub(super) miss: Option<Miss>,
    /// A limit was hit: everything from now on fails with this.
    pub(super) fatal: Option<TelosError>,
    /// The native stack address where the operation began (nested sends are measured from it).
    pub(super) stack_base: usize,
    /// The typed error behind the exception a host function threw last.
    pub(super) pending: Option<TelosError>,
    /// The heap limit was hit.
    pub(super) out_of_memory: bool,
    /// A method's source is being evaluated: whatever it runs may not touch the world.
    pub(super) compiling: bool,
}

/// A method call on the stack: (receiver, selector).
pub(super) type Frame = (Rc<str>, Rc<str>);

/// Compiled methods of one script thread: (holder, name) → (source, function).
pub(super) type MethodCache = LruCache<String, (String, Persistent<Function<'static>>)>;

thread_local! {
    pub(super) static EXEC: RefCell<Option<Exec>> = const { RefCell::new(None) };
    pub(super) static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Counts the operations (attempts) run on this thread: see `Exec::epoch`.
    pub(super) static EPOCH: Cell<u64> = const { Cell::new(0) };
    /// Compiled methods by holder and name, with the source they were compiled from.
    pub(super) static COMPILED: RefCell<Option<MethodCache>> =
        const { RefCell::new(None) };
    pub(super) static INVOKE: RefCell<Option<Persistent<Function<'static>>>> = const { RefCell::new(None) };
    /// Deep-freezes a value (the prelude's `harden`): compiled methods are frozen so that no
    /// state can be kept on a function object from one message to the next.
    pub(super) static HARDEN: RefCell<Option<Persistent<Function<'static>>>> = const { RefCell::new(None) };
    /// The prelude's `decode`: JSON text with `{"$ref": oid}` references to a value with proxies.
    pub(super) static DECODE: RefCell<Option<Persistent<Function<'static>>>> = const { RefCell::new(None) };
}

pub(super) fn with_exec<R>(f: impl FnOnce(&mut Exec) -> R) -> R {
    EXEC.with(|e| f(e.borrow_mut().as_mut().expect("called inside an operation")))
}
