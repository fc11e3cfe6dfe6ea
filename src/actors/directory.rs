//! `Directory`: the registry of live object actors.
//!
//! Activation is synchronous and cheap: the directory starts an [`ObjectActor`] for an oid the
//! first time it is asked for one (the operation itself finds out whether the object exists, and
//! an actor for a missing object stops at once). A periodic sweep forgets stopped actors and drops
//! idle objects from the world's cache, so the world can hold far more objects than fit in memory.
//!
//! The map of live actors is shared ([`Live`]): a caller finds a live actor without a round trip
//! through the directory's mailbox (one hop to the directory's arbiter and one back, per
//! message); only activation goes through the directory, so one actor starts per oid.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use super::kernel::Understand;
use super::object::ObjectActor;
use crate::exec::Executor;
use crate::world::World;

/// Answers the live actor of `oid`, starting it if needed.
#[derive(Message, Debug)]
#[rtype(result = "Addr<ObjectActor>")]
pub struct Activate {
    pub oid: String,
}

/// How many object actors are alive.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct LiveCount;

/// The live object actors, readable without asking the directory.
#[derive(Clone, Default)]
pub struct Live(Arc<RwLock<HashMap<String, Addr<ObjectActor>>>>);

impl Live {
    /// The live actor of `oid`, if there is one.
    pub fn get(&self, oid: &str) -> Option<Addr<ObjectActor>> {
        self.read().get(oid).filter(|a| a.connected()).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Addr<ObjectActor>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Addr<ObjectActor>>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self) -> usize {
        self.read().values().filter(|a| a.connected()).count()
    }
}

pub struct Directory {
    actors: Live,
    world: Arc<World>,
    exec: Executor,
    kernel: Recipient<Understand>,
    passivate_after: Duration,
}

impl Directory {
    pub fn new(
        world: Arc<World>,
        exec: Executor,
        kernel: Recipient<Understand>,
        passivate_after: Duration,
    ) -> Self {
        Directory {
            actors: Live::default(),
            world,
            exec,
            kernel,
            passivate_after,
        }
    }

    /// The live actors, for callers that look one up without asking.
    pub fn live(&self) -> Live {
        self.actors.clone()
    }

    fn sweep(&mut self) {
        let live = {
            let mut actors = self.actors.write();
            actors.retain(|_, addr| addr.connected());
            actors.len()
        };
        let evicted = self.world.evict_idle(self.passivate_after);
        if evicted > 0 {
            tracing::debug!(evicted, live, "passivated idle objects");
        }
    }
}

impl Actor for Directory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = (self.passivate_after / 2).max(Duration::from_millis(100));
        ctx.run_interval(every, |act, _| act.sweep());
    }
}

impl Handler<Activate> for Directory {
    type Result = MessageResult<Activate>;

    fn handle(&mut self, msg: Activate, _: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.actors.get(&msg.oid) {
            return MessageResult(addr);
        }
        let addr = ObjectActor::new(
            msg.oid.clone(),
            self.exec.clone(),
            self.kernel.clone(),
            self.passivate_after,
        )
        .start();
        self.actors.write().insert(msg.oid, addr.clone());
        MessageResult(addr)
    }
}

impl Handler<LiveCount> for Directory {
    type Result = usize;

    fn handle(&mut self, _: LiveCount, _: &mut Context<Self>) -> usize {
        self.actors.count()
    }
}
