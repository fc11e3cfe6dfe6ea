//! `BackupActor`: runs backups on a cron schedule and on demand, one at a time.
//!
//! The schedule, the retention policy and the last results live in the world, as slots of
//! `backup_manager` (`schedule`, `retention`, `last_full`, `last_incremental`, `last_verify`),
//! so they survive restarts and are visible to anyone who inspects that object. A scheduled run
//! missed while the server was down runs once at start.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use std::sync::Arc;

use super::memory::MemoryActor;
use crate::backup::{self, Kind, Manifest, Retention, Verification};
use crate::config::Settings;
use crate::error::TelosError;
use crate::exec::Executor;
use crate::sandbox::Op;
use crate::sandbox::Outcome;
use crate::world::World;

pub const DEFAULT_FULL_CRON: &str = "0 0 3 * * SUN";
pub const DEFAULT_INCREMENTAL_CRON: &str = "0 0 3 * * *";
const MANAGER: &str = "backup_manager";

/// The two cron expressions (six fields, seconds first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub full: String,
    pub incremental: String,
    /// When this schedule took effect: runs before it were never due.
    #[serde(default = "Utc::now")]
    pub since: DateTime<Utc>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            full: DEFAULT_FULL_CRON.into(),
            incremental: DEFAULT_INCREMENTAL_CRON.into(),
            since: Utc::now(),
        }
    }
}

/// Parses a cron expression with an explanation a person can act on.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, TelosError> {
    let fields = expr.split_whitespace().count();
    if fields == 5 {
        return Err(TelosError::BadRequest(format!(
            "cron expression {expr:?} has 5 fields; TelOS uses six, seconds first (e.g. \"0 0 3 * * *\" = 03:00:00 daily)"
        )));
    }
    cron::Schedule::from_str(expr).map_err(|e| {
        TelosError::BadRequest(format!(
            "bad cron expression {expr:?}: {e} (six fields: sec min hour day-of-month month day-of-week)"
        ))
    })
}

/// When `expr` would next fire after `after`.
fn next_fire(expr: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    parse_cron(expr).ok()?.after(&after).next()
}

/// Runs a backup now.
#[derive(Message)]
#[rtype(result = "Result<Manifest, TelosError>")]
pub struct RunBackup {
    pub kind: Kind,
}

/// Verifies one backup (default: the newest).
#[derive(Message)]
#[rtype(result = "Result<Verification, TelosError>")]
pub struct VerifyBackup {
    pub id: Option<String>,
}

/// Answers the schedule in force.
#[derive(Message)]
#[rtype(result = "Schedule")]
pub struct GetSchedule;

/// Replaces one or both cron expressions.
#[derive(Message)]
#[rtype(result = "Result<Schedule, TelosError>")]
pub struct SetSchedule {
    pub full: Option<String>,
    pub incremental: Option<String>,
}

/// Answers the retention policy in force.
#[derive(Message)]
#[rtype(result = "Retention")]
pub struct GetRetention;

/// Replaces the retention policy (validated: at least one full backup is always kept).
#[derive(Message)]
#[rtype(result = "Result<Retention, TelosError>")]
pub struct SetRetention(pub Retention);

/// Checks a retention policy a person asked for.
pub fn check_retention(r: &Retention) -> Result<(), TelosError> {
    if !(1..=1000).contains(&r.keep_full) {
        return Err(TelosError::BadRequest(format!(
            "keep_full must be between 1 and 1000 (got {}): at least one full backup is always kept",
            r.keep_full
        )));
    }
    if !(1..=3650).contains(&r.keep_incremental_days) {
        return Err(TelosError::BadRequest(format!(
            "keep_incremental_days must be between 1 and 3650 (got {})",
            r.keep_incremental_days
        )));
    }
    Ok(())
}

pub struct BackupActor {
    telos: BackupDeps,
    dir: PathBuf,
    retention: Retention,
    schedule: Schedule,
    timer: Option<SpawnHandle>,
}

impl BackupActor {
    pub fn new(telos: BackupDeps, dir: PathBuf) -> Self {
        BackupActor {
            telos,
            dir,
            retention: Retention::default(),
            schedule: Schedule::default(),
            timer: None,
        }
    }

    /// Arms the timer for the next scheduled run.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let now = Utc::now();
        let full = next_fire(&self.schedule.full, now);
        let incr = next_fire(&self.schedule.incremental, now);
        let (kind, at) = match (full, incr) {
            // A full at the same time as an incremental covers it.
            (Some(f), Some(i)) if f <= i => (Kind::Full, f),
            (_, Some(i)) => (Kind::Incremental, i),
            (Some(f), None) => (Kind::Full, f),
            (None, None) => return,
        };
        let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
        tracing::info!(?kind, at = %at, "next scheduled backup");
        self.timer = Some(ctx.run_later(wait, move |act, ctx| {
            act.timer = None;
            act.run_in_turn(kind, ctx);
            act.arm(ctx);
        }));
    }

    /// Runs a backup, holding the mailbox so runs never overlap.
    fn run_in_turn(&mut self, kind: Kind, ctx: &mut Context<Self>) {
        let job = run(self.telos.clone(), self.dir.clone(), self.retention, kind);
        // `run` logs the outcome.
        ctx.wait(job.into_actor(self).map(|_, _, _| ()));
    }
}

/// Takes a backup, applies retention, and records the result in `backup_manager`.
async fn run(
    telos: BackupDeps,
    dir: PathBuf,
    retention: Retention,
    kind: Kind,
) -> Result<Manifest, TelosError> {
    let span = tracing::info_span!("backup", ?kind, id = tracing::field::Empty);
    let started = std::time::Instant::now();
    let result =
        tracing::Instrument::instrument(take(telos, dir, retention, kind), span.clone()).await;
    let m = crate::metrics::metrics();
    let kind_label = kind.as_str();
    m.count(
        "telos_backups_total",
        "Backups taken, by kind and outcome.",
        &[
            ("kind", kind_label),
            ("outcome", if result.is_ok() { "ok" } else { "failed" }),
        ],
        1,
    );
    m.observe(
        "telos_backup_duration_seconds",
        "How long a backup took (taking, recording, retention).",
        &[("kind", kind_label)],
        started.elapsed(),
    );
    span.in_scope(|| match &result {
        Ok(m) => {
            span.record("id", m.id.as_str());
            tracing::info!(
                objects = m.total_objects,
                ms = started.elapsed().as_millis() as u64,
                "backup taken"
            )
        }
        Err(e) => tracing::error!(error = %e, "backup failed"),
    });
    result
}

async fn take(
    telos: BackupDeps,
    dir: PathBuf,
    retention: Retention,
    kind: Kind,
) -> Result<Manifest, TelosError> {
    let now = Utc::now();
    // The index is a cache of the records the backup carries, but a saved index makes the next
    // start quick; a failure here is logged and does not stop the backup.
    if let Ok(Err(e)) = telos.memory.send(crate::actors::memory::Save).await {
        tracing::warn!(error = %e, "saving the memory index before a backup");
    }
    let index = telos.settings.memory_index_path();
    // A backup reads the tables: every acknowledged change goes there first.
    telos.world.settled().await?;
    let (store, to, jobs) = (telos.world.store().clone(), dir.clone(), telos.jobs.clone());
    let result = off_the_arbiter(move || async move {
        let work = backup::take_with_index(&store, &to, kind, now, Some(&index));
        jobs.run("backup", MANAGER, work).await
    })
    .await?;
    let slot = match kind {
        Kind::Full => "last_full",
        Kind::Incremental => "last_incremental",
    };
    let record = match &result {
        Ok(m) => json!({
            "id": m.id, "kind": m.kind, "at": m.created_at, "ok": true,
            "size": backup::size_of(m), "duration_ms": m.duration_ms, "objects": m.total_objects,
        }),
        Err(e) => json!({ "at": now, "ok": false, "error": format!("{e:#}") }),
    };
    // A full taken in place of a first incremental is recorded as the full it is.
    let slot = match &result {
        Ok(m) if m.kind == Kind::Full => "last_full",
        _ => slot,
    };
    set_slot(&telos, slot, record).await;
    // Retention after a backup that was taken; health's summary after either outcome.
    let (summary, taken) = (telos.summary.clone(), result.is_ok());
    let purged = off_the_arbiter(move || async move {
        let purged = taken.then(|| backup::purge(&dir, now, retention));
        summary.refresh(&dir);
        purged
    })
    .await?;
    match purged {
        Some(Ok(purged)) if !purged.is_empty() => tracing::info!(?purged, "retention applied"),
        Some(Err(e)) => tracing::error!(error = %e, "retention failed"),
        _ => {}
    }
    result.map_err(|e| TelosError::Internal(format!("backup failed: {e:#}")))
}

/// Runs a backup job (file writes, fsync, hashing, a scratch restore) on a blocking worker with
/// a runtime of its own: the arbiter that serves the directory and every object actor never
/// waits for a disk.
async fn off_the_arbiter<F, Fut, T>(make: F) -> Result<T, TelosError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TelosError::internal)?;
        Ok(runtime.block_on(make()))
    })
    .await
    .map_err(TelosError::internal)?
}

/// What the backup actor needs: the world (its store), the script threads (to record results
/// in `backup_manager`), the memory (to save its index first) and the settings.
#[derive(Clone)]
pub struct BackupDeps {
    pub world: Arc<World>,
    pub exec: Executor,
    pub memory: Addr<MemoryActor>,
    pub settings: Arc<Settings>,
    /// What health reports of the backups, refreshed here whenever they change.
    pub summary: backup::SummaryCache,
    /// Backups and verifications run as jobs that report their progress.
    pub jobs: crate::progress::Jobs,
}

impl BackupDeps {
    /// Sets a policy slot of `backup_manager` as the server (no message may).
    async fn system_set(&self, name: &str, value: Json) -> Result<(), TelosError> {
        let op = Op::SystemSet {
            name: name.into(),
            value,
        };
        match self.exec.run(MANAGER, op).await? {
            Outcome::Done { .. } => Ok(()),
            Outcome::Failed { error, .. } => Err(error),
            Outcome::Miss { miss, .. } => Err(TelosError::DoesNotUnderstand {
                receiver: miss.receiver,
                selector: miss.selector,
            }),
        }
    }

    /// An object as REST shows it.
    async fn view(&self, oid: &'static str) -> Result<Json, TelosError> {
        let world = self.world.clone();
        tokio::task::spawn_blocking(move || world.get(oid))
            .await
            .map_err(TelosError::internal)??
            .map(|o| o.to_view())
            .ok_or_else(|| TelosError::NoObject(oid.to_string()))
    }
}

async fn set_slot(telos: &BackupDeps, name: &str, value: Json) {
    if let Err(error) = telos.system_set(name, value).await {
        tracing::error!(%error, slot = name, "could not record in backup_manager");
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let telos = self.telos.clone();
        let dir = self.dir.clone();
        let load = async move {
            // Half-written backups of an interrupted run go, and health gets its first summary:
            // both read the disk, so on a blocking worker.
            let summary = telos.summary.clone();
            let _ = tokio::task::spawn_blocking(move || {
                backup::remove_leftovers(&dir);
                summary.refresh(&dir);
            })
            .await;
            telos.view(MANAGER).await
        };
        ctx.wait(load.into_actor(self).map(|view, act, ctx| {
            let view = view.unwrap_or(Json::Null);
            let slots = &view["slots"];
            match serde_json::from_value::<Schedule>(slots["schedule"].clone()) {
                Ok(s) if parse_cron(&s.full).is_ok() && parse_cron(&s.incremental).is_ok() => {
                    act.schedule = s
                }
                _ => {
                    let telos = act.telos.clone();
                    let s = serde_json::to_value(&act.schedule).unwrap_or_default();
                    ctx.spawn(async move { set_slot(&telos, "schedule", s).await }.into_actor(act));
                }
            }
            match serde_json::from_value::<Retention>(slots["retention"].clone()) {
                Ok(r) if check_retention(&r).is_ok() => act.retention = r,
                Ok(r) => tracing::warn!(?r, "backup_manager.retention is out of range: keeping the default policy"),
                Err(_) => {}
            }
            // Missed runs: the schedule fired since the last run (or since it took effect).
            let now = Utc::now();
            let last = |slot: &str| {
                slots[slot]["at"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&Utc))
            };
            let since = act.schedule.since;
            let missed = |expr: &str, last: Option<DateTime<Utc>>| {
                next_fire(expr, last.unwrap_or(since).max(since)).is_some_and(|t| t <= now)
            };
            let full_missed = missed(&act.schedule.full, last("last_full"));
            // A full covers an incremental due before it.
            let last_any = last("last_incremental").max(last("last_full"));
            let incr_missed = missed(&act.schedule.incremental, last_any);
            if full_missed {
                tracing::info!("a scheduled full backup was missed while the server was down: running it now");
                act.run_in_turn(Kind::Full, ctx);
            } else if incr_missed {
                tracing::info!("a scheduled incremental backup was missed while the server was down: running it now");
                act.run_in_turn(Kind::Incremental, ctx);
            }
            act.arm(ctx);
        }));
    }
}

impl Handler<RunBackup> for BackupActor {
    type Result = AtomicResponse<Self, Result<Manifest, TelosError>>;

    fn handle(&mut self, msg: RunBackup, _: &mut Context<Self>) -> Self::Result {
        let job = run(
            self.telos.clone(),
            self.dir.clone(),
            self.retention,
            msg.kind,
        );
        AtomicResponse::new(Box::pin(job.into_actor(self)))
    }
}

impl Handler<VerifyBackup> for BackupActor {
    type Result = AtomicResponse<Self, Result<Verification, TelosError>>;

    fn handle(&mut self, msg: VerifyBackup, _: &mut Context<Self>) -> Self::Result {
        let dir = self.dir.clone();
        let telos = self.telos.clone();
        let summary = telos.summary.clone();
        let span = tracing::info_span!("verify", id = ?msg.id);
        let jobs = telos.jobs.clone();
        let job = async move {
            let v = off_the_arbiter(move || async move {
                let id = match msg.id {
                    Some(id) => id,
                    None => backup::list(&dir)
                        .map_err(TelosError::from)?
                        .last()
                        .map(|m| m.id.clone())
                        .ok_or_else(|| TelosError::NotFound("there are no backups yet".into()))?,
                };
                if !backup::path_of(&dir, &id).join("manifest.json").exists() {
                    return Err(TelosError::NotFound(format!("no backup {id}")));
                }
                let v = jobs
                    .run("verify", MANAGER, backup::verify(&dir, &id, Utc::now()))
                    .await?;
                summary.refresh(&dir);
                Ok(v)
            })
            .await??;
            set_slot(
                &telos,
                "last_verify",
                serde_json::to_value(&v).unwrap_or_default(),
            )
            .await;
            tracing::info!(ok = v.ok, "backup verified");
            Ok(v)
        };
        let job = tracing::Instrument::instrument(job, span);
        AtomicResponse::new(Box::pin(job.into_actor(self)))
    }
}

impl Handler<GetRetention> for BackupActor {
    type Result = MessageResult<GetRetention>;

    fn handle(&mut self, _: GetRetention, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.retention)
    }
}

impl Handler<SetRetention> for BackupActor {
    type Result = AtomicResponse<Self, Result<Retention, TelosError>>;

    fn handle(&mut self, msg: SetRetention, _: &mut Context<Self>) -> Self::Result {
        let telos = self.telos.clone();
        let next = msg.0;
        let job = async move {
            check_retention(&next)?;
            let value = serde_json::to_value(next).map_err(TelosError::internal)?;
            telos.system_set("retention", value).await?;
            Ok(next)
        };
        AtomicResponse::new(Box::pin(job.into_actor(self).map(|res, act, _| {
            if let Ok(r) = &res {
                act.retention = *r;
            }
            res
        })))
    }
}

impl Handler<GetSchedule> for BackupActor {
    type Result = MessageResult<GetSchedule>;

    fn handle(&mut self, _: GetSchedule, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.schedule.clone())
    }
}

impl Handler<SetSchedule> for BackupActor {
    type Result = AtomicResponse<Self, Result<Schedule, TelosError>>;

    fn handle(&mut self, msg: SetSchedule, _: &mut Context<Self>) -> Self::Result {
        let mut next = self.schedule.clone();
        next.since = Utc::now();
        let checked = (|| {
            if let Some(f) = msg.full {
                parse_cron(&f)?;
                next.full = f;
            }
            if let Some(i) = msg.incremental {
                parse_cron(&i)?;
                next.incremental = i;
            }
            Ok::<_, TelosError>(())
        })();
        let telos = self.telos.clone();
        let value = serde_json::to_value(&next).unwrap_or_default();
        let job = async move {
            checked?;
            telos.system_set("schedule", value).await?;
            Ok(next)
        };
        AtomicResponse::new(Box::pin(job.into_actor(self).map(|res, act, ctx| {
            if let Ok(s) = &res {
                act.schedule = s.clone();
                act.arm(ctx);
            }
            res
        })))
    }
}

/// The backup actor as its callers use it: typed requests, the closed mailbox mapped once.
#[derive(Clone)]
pub struct Backups(Addr<BackupActor>);

impl Backups {
    /// Starts the backup actor (on the current actix system).
    pub fn start(deps: BackupDeps, dir: PathBuf) -> Backups {
        Backups(BackupActor::new(deps, dir).start())
    }

    /// Asks the actor; a closed mailbox reads "the backups are not running".
    async fn ask<M>(&self, msg: M) -> Result<M::Result, TelosError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        BackupActor: Handler<M>,
    {
        self.0
            .send(msg)
            .await
            .map_err(super::down(super::Who::Backups))
    }

    /// Takes a backup now (after any running one).
    pub async fn run(&self, kind: Kind) -> Result<Manifest, TelosError> {
        self.ask(RunBackup { kind }).await?
    }

    /// Verifies backup `id` (default: the newest).
    pub async fn verify(&self, id: Option<String>) -> Result<Verification, TelosError> {
        self.ask(VerifyBackup { id }).await?
    }

    pub async fn schedule(&self) -> Result<Schedule, TelosError> {
        self.ask(GetSchedule).await
    }

    /// Replaces one or both cron expressions (validated).
    pub async fn set_schedule(
        &self,
        full: Option<String>,
        incremental: Option<String>,
    ) -> Result<Schedule, TelosError> {
        self.ask(SetSchedule { full, incremental }).await?
    }

    pub async fn retention(&self) -> Result<Retention, TelosError> {
        self.ask(GetRetention).await
    }

    /// Replaces the retention policy (validated).
    pub async fn set_retention(&self, r: Retention) -> Result<Retention, TelosError> {
        self.ask(SetRetention(r)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_five_field_cron_expression_is_refused_with_the_six_field_form_shown() {
        let err = parse_cron("0 3 * * *").unwrap_err().to_string();
        assert!(err.contains("six, seconds first"), "{err}");
        assert!(parse_cron("0 0 3 * * *").is_ok());
        let err = parse_cron("every day").unwrap_err().to_string();
        assert!(err.contains("bad cron expression"), "{err}");
    }

    #[test]
    fn the_defaults_fire_weekly_full_and_daily_incremental_at_three() {
        let after = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let incr = next_fire(DEFAULT_INCREMENTAL_CRON, after).unwrap();
        assert_eq!(incr.to_rfc3339(), "2026-11-29T03:00:00+00:00");
        let full = next_fire(DEFAULT_FULL_CRON, after).unwrap();
        assert_eq!(
            full.to_rfc3339(),
            "2026-11-29T03:00:00+00:00",
            "the 29th is a Sunday"
        );
    }

    #[test]
    fn retention_always_keeps_a_full_backup_and_bounds_the_days() {
        let ok = Retention {
            keep_full: 4,
            keep_incremental_days: 14,
        };
        assert!(check_retention(&ok).is_ok());
        for bad in [
            Retention { keep_full: 0, ..ok },
            Retention {
                keep_full: 1001,
                ..ok
            },
            Retention {
                keep_incremental_days: 0,
                ..ok
            },
            Retention {
                keep_incremental_days: 3651,
                ..ok
            },
        ] {
            assert_eq!(check_retention(&bad).unwrap_err().code(), "bad_request");
        }
    }
}
