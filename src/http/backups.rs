//! REST: `/api/backups` — list, run, verify, schedule.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::error::ApiError;
use crate::actors::backup::Backups;
use crate::backup::{self, Kind};
use crate::error::TelosError;
use crate::telos::Telos;

type ApiResult = Result<HttpResponse, ApiError>;

routes! {
    get "/backups" => list,
    post "/backups" => run,
    get "/backups/schedule" => get_schedule,
    put "/backups/schedule" => put_schedule,
    get "/backups/retention" => get_retention,
    put "/backups/retention" => put_retention,
    post "/backups/{id}/verify" => verify,
}

/// The OpenAPI description of the backup routes (see [`super::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    run,
    get_schedule,
    put_schedule,
    get_retention,
    put_retention,
    verify
))]
pub struct Doc;

/// A row of `GET /api/backups`: a backup or verification running now, or a backup on disk.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Row {
    Running(Running),
    Listed(Listed),
}

/// A backup or verification running now: listed first, until its job ends.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Running {
    /// The job's id (as in `GET /api/jobs`).
    id: String,
    /// Always `running` (a backup on disk has no `state`).
    state: &'static str,
    /// The job: `kind` (`backup` or `verify`), `phase`, `done` of `total`.
    job: crate::progress::JobEvent,
}

/// A backup as listed: its manifest, size on disk and last verification.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Listed {
    #[serde(flatten)]
    manifest: backup::Manifest,
    /// Bytes of its files.
    size: u64,
    /// The last verification of this backup (null: never verified).
    verification: Option<backup::Verification>,
}

#[utoipa::path(get, path = "/api/backups", tag = "backups", responses((status = 200, description = "Backups and verifications running now (`state: running`, with their job's progress), then the backups on disk, newest first", body = Vec<Row>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn list(telos: web::Data<Telos>) -> ApiResult {
    let running = telos
        .jobs
        .list()
        .into_iter()
        .filter(|job| job.kind == "backup" || job.kind == "verify")
        .map(|job| {
            Row::Running(Running {
                id: job.id.clone(),
                state: "running",
                job,
            })
        });
    let dir = telos.settings.backup_dir.clone();
    // Manifests and verifications are files: read on a blocking worker.
    let rows = web::block(move || {
        let all = backup::list(&dir)?;
        Ok::<_, anyhow::Error>(
            all.iter()
                .rev()
                .map(|m| {
                    Row::Listed(Listed {
                        size: backup::size_of(m),
                        verification: backup::last_verification(&dir, &m.id),
                        manifest: m.clone(),
                    })
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(TelosError::internal)?
    .map_err(TelosError::from)?;
    Ok(HttpResponse::Ok().json(running.chain(rows).collect::<Vec<_>>()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RunBody {
    /// `full` or `incremental`.
    kind: String,
}

#[utoipa::path(post, path = "/api/backups", tag = "backups", request_body = RunBody, responses((status = 201, description = "The backup taken", body = backup::Manifest), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn run(backups: web::Data<Backups>, body: web::Json<RunBody>) -> ApiResult {
    let kind: Kind = body
        .kind
        .parse()
        .map_err(|e: anyhow::Error| ApiError::bad_request(e.to_string()))?;
    let manifest = backups.run(kind).await?;
    Ok(HttpResponse::Created().json(manifest))
}

#[utoipa::path(post, path = "/api/backups/{id}/verify", tag = "backups", params(("id" = String, Path, description = "A backup id")), responses((status = 200, body = backup::Verification), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn verify(backups: web::Data<Backups>, id: web::Path<String>) -> ApiResult {
    let id = id.into_inner();
    backup::validate_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let v = backups.verify(Some(id)).await?;
    Ok(HttpResponse::Ok().json(v))
}

#[utoipa::path(get, path = "/api/backups/schedule", tag = "backups", responses((status = 200, body = crate::actors::backup::Schedule), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn get_schedule(backups: web::Data<Backups>) -> ApiResult {
    let s = backups.schedule().await?;
    Ok(HttpResponse::Ok().json(s))
}

/// Either or both cron expressions (six fields, seconds first).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    full: Option<String>,
    incremental: Option<String>,
}

#[utoipa::path(put, path = "/api/backups/schedule", tag = "backups", request_body = ScheduleBody, responses((status = 200, body = crate::actors::backup::Schedule), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn put_schedule(backups: web::Data<Backups>, body: web::Json<ScheduleBody>) -> ApiResult {
    let ScheduleBody { full, incremental } = body.into_inner();
    let s = backups.set_schedule(full, incremental).await?;
    Ok(HttpResponse::Ok().json(s))
}

#[utoipa::path(get, path = "/api/backups/retention", tag = "backups", responses((status = 200, body = backup::Retention), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn get_retention(backups: web::Data<Backups>) -> ApiResult {
    let r = backups.retention().await?;
    Ok(HttpResponse::Ok().json(r))
}

/// `PUT /api/backups/retention` `{"keep_full": 4, "keep_incremental_days": 14}`.
#[utoipa::path(put, path = "/api/backups/retention", tag = "backups", request_body = backup::Retention, responses((status = 200, body = backup::Retention), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn put_retention(
    backups: web::Data<Backups>,
    body: web::Json<backup::Retention>,
) -> ApiResult {
    let r = backups.set_retention(body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(r))
}
