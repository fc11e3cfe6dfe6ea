//! The operation vocabulary: what a top-level operation asks of its target, and how it ends.

use serde_json::Value as Json;

use crate::error::TelosError;
use crate::object::Method;

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
    pub(super) fn is_dry(&self) -> bool {
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
