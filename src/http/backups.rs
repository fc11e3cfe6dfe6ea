//! REST: `/api/backups` — list, run, verify, schedule.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use crate::actors::backup::Backups;
use crate::backup::{self, Kind};
use crate::error::TelosError;
use crate::telos::Telos;

type ApiResult = Result<HttpResponse, ApiError>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/backups", web::get().to(list))
        .route("/backups", web::post().to(run))
        .route("/backups/schedule", web::get().to(get_schedule))
        .route("/backups/schedule", web::put().to(put_schedule))
        .route("/backups/retention", web::get().to(get_retention))
        .route("/backups/retention", web::put().to(put_retention))
        .route("/backups/{id}/verify", web::post().to(verify));
}

async fn list(telos: web::Data<Telos>) -> ApiResult {
    let dir = telos.settings.backup_dir.clone();
    // Manifests and verifications are files: read on a blocking worker.
    let rows = web::block(move || {
        let all = backup::list(&dir)?;
        Ok::<_, anyhow::Error>(
            all.iter()
                .rev()
                .map(|m| {
                    let mut v = serde_json::to_value(m).unwrap_or_default();
                    v["size"] = json!(backup::size_of(m));
                    v["verification"] = json!(backup::last_verification(&dir, &m.id));
                    v
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(TelosError::internal)?
    .map_err(TelosError::from)?;
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    kind: String,
}

async fn run(backups: web::Data<Backups>, body: web::Json<RunBody>) -> ApiResult {
    let kind: Kind = body
        .kind
        .parse()
        .map_err(|e: anyhow::Error| ApiError::bad_request(e.to_string()))?;
    let manifest = backups.run(kind).await?;
    Ok(HttpResponse::Created().json(manifest))
}

async fn verify(backups: web::Data<Backups>, id: web::Path<String>) -> ApiResult {
    let id = id.into_inner();
    backup::validate_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let v = backups.verify(Some(id)).await?;
    Ok(HttpResponse::Ok().json(v))
}

async fn get_schedule(backups: web::Data<Backups>) -> ApiResult {
    let s = backups.schedule().await?;
    Ok(HttpResponse::Ok().json(s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    full: Option<String>,
    incremental: Option<String>,
}

async fn put_schedule(backups: web::Data<Backups>, body: web::Json<ScheduleBody>) -> ApiResult {
    let ScheduleBody { full, incremental } = body.into_inner();
    let s = backups.set_schedule(full, incremental).await?;
    Ok(HttpResponse::Ok().json(s))
}

async fn get_retention(backups: web::Data<Backups>) -> ApiResult {
    let r = backups.retention().await?;
    Ok(HttpResponse::Ok().json(r))
}

/// `PUT /api/backups/retention` `{"keep_full": 4, "keep_incremental_days": 14}`.
async fn put_retention(
    backups: web::Data<Backups>,
    body: web::Json<backup::Retention>,
) -> ApiResult {
    let r = backups.set_retention(body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(r))
}
