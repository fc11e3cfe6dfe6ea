//! Who watches which object. The world's change feed is read once, here, and each change goes
//! only to the WebSocket sessions subscribed to its object: a write costs the watchers of its
//! object, not every open connection (with 1,000 sessions each reading the whole feed, the
//! server spent most of its CPU waking sessions that dropped the change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::broadcast::error::RecvError;

use crate::world::{Change, World};

/// Something about an object the session watches: a committed change, or the progress of a
/// job on it (a backup on `backup_manager`, ...).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum Changed {
    Change(Arc<Change>),
    Progress(Arc<crate::progress::JobEvent>),
}

/// The watchers of each object, by connection id.
#[derive(Default)]
pub struct Hub {
    watchers: Mutex<HashMap<String, HashMap<u64, Recipient<Changed>>>>,
}

impl Hub {
    /// A hub following `world`'s changes (on the current actix system) until the world's feed
    /// closes.
    pub fn start(world: &World, jobs: &crate::progress::Jobs) -> Arc<Hub> {
        let hub = Arc::new(Hub::default());
        let mut progress = jobs.subscribe();
        let watching = hub.clone();
        actix::spawn(async move {
            loop {
                let event = match progress.recv().await {
                    Ok(event) => Arc::new(event),
                    // Progress is a gauge: a missed step is made good by the next.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                // A job on no object (a model load) goes to every connection.
                let to = if event.target.is_empty() {
                    watching.everyone()
                } else {
                    watching.of(&event.target)
                };
                for watcher in to {
                    watcher.do_send(Changed::Progress(event.clone()));
                }
            }
        });
        let mut changes = world.subscribe();
        let feed = hub.clone();
        actix::spawn(async move {
            loop {
                let change = match changes.recv().await {
                    Ok(change) => Arc::new(change),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "WebSocket watchers missed some change notices (the server was too busy)"
                        );
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                for watcher in feed.of(&change.oid) {
                    watcher.do_send(Changed::Change(change.clone()));
                }
            }
        });
        hub
    }

    fn watchers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Recipient<Changed>>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn of(&self, oid: &str) -> Vec<Recipient<Changed>> {
        self.watchers()
            .get(oid)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every connection that watches anything, once each.
    fn everyone(&self) -> Vec<Recipient<Changed>> {
        let mut seen = HashMap::new();
        for w in self.watchers().values() {
            for (connection, to) in w {
                seen.entry(*connection).or_insert_with(|| to.clone());
            }
        }
        seen.into_values().collect()
    }

    /// Connection `connection` watches `oid`.
    pub fn watch(&self, oid: &str, connection: u64, to: Recipient<Changed>) {
        self.watchers()
            .entry(oid.to_string())
            .or_default()
            .insert(connection, to);
    }

    /// Connection `connection` no longer watches `oid`.
    pub fn unwatch(&self, oid: &str, connection: u64) {
        let mut watchers = self.watchers();
        if let Some(w) = watchers.get_mut(oid) {
            w.remove(&connection);
            if w.is_empty() {
                watchers.remove(oid);
            }
        }
    }

    /// Objects watched by anyone (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.watchers().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe;

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<Changed> for Probe {
        type Result = ();

        fn handle(&mut self, _: Changed, _: &mut Context<Self>) {}
    }

    #[actix_web::test]
    async fn watchers_are_kept_per_object_and_an_unwatched_object_is_forgotten() {
        let hub = Hub::default();
        let pa = Probe.start();
        let pb = Probe.start();
        hub.watch("o1", 1, pa.clone().recipient());
        hub.watch("o2", 2, pb.clone().recipient());
        hub.watch("o1", 2, pb.clone().recipient());
        hub.unwatch("o1", 2);
        assert_eq!(hub.of("o1").len(), 1);
        assert_eq!(hub.of("o2").len(), 1);
        hub.unwatch("o2", 2);
        assert_eq!(hub.watched(), 1, "an object nobody watches is forgotten");
        assert!(hub.of("o3").is_empty());
    }
}
