//! REST: `/api/health` and the object endpoints of SPEC §10.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::error::ApiError;
use crate::actors::object::Reply;
use crate::object::Slot;
use crate::sandbox::Op;
use crate::telos::Telos;
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
        .route(
            "/objects/{oid}/methods/{name}/rollback",
            web::post().to(rollback_method),
        )
        .route("/personas", web::get().to(list_personas))
        .route("/personas/{name}", web::put().to(set_persona))
        .route("/personas/{name}/unload", web::post().to(unload_persona))
        .route("/memory/embed", web::post().to(embed))
        .route("/memory/search", web::get().to(memory_search))
        .route("/memory/records", web::get().to(memory_records))
        .route("/memory/records", web::post().to(memory_remember))
        .route("/memory/reindex", web::post().to(memory_reindex));
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
    let objects = telos.world.list(page.offset.unwrap_or(0), limit).await?;
    Ok(HttpResponse::Ok().json(objects))
}

async fn get_object(telos: web::Data<Telos>, oid: web::Path<String>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.view(&oid).await?))
}

async fn delete_object(telos: web::Data<Telos>, oid: web::Path<String>) -> ApiResult {
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
    oid: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
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
    oid: web::Path<String>,
    body: web::Json<SendBody>,
) -> ApiResult {
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
    path: web::Path<(String, String)>,
    body: web::Json<SlotBody>,
) -> ApiResult {
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

async fn delete_slot(telos: web::Data<Telos>, path: web::Path<(String, String)>) -> ApiResult {
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
            "provenance": m.provenance,
            "history": m.history,
        }))),
        Some(Slot::Value(_)) => Err(ApiError::bad_request(format!(
            "{oid}.{name} is a value slot, not a method"
        ))),
        None => Err(ApiError::not_found(format!("{oid} has no method {name}"))),
    }
}

/// `POST /api/objects/{oid}/methods/{name}/rollback`: the previous version becomes current.
async fn rollback_method(telos: web::Data<Telos>, path: web::Path<(String, String)>) -> ApiResult {
    let (oid, name) = path.into_inner();
    value_of(telos.call(&oid, Op::Rollback { name: name.clone() }).await)?;
    get_method(telos, web::Path::from((oid, name))).await
}

/// `GET /api/personas`: each persona's backend, model, settings and whether it is loaded.
async fn list_personas(telos: web::Data<Telos>) -> ApiResult {
    // From the board: answers at once even while a persona is generating.
    Ok(HttpResponse::Ok().json(telos.persona_board.list()))
}

/// `PUT /api/personas/{name}` `{"backend", "model", "temperature", "max_tokens"}`.
async fn set_persona(
    telos: web::Data<Telos>,
    name: web::Path<String>,
    body: web::Json<crate::llm::PersonaConfig>,
) -> ApiResult {
    let view = telos
        .personas
        .send(crate::actors::persona::SetPersona {
            name: name.into_inner(),
            config: body.into_inner(),
        })
        .await
        .map_err(crate::actors::down(crate::actors::Who::Personas))??;
    Ok(HttpResponse::Ok().json(view))
}

/// `POST /api/personas/{name}/unload`: frees the persona's local model.
async fn unload_persona(telos: web::Data<Telos>, name: web::Path<String>) -> ApiResult {
    let name = name.into_inner();
    let unloaded = telos
        .personas
        .send(crate::actors::persona::Unload { name: name.clone() })
        .await
        .map_err(crate::actors::down(crate::actors::Who::Personas))??;
    Ok(HttpResponse::Ok().json(json!({ "persona": name, "unloaded": unloaded })))
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
    let tokens = telos.persona_board.tokens();
    for (name, help, value) in [
        (
            "telos_llm_prompt_tokens_total",
            "Prompt tokens of local generations.",
            &tokens.prompt,
        ),
        (
            "telos_llm_prompt_tokens_reused_total",
            "Prompt tokens not evaluated again thanks to prompt-prefix reuse.",
            &tokens.reused,
        ),
        (
            "telos_llm_generated_tokens_total",
            "Tokens generated by local models.",
            &tokens.generated,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            value.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    out.push_str(&format!(
        "# HELP telos_embedded_texts_total Texts embedded by MiniLM.\n# TYPE telos_embedded_texts_total counter\ntelos_embedded_texts_total {}\n",
        telos.persona_board.embedded_texts()
    ));
    let commits = telos.world.commit_stats();
    for (name, help, value) in [
        (
            "telos_commit_batches_total",
            "Commit-log records appended by group commit (one per batch).",
            commits.batches,
        ),
        (
            "telos_commit_transactions_total",
            "Message transactions written in them (transactions / batches: the grouping).",
            commits.transactions,
        ),
        (
            "telos_checkpoints_total",
            "Checkpoints of the commit log into the object table.",
            commits.checkpoints,
        ),
        (
            "telos_checkpointed_rows_total",
            "Object rows and tombstones written by checkpoints (repeated writes coalesced).",
            commits.checkpointed_rows,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP telos_commit_log_pending Commit-log records not yet checkpointed.\n# TYPE telos_commit_log_pending gauge\ntelos_commit_log_pending {}\n",
        commits.log_pending
    ));
    out.push_str(&crate::metrics::metrics().render());
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
    let vectors = telos.embedder.embed(texts).await?;
    Ok(HttpResponse::Ok().json(json!({
        "model": crate::embed::EMBEDDER_ID,
        "dims": crate::embed::DIMS,
        "vectors": vectors,
    })))
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
    k: Option<usize>,
    kind: Option<String>,
}

/// `GET /api/memory/search?q=&k=&kind=`: the nearest memories to `q`, closest first.
async fn memory_search(telos: web::Data<Telos>, query: web::Query<SearchQuery>) -> ApiResult {
    let SearchQuery { q, k, kind } = query.into_inner();
    let kind = match kind.as_deref() {
        None | Some("") => None,
        Some(name) => Some(crate::memory::MemoryKind::parse(name).map_err(ApiError::bad_request)?),
    };
    let found =
        crate::actors::memory::search(&telos.embedder, &telos.memory, q, k.unwrap_or(5), kind)
            .await?;
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Deserialize)]
struct RecordsQuery {
    offset: Option<u64>,
    limit: Option<u64>,
    owner: Option<String>,
}

/// `GET /api/memory/records?offset=&limit=&owner=`: records, newest first, without vectors.
async fn memory_records(telos: web::Data<Telos>, query: web::Query<RecordsQuery>) -> ApiResult {
    let RecordsQuery {
        offset,
        limit,
        owner,
    } = query.into_inner();
    let limit = limit.unwrap_or(100).min(1000);
    let offset = offset.unwrap_or(0);
    let (records, total) = telos
        .world
        .store()
        .memory_page(owner.filter(|o| !o.is_empty()), offset, limit)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "total": total,
        "offset": offset,
        "records": records,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReindexBody {
    /// Also re-chunk every Retrievable object (after changes the indexer missed).
    #[serde(default)]
    objects: bool,
}

/// `POST /api/memory/reindex`: rebuilds the index from the stored vectors (nothing is
/// re-embedded); with `{"objects": true}` first re-chunks every Retrievable object.
async fn memory_reindex(
    telos: web::Data<Telos>,
    body: Option<web::Json<ReindexBody>>,
) -> ApiResult {
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
    let started = std::time::Instant::now();
    let mut objects = 0;
    if body.objects {
        let oids = telos.world.all_oids().await?;
        let indexer = telos.indexer();
        for oid in oids {
            if crate::actors::retrievable::reindex(&indexer, &oid, false)
                .await?
                .is_some()
            {
                objects += 1;
            }
        }
    }
    let records = telos
        .memory
        .send(crate::actors::memory::Reindex)
        .await
        .map_err(crate::actors::down(crate::actors::Who::Memory))??;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "records": records,
        "retrievable_objects": objects,
        "ms": started.elapsed().as_millis() as u64,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberBody {
    items: Vec<crate::memory::NewMemory>,
}

/// `POST /api/memory/records` `{"items": [{"text", "kind"?, "prompt"?, "owner"?, "selector"?,
/// "source"?}]}`: embeds and remembers notes (one batch, one transaction). Answers the keys.
async fn memory_remember(telos: web::Data<Telos>, body: web::Json<RememberBody>) -> ApiResult {
    let items = body.into_inner().items;
    if items.is_empty() || items.len() > 256 {
        return Err(ApiError::bad_request("give 1 to 256 items"));
    }
    let keys = crate::actors::memory::remember(&telos.embedder, &telos.memory, items).await?;
    Ok(HttpResponse::Created().json(json!({ "ids": keys })))
}
