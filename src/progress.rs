//! Progress of long work (backups, verifications, reindexing): each runs as a [`Job`] that
//! code deep inside reports to with [`report`] (a no-op outside a job), so the layers in
//! between pass nothing along. Running jobs are listed by `GET /api/jobs`; every change goes
//! out on a broadcast that the WebSocket hub forwards as `progress` frames to the watchers of
//! the job's target object (`backup_manager`, `memory_manager`). Pure core: no actix, no I/O.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

/// How often a job's progress goes out at most (a phase change or the end always does).
const EVERY: Duration = Duration::from_millis(100);

/// Where a job is.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobEvent {
    pub id: String,
    /// `backup`, `verify` or `reindex`.
    pub kind: String,
    /// The object whose watchers get the job's `progress` frames.
    pub target: String,
    /// What it is doing now (`read`, `objects`, `memories`, `restore`, `index`, ...).
    pub phase: String,
    /// Units done of `total` in this phase (0 of 0: no measure yet).
    pub done: u64,
    pub total: u64,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// RFC 3339.
    pub started_at: String,
}

struct Inner {
    event: Mutex<(JobEvent, Option<Instant>)>,
    jobs: Jobs,
}

/// A running job.
#[derive(Clone)]
pub struct Job(Arc<Inner>);

tokio::task_local! {
    static CURRENT: Job;
}

/// Every running job, and the feed of their progress.
#[derive(Clone)]
pub struct Jobs {
    running: Arc<Mutex<HashMap<String, JobEvent>>>,
    feed: broadcast::Sender<JobEvent>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            running: Arc::default(),
            feed: broadcast::channel(256).0,
        }
    }
}

impl Jobs {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobEvent>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many jobs run.
    pub fn count(&self) -> usize {
        self.running().len()
    }

    /// The running jobs, oldest first.
    pub fn list(&self) -> Vec<JobEvent> {
        let mut all: Vec<JobEvent> = self.running().values().cloned().collect();
        all.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        all
    }

    /// Every job's progress, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.feed.subscribe()
    }

    /// Runs `work` as a job of `kind` on `target`: [`report`] inside it updates the job, which
    /// ends `done` or `failed` with `work`'s outcome.
    pub async fn run<T, E>(
        &self,
        kind: &str,
        target: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let running = self.begin(kind, target);
        let job = running.0.clone().expect("a job just begun");
        // Dropped unfinished (its caller went away, or `work` panicked), `running` ends the job
        // `failed`.
        let result = CURRENT.scope(job, work).await;
        running.finish(result.is_ok());
        result
    }
}

/// A job run by blocking code ([`Jobs::begin`]): updated by hand, ended by
/// [`Running::finish`], or `failed` when dropped unfinished.
pub struct Running(Option<Job>);

impl Running {
    pub fn update(&self, phase: &str, done: u64, total: u64) {
        if let Some(job) = &self.0 {
            job.update(phase, done, total);
        }
    }

    pub fn finish(mut self, ok: bool) {
        if let Some(job) = self.0.take() {
            job.end(if ok { "done" } else { "failed" });
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            job.end("failed");
        }
    }
}

impl Jobs {
    /// Starts a job of `kind` on `target` for blocking code (`""`: no object; its progress
    /// goes to every connection, so keep such jobs rare: loading a model).
    pub fn begin(&self, kind: &str, target: &str) -> Running {
        let event = JobEvent {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            kind: kind.to_string(),
            target: target.to_string(),
            phase: "start".into(),
            done: 0,
            total: 0,
            state: "running".into(),
            started_at: chrono::Utc::now().to_rfc3339(),
        };
        self.running().insert(event.id.clone(), event.clone());
        let _ = self.feed.send(event.clone());
        Running(Some(Job(Arc::new(Inner {
            event: Mutex::new((event, None)),
            jobs: self.clone(),
        }))))
    }
}

impl Job {
    fn update(&self, phase: &str, done: u64, total: u64) {
        let mut guard = self.0.event.lock().unwrap_or_else(|p| p.into_inner());
        let (event, sent) = &mut *guard;
        let changed_phase = event.phase != phase;
        event.phase = phase.to_string();
        event.done = done;
        event.total = total;
        let now = Instant::now();
        let due = changed_phase || done >= total || sent.is_none_or(|at| now - at >= EVERY);
        if due {
            *sent = Some(now);
            let event = event.clone();
            drop(guard);
            self.0
                .jobs
                .running()
                .insert(event.id.clone(), event.clone());
            let _ = self.0.jobs.feed.send(event);
        }
    }

    fn end(&self, state: &str) {
        let event = {
            let mut guard = self.0.event.lock().unwrap_or_else(|p| p.into_inner());
            guard.0.state = state.to_string();
            guard.0.clone()
        };
        self.0.jobs.running().remove(&event.id);
        let _ = self.0.jobs.feed.send(event);
    }
}

/// Reports progress of the job this task runs (nothing outside a job): `done` of `total` units
/// in `phase`.
pub fn report(phase: &str, done: u64, total: u64) {
    let _ = CURRENT.try_with(|job| job.update(phase, done, total));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_reports_its_phases_and_ends_listed_no_more() {
        let jobs = Jobs::default();
        let mut feed = jobs.subscribe();
        let seen = jobs.clone();
        let out: Result<u32, ()> = jobs
            .run("backup", "backup_manager", async move {
                report("objects", 0, 3);
                assert_eq!(seen.list()[0].phase, "objects");
                report("objects", 3, 3);
                Ok(7)
            })
            .await;
        assert_eq!(out, Ok(7));
        assert!(jobs.list().is_empty());
        let mut events = Vec::new();
        while let Ok(e) = feed.try_recv() {
            events.push((e.phase, e.done, e.total, e.state));
        }
        assert_eq!(
            events,
            [
                ("start".into(), 0, 0, "running".into()),
                ("objects".into(), 0, 3, "running".into()),
                ("objects".into(), 3, 3, "running".into()),
                ("objects".into(), 3, 3, "done".into()),
            ]
        );
        // Outside a job, reporting does nothing.
        report("objects", 1, 2);
        let failed: Result<(), &str> = jobs
            .run("verify", "backup_manager", async { Err("x") })
            .await;
        assert!(failed.is_err());
        let last = std::iter::from_fn(|| feed.try_recv().ok()).last().unwrap();
        assert_eq!(last.state, "failed");
        // A job whose caller goes away (its future dropped) ends failed, not running forever.
        let never = jobs.run::<(), ()>("reindex", "memory_manager", std::future::pending());
        let gone = tokio::time::timeout(Duration::from_millis(1), never).await;
        assert!(gone.is_err());
        assert!(jobs.list().is_empty());
        let last = std::iter::from_fn(|| feed.try_recv().ok()).last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.state.as_str()),
            ("reindex", "failed")
        );
        // Blocking code's jobs: updated by hand, finished, or failed when dropped.
        let load = jobs.begin("load", "");
        load.update("model", 50, 100);
        assert_eq!(jobs.list()[0].done, 50);
        load.finish(true);
        drop(jobs.begin("load", ""));
        let states: Vec<String> = std::iter::from_fn(|| feed.try_recv().ok())
            .filter(|e| e.state != "running")
            .map(|e| e.state)
            .collect();
        assert_eq!(states, ["done", "failed"]);
        assert!(jobs.list().is_empty());
    }
}
