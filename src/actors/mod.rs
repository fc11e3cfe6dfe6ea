//! The actors: thin owners of the cores, talking in typed messages.
//!
//! - [`directory::Directory`] maps oids to live [`object::ObjectActor`]s, activating them on demand
//!   and passivating idle ones.
//! - [`object::ObjectActor`] is one object's mailbox: its top-level messages run one at a time on
//!   the script threads; a message nobody understands goes to the kernel.
//! - [`kernel::GenerativeKernel`] answers such a miss (wiring for [`crate::kernel::pipeline`],
//!   whose ports [`kernel_deps::KernelDeps`] implements over the actors and the world);
//!   [`kernel::NoKernel`] answers `does_not_understand`. Both plug in at one seam: one
//!   [`kernel::Understand`] message to one actor.
//! - [`persona::PersonaActor`] hosts the persona language models, and
//!   [`persona::EmbedderActor`] the MiniLM embedder, each on a thread of its own.
//! - [`memory::MemoryActor`] owns the memory records and the vector index over them.
//! - [`retrievable`] keeps the memories of `Retrievable` objects in step with their changes.

use crate::error::TelosError;

/// The actors a caller may find not running, as a person reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Directory,
    Object,
    Memory,
    Personas,
    Embedder,
    Backups,
    Kernel,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Who::Directory => "the object directory",
            Who::Object => "the object's actor",
            Who::Memory => "the memory",
            Who::Personas => "the persona host",
            Who::Embedder => "the embedder",
            Who::Backups => "the backup actor",
            Who::Kernel => "the generative kernel",
        })
    }
}

/// How a closed mailbox reads to a caller: `who` is not running. The one mapping of an actor's
/// [`actix::MailboxError`], used wherever an actor is asked.
pub fn down(who: Who) -> impl Fn(actix::MailboxError) -> TelosError + Copy {
    move |e| TelosError::Unavailable(format!("{who} is not running ({e})"))
}

pub mod backup;
pub mod directory;
pub mod kernel;
pub mod kernel_deps;
pub mod memory;
pub mod object;
pub mod persona;
pub mod retrievable;
