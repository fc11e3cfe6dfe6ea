//! REST: `/api/backups` — list, run, verify, schedule.

use actix::Addr;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::authorise;
use super::error::ApiError;
use crate::actors::backup::{BackupActor, GetSchedule, RunBackup, SetSchedule, VerifyBackup};
use crate::app::Telos;
use crate::backup::{self, Kind};
use crate::error::TelosError;

type ApiResult = Result<HttpResponse, ApiError>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/backups", web::get().to(list))
        .route("/backups", web::post().to(run))
        .route("/backups/schedule", web::get().to(get_schedule))
        .route("/backups/schedule", web::put().to(put_schedule))
        .route("/backups/{id}/verify", web::post().to(verify));
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    TelosError::Unavailable(format!("the backup actor is not running: {e}")).into()
}

async fn list(telos: web::Data<Telos>) -> ApiResult {
    let dir = telos.settings.backup_dir.clone();
    let all = backup::list(&dir).map_err(TelosError::from)?;
    let rows: Vec<_> = all
        .iter()
        .rev()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            v["size"] = json!(backup::size_of(m));
            v["verification"] = json!(backup::last_verification(&dir, &m.id));
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    kind: String,
}

async fn run(
    telos: web::Data<Telos>,
    backups: web::Data<Addr<BackupActor>>,
    req: HttpRequest,
    body: web::Json<RunBody>,
) -> ApiResult {
    authorise(&telos, &req)?;
    let kind: Kind = body
        .kind
        .parse()
        .map_err(|e: anyhow::Error| ApiError::bad_request(e.to_string()))?;
    let manifest = backups.send(RunBackup { kind }).await.map_err(mailbox)??;
    Ok(HttpResponse::Created().json(manifest))
}

async fn verify(
    telos: web::Data<Telos>,
    backups: web::Data<Addr<BackupActor>>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    authorise(&telos, &req)?;
    let v = backups
        .send(VerifyBackup {
            id: Some(id.into_inner()),
        })
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(v))
}

async fn get_schedule(backups: web::Data<Addr<BackupActor>>) -> ApiResult {
    let s = backups.send(GetSchedule).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    full: Option<String>,
    incremental: Option<String>,
}

async fn put_schedule(
    telos: web::Data<Telos>,
    backups: web::Data<Addr<BackupActor>>,
    req: HttpRequest,
    body: web::Json<ScheduleBody>,
) -> ApiResult {
    authorise(&telos, &req)?;
    let ScheduleBody { full, incremental } = body.into_inner();
    let s = backups
        .send(SetSchedule { full, incremental })
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(s))
}
