//! `Directory`: the registry of live object actors.
//!
//! Activation is synchronous and cheap: the directory starts an [`ObjectActor`] for an oid the
//! first time it is asked for one (the operation itself finds out whether the object exists, and
//! an actor for a missing object stops at once). A periodic sweep forgets stopped actors and drops
//! idle objects from the world's cache, so the world can hold far more objects than fit in memory.

use std::collections::HashMap;
use std::sync::Arc;
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

pub struct Directory {
    actors: HashMap<String, Addr<ObjectActor>>,
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
            actors: HashMap::new(),
            world,
            exec,
            kernel,
            passivate_after,
        }
    }

    fn sweep(&mut self) {
        self.actors.retain(|_, addr| addr.connected());
        let evicted = self.world.evict_idle(self.passivate_after);
        if evicted > 0 {
            tracing::debug!(evicted, live = self.actors.len(), "passivated idle objects");
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
        if let Some(addr) = self.actors.get(&msg.oid)
            && addr.connected()
        {
            return MessageResult(addr.clone());
        }
        let addr = ObjectActor::new(
            msg.oid.clone(),
            self.exec.clone(),
            self.kernel.clone(),
            self.passivate_after,
        )
        .start();
        self.actors.insert(msg.oid, addr.clone());
        MessageResult(addr)
    }
}

impl Handler<LiveCount> for Directory {
    type Result = usize;

    fn handle(&mut self, _: LiveCount, _: &mut Context<Self>) -> usize {
        self.actors.values().filter(|a| a.connected()).count()
    }
}
