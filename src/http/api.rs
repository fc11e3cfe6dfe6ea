//! REST: `/api/health` and the object endpoints of SPEC §10.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::authorise;
use super::error::ApiError;
use crate::actors::object::Reply;
use crate::app::Telos;
use crate::error::TelosError;
use crate::object::Slot;
use crate::sandbox::Op;
use crate::world::slots_arg;

type ApiResult = Result<HttpResponse, ApiError>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/objects", web::get().to(list_objects))
        .route("/objects/{oid}", web::get().to(get_object))
        .route("/objects/{oid}", web::delete().to(delete_object))
        .route("/objects/{oid}/clone", web::post().to(clone_object))
        .route("/objects/{oid}/send", web::post().to(send))
        .route("/objects/{oid}/slots/{name}", web::put().to(put_slot))
        .route("/objects/{oid}/slots/{name}", web::delete().to(delete_slot))
        .route("/objects/{oid}/methods/{name}", web::get().to(get_method))
        .route("/memory/embed", web::post().to(embed));
}

fn value_of(reply: Reply) -> Result<Json, ApiError> {
    reply.result.map_err(ApiError::from)
}

async fn health(telos: web::Data<Telos>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.health().await?))
}

#[derive(Deserialize)]
struct Page {
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn list_objects(telos: web::Data<Telos>, page: web::Query<Page>) -> ApiResult {
    let limit = page.limit.unwrap_or(100).min(1000);
    let objects = telos
        .world
        .store()
        .list(page.offset.unwrap_or(0), limit)
        .await?;
    Ok(HttpResponse::Ok().json(objects))
}

async fn get_object(telos: web::Data<Telos>, oid: web::Path<String>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.view(&oid).await?))
}

async fn delete_object(
    telos: web::Data<Telos>,
    req: HttpRequest,
    oid: web::Path<String>,
) -> ApiResult {
    authorise(&telos, &req)?;
    value_of(telos.call(&oid, Op::Delete).await)?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": oid.into_inner() })))
}

/// An optional JSON body: absent or empty means `{}`.
fn optional_body(body: &web::Bytes) -> Result<Json, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

async fn clone_object(
    telos: web::Data<Telos>,
    req: HttpRequest,
    oid: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    authorise(&telos, &req)?;
    let body = optional_body(&body)?;
    let slots = slots_arg(body.get("slots"))?;
    let value = value_of(telos.call(&oid, Op::Clone { slots }).await)?;
    Ok(HttpResponse::Created().json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    selector: String,
    #[serde(default)]
    args: Vec<Json>,
}

async fn send(
    telos: web::Data<Telos>,
    req: HttpRequest,
    oid: web::Path<String>,
    body: web::Json<SendBody>,
) -> ApiResult {
    authorise(&telos, &req)?;
    let SendBody { selector, args } = body.into_inner();
    let reply = telos.send(&oid, &selector, args).await;
    let logs = reply.logs.clone();
    let value = value_of(reply)?;
    Ok(HttpResponse::Ok().json(json!({ "value": value, "logs": logs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotBody {
    value: Option<Json>,
    method: Option<String>,
}

async fn put_slot(
    telos: web::Data<Telos>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<SlotBody>,
) -> ApiResult {
    authorise(&telos, &req)?;
    let (oid, name) = path.into_inner();
    let op = match body.into_inner() {
        SlotBody {
            value: Some(value),
            method: None,
        } => Op::SetValue {
            name: name.clone(),
            value,
        },
        SlotBody {
            value: None,
            method: Some(source),
        } => Op::SetMethod {
            name: name.clone(),
            source,
        },
        _ => {
            return Err(ApiError::bad_request(
                "the body must be {\"value\": json} or {\"method\": \"function name(self, ...) {...}\"}",
            ));
        }
    };
    value_of(telos.call(&oid, op).await)?;
    Ok(HttpResponse::Ok().json(json!({ "oid": oid, "slot": name })))
}

async fn delete_slot(
    telos: web::Data<Telos>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult {
    authorise(&telos, &req)?;
    let (oid, name) = path.into_inner();
    value_of(
        telos
            .call(&oid, Op::RemoveSlot { name: name.clone() })
            .await,
    )?;
    Ok(HttpResponse::Ok().json(json!({ "oid": oid, "removed": name })))
}

async fn get_method(telos: web::Data<Telos>, path: web::Path<(String, String)>) -> ApiResult {
    let (oid, name) = path.into_inner();
    let obj = telos.object(&oid).await?;
    match obj.slots.get(&name) {
        Some(Slot::Method(m)) => Ok(HttpResponse::Ok().json(json!({
            "oid": oid,
            "name": name,
            "source": m.source,
            "origin": m.origin,
            "installed_at": m.installed_at,
        }))),
        Some(Slot::Value(_)) => Err(ApiError::bad_request(format!(
            "{oid}.{name} is a value slot, not a method"
        ))),
        None => Err(ApiError::not_found(format!("{oid} has no method {name}"))),
    }
}

/// Prometheus text: the world, the actors and the backups.
pub async fn metrics(telos: web::Data<Telos>) -> ApiResult {
    let h = telos.health().await?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    let num = |v: &Json| v.as_f64().unwrap_or(0.0);
    for (name, help, pointer) in [
        ("telos_objects", "Objects in the world.", "/objects"),
        (
            "telos_live_actors",
            "Object actors currently active.",
            "/live_actors",
        ),
        (
            "telos_cached_objects",
            "Objects held in memory.",
            "/cached_objects",
        ),
        (
            "telos_commit_seq",
            "Sequence number of the last commit.",
            "/seq",
        ),
        (
            "telos_uptime_seconds",
            "Seconds since start.",
            "/uptime_secs",
        ),
        ("telos_backups", "Backups on disk.", "/backups/count"),
        (
            "telos_backup_bytes",
            "Bytes of all backups on disk.",
            "/backups/bytes",
        ),
    ] {
        gauge(name, help, num(h.pointer(pointer).unwrap_or(&Json::Null)));
    }
    for kind in ["full", "incremental"] {
        let last = &h["backups"][format!("last_{kind}")];
        let at = last["at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp() as f64)
            .unwrap_or(0.0);
        gauge(
            &format!("telos_last_{kind}_backup_timestamp_seconds"),
            "When the newest backup of this kind was taken (0: never).",
            at,
        );
        gauge(
            &format!("telos_last_{kind}_backup_bytes"),
            "Size of the newest backup of this kind.",
            num(&last["size"]),
        );
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    texts: Vec<String>,
}

/// `POST /api/memory/embed`: normalised MiniLM vectors of the given texts.
async fn embed(telos: web::Data<Telos>, body: web::Json<EmbedBody>) -> ApiResult {
    let texts = body.into_inner().texts;
    if texts.len() > 256 {
        return Err(ApiError::bad_request("at most 256 texts per request"));
    }
    let out = telos
        .personas
        .send(crate::actors::persona::Embed { texts })
        .await
        .map_err(|e| TelosError::Unavailable(format!("the persona host is not running: {e}")))??;
    Ok(HttpResponse::Ok().json(out))
}
