//! REST: `/api/health` and the object endpoints of SPEC §10.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::error::ApiError;
use crate::actors::object::Reply;
use crate::object::Slot;
use crate::sandbox::Op;
use crate::telos::Telos;
use crate::world::slots_arg;

type ApiResult = Result<HttpResponse, ApiError>;

routes! {
    get "/health" => health,
    get "/openapi.json" => super::openapi::document,
    get "/objects" => list_objects,
    get "/objects/{oid}" => get_object,
    delete "/objects/{oid}" => delete_object,
    post "/objects/{oid}/clone" => clone_object,
    post "/objects/{oid}/send" => send,
    put "/objects/{oid}/slots/{name}" => put_slot,
    delete "/objects/{oid}/slots/{name}" => delete_slot,
    get "/objects/{oid}/methods/{name}" => get_method,
    post "/objects/{oid}/methods/{name}/rollback" => rollback_method,
    get "/personas" => list_personas,
    put "/personas/{name}" => set_persona,
    post "/personas/{name}/unload" => unload_persona,
    post "/memory/embed" => embed,
    get "/memory/search" => memory_search,
    get "/memory/records" => memory_records,
    get "/memory/map" => memory_map,
    post "/memory/records" => memory_remember,
    post "/memory/reindex" => memory_reindex,
    get "/runs" => list_runs,
    get "/jobs" => list_jobs,
    get "/approvals" => list_approvals,
    post "/runs/{run}/approve" => approve_run,
    post "/runs/{run}/reject" => reject_run,
}

/// The OpenAPI description of this module's routes (see [`super::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    health,
    list_objects,
    get_object,
    delete_object,
    clone_object,
    send,
    put_slot,
    delete_slot,
    get_method,
    rollback_method,
    list_personas,
    set_persona,
    unload_persona,
    embed,
    memory_search,
    memory_records,
    memory_map,
    memory_remember,
    memory_reindex,
    list_runs,
    list_jobs,
    list_approvals,
    approve_run,
    reject_run
))]
pub struct Doc;

/// `DELETE /api/objects/{oid}`.
#[derive(Serialize, utoipa::ToSchema)]
struct Deleted {
    deleted: String,
}

/// The optional body of a clone.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body `clone_object` reads by hand (it may be empty)
struct CloneBody {
    /// Slots of the new object: JSON values, or `{"$ref": oid}` references.
    #[schema(value_type = Option<std::collections::BTreeMap<String, Object>>)]
    slots: Option<Json>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Cloned {
    oid: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SendReply {
    /// The method's answer (any JSON value).
    #[schema(value_type = Object)]
    value: Json,
    /// What the methods logged with `log(...)`.
    logs: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SlotSet {
    oid: String,
    slot: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SlotRemoved {
    oid: String,
    removed: String,
}

/// A method slot: its source, where it came from and its earlier versions.
#[derive(Serialize, utoipa::ToSchema)]
struct MethodView {
    oid: String,
    name: String,
    /// `function name(self, ...args) { ... }`
    source: String,
    /// Who installed it: `user` or `kernel`.
    origin: String,
    /// Seconds since the epoch.
    installed_at: u64,
    /// How the kernel made it (prompt, recall, review, trial, models, stage times); null for
    /// methods a person installed.
    #[schema(value_type = Option<Object>)]
    provenance: Option<Json>,
    /// Earlier versions, oldest first.
    history: Vec<crate::object::MethodVersion>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Unloaded {
    persona: String,
    /// Whether a local model was loaded (and is now freed).
    unloaded: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Embedded {
    model: String,
    dims: usize,
    /// One normalised vector per text.
    vectors: Vec<Vec<f32>>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RecordsPage {
    /// Records in all (with the owner filter).
    total: u64,
    offset: u64,
    records: Vec<crate::memory::Record>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Reindexed {
    /// Records in the rebuilt index.
    records: usize,
    /// Retrievable objects re-chunked first (`{"objects": true}`).
    retrievable_objects: usize,
    ms: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Remembered {
    /// The new records' keys, in the order given.
    ids: Vec<u64>,
}

fn value_of(reply: Reply) -> Result<Json, ApiError> {
    reply.result.map_err(ApiError::from)
}

#[utoipa::path(get, path = "/api/health", tag = "world", responses((status = 200, description = "Objects, actors, memory, personas, backups and the commit log: what the server is doing", body = Object), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn health(telos: web::Data<Telos>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.health().await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Skip this many (slow deep into a large world: use `after`).
    offset: Option<u64>,
    /// The objects after this oid (the last oid of the page before): a cursor that stays fast
    /// at any depth. Not with `offset`.
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u64>,
}

#[utoipa::path(get, path = "/api/objects", tag = "objects", params(Page), responses((status = 200, description = "One page of objects, ordered by oid", body = Vec<crate::store::ObjectSummary>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn list_objects(telos: web::Data<Telos>, page: web::Query<Page>) -> ApiResult {
    let limit = page.limit.unwrap_or(100).min(1000);
    let objects = match (&page.after, page.offset) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "use either offset or after, not both",
            ));
        }
        (Some(after), None) => telos.world.list_after(after, limit).await?,
        (None, offset) => telos.world.list(offset.unwrap_or(0), limit).await?,
    };
    Ok(HttpResponse::Ok().json(objects))
}

#[utoipa::path(get, path = "/api/objects/{oid}", tag = "objects", params(("oid" = String, Path, description = "An object id")), responses((status = 200, body = crate::object::ObjectView), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn get_object(telos: web::Data<Telos>, oid: web::Path<String>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.view(&oid).await?))
}

#[utoipa::path(delete, path = "/api/objects/{oid}", tag = "objects", params(("oid" = String, Path, description = "An object id")), responses((status = 200, body = Deleted), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn delete_object(telos: web::Data<Telos>, oid: web::Path<String>) -> ApiResult {
    value_of(telos.call(&oid, Op::Delete).await)?;
    Ok(HttpResponse::Ok().json(Deleted {
        deleted: oid.into_inner(),
    }))
}

/// An optional JSON body: absent or empty means `{}`.
fn optional_body(body: &web::Bytes) -> Result<Json, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

#[utoipa::path(post, path = "/api/objects/{oid}/clone", tag = "objects", params(("oid" = String, Path, description = "An object id")), request_body(content = Option<CloneBody>, description = "Optional: slots of the new object"), responses((status = 201, description = "The clone (its parent is the object cloned)", body = Cloned), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn clone_object(
    telos: web::Data<Telos>,
    oid: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let body = optional_body(&body)?;
    let slots = slots_arg(body.get("slots"))?;
    let value = value_of(telos.call(&oid, Op::Clone { slots }).await)?;
    let oid = value["oid"].as_str().unwrap_or_default().to_string();
    Ok(HttpResponse::Created().json(Cloned { oid }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendBody {
    selector: String,
    #[serde(default)]
    args: Vec<Json>,
}

#[utoipa::path(post, path = "/api/objects/{oid}/send", tag = "objects", params(("oid" = String, Path, description = "An object id")), request_body = SendBody, responses((status = 200, description = "The method's answer (a miss is learned first; this can take minutes)", body = SendReply), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn send(
    telos: web::Data<Telos>,
    oid: web::Path<String>,
    body: web::Json<SendBody>,
) -> ApiResult {
    let SendBody { selector, args } = body.into_inner();
    let reply = telos.send(&oid, &selector, args).await;
    let logs = reply.logs.clone();
    let value = value_of(reply)?;
    Ok(HttpResponse::Ok().json(SendReply { value, logs }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SlotBody {
    value: Option<Json>,
    method: Option<String>,
}

#[utoipa::path(put, path = "/api/objects/{oid}/slots/{name}", tag = "objects", params(("oid" = String, Path, description = "An object id"), ("name" = String, Path, description = "A slot name")), request_body = SlotBody, responses((status = 200, body = SlotSet), (status = "default", description = "An error", body = super::error::ErrorBody)))]
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
    Ok(HttpResponse::Ok().json(SlotSet { oid, slot: name }))
}

#[utoipa::path(delete, path = "/api/objects/{oid}/slots/{name}", tag = "objects", params(("oid" = String, Path, description = "An object id"), ("name" = String, Path, description = "A slot name")), responses((status = 200, body = SlotRemoved), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn delete_slot(telos: web::Data<Telos>, path: web::Path<(String, String)>) -> ApiResult {
    let (oid, name) = path.into_inner();
    value_of(
        telos
            .call(&oid, Op::RemoveSlot { name: name.clone() })
            .await,
    )?;
    Ok(HttpResponse::Ok().json(SlotRemoved { oid, removed: name }))
}

#[utoipa::path(get, path = "/api/objects/{oid}/methods/{name}", tag = "objects", params(("oid" = String, Path, description = "An object id"), ("name" = String, Path, description = "A slot name")), responses((status = 200, body = MethodView), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn get_method(telos: web::Data<Telos>, path: web::Path<(String, String)>) -> ApiResult {
    let (oid, name) = path.into_inner();
    let obj = telos.object(&oid).await?;
    match obj.slots.get(&name) {
        Some(Slot::Method(m)) => Ok(HttpResponse::Ok().json(MethodView {
            oid,
            name,
            source: m.source.clone(),
            origin: m.origin.clone(),
            installed_at: m.installed_at,
            provenance: m.provenance.clone(),
            history: m.history.clone(),
        })),
        Some(Slot::Value(_)) => Err(ApiError::bad_request(format!(
            "{oid}.{name} is a value slot, not a method"
        ))),
        None => Err(ApiError::not_found(format!("{oid} has no method {name}"))),
    }
}

/// `POST /api/objects/{oid}/methods/{name}/rollback`: the previous version becomes current.
#[utoipa::path(post, path = "/api/objects/{oid}/methods/{name}/rollback", tag = "objects", params(("oid" = String, Path, description = "An object id"), ("name" = String, Path, description = "A slot name")), responses((status = 200, description = "The method after the rollback", body = MethodView), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn rollback_method(telos: web::Data<Telos>, path: web::Path<(String, String)>) -> ApiResult {
    let (oid, name) = path.into_inner();
    value_of(telos.call(&oid, Op::Rollback { name: name.clone() }).await)?;
    get_method(telos, web::Path::from((oid, name))).await
}

/// `GET /api/personas`: each persona's backend, model, settings and whether it is loaded.
#[utoipa::path(get, path = "/api/personas", tag = "personas", responses((status = 200, body = Vec<crate::actors::persona::PersonaView>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn list_personas(telos: web::Data<Telos>) -> ApiResult {
    // From the board: answers at once even while a persona is generating.
    Ok(HttpResponse::Ok().json(telos.persona_board.list()))
}

/// `PUT /api/personas/{name}` `{"backend", "model", "temperature", "max_tokens"}`.
#[utoipa::path(put, path = "/api/personas/{name}", tag = "personas", params(("name" = String, Path, description = "A persona name")), request_body = crate::llm::PersonaConfig, responses((status = 200, body = crate::actors::persona::PersonaView), (status = "default", description = "An error", body = super::error::ErrorBody)))]
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
#[utoipa::path(post, path = "/api/personas/{name}/unload", tag = "personas", params(("name" = String, Path, description = "A persona name")), responses((status = 200, body = Unloaded), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn unload_persona(telos: web::Data<Telos>, name: web::Path<String>) -> ApiResult {
    let name = name.into_inner();
    let unloaded = telos
        .personas
        .send(crate::actors::persona::Unload { name: name.clone() })
        .await
        .map_err(crate::actors::down(crate::actors::Who::Personas))??;
    Ok(HttpResponse::Ok().json(Unloaded {
        persona: name,
        unloaded,
    }))
}

/// Prometheus text: the world, the actors and the backups.
#[utoipa::path(get, path = "/metrics", tag = "world", responses((status = 200, description = "Prometheus text exposition (version 0.0.4)", content_type = "text/plain", body = String)))]
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
    for (name, help, value) in [
        (
            "telos_approvals_pending",
            "Generated methods waiting for a person's approval.",
            telos.approvals.count(),
        ),
        (
            "telos_jobs_running",
            "Long jobs running (backups, verifications, reindexing).",
            telos.jobs.count(),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    texts: Vec<String>,
}

/// `POST /api/memory/embed`: normalised MiniLM vectors of the given texts.
#[utoipa::path(post, path = "/api/memory/embed", tag = "memory", request_body = EmbedBody, responses((status = 200, body = Embedded), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn embed(telos: web::Data<Telos>, body: web::Json<EmbedBody>) -> ApiResult {
    let texts = body.into_inner().texts;
    if texts.len() > 256 {
        return Err(ApiError::bad_request("at most 256 texts per request"));
    }
    let vectors = telos.embedder.embed(texts).await?;
    Ok(HttpResponse::Ok().json(Embedded {
        model: crate::embed::EMBEDDER_ID.to_string(),
        dims: crate::embed::DIMS,
        vectors,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    q: String,
    k: Option<usize>,
    kind: Option<String>,
}

/// `GET /api/memory/search?q=&k=&kind=`: the nearest memories to `q`, closest first.
#[utoipa::path(get, path = "/api/memory/search", tag = "memory", params(SearchQuery), responses((status = 200, description = "The nearest memories, closest first", body = Vec<crate::memory::Found>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RecordsQuery {
    offset: Option<u64>,
    limit: Option<u64>,
    owner: Option<String>,
}

/// `GET /api/memory/records?offset=&limit=&owner=`: records, newest first, without vectors.
#[utoipa::path(get, path = "/api/memory/records", tag = "memory", params(RecordsQuery), responses((status = 200, body = RecordsPage), (status = "default", description = "An error", body = super::error::ErrorBody)))]
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
    Ok(HttpResponse::Ok().json(RecordsPage {
        total,
        offset,
        records,
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReindexBody {
    /// Also re-chunk every Retrievable object (after changes the indexer missed).
    #[serde(default)]
    objects: bool,
}

/// `POST /api/memory/reindex`: rebuilds the index from the stored vectors (nothing is
/// re-embedded); with `{"objects": true}` first re-chunks every Retrievable object.
#[utoipa::path(post, path = "/api/memory/reindex", tag = "memory", request_body(content = Option<ReindexBody>), responses((status = 200, body = Reindexed), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn memory_reindex(
    telos: web::Data<Telos>,
    body: Option<web::Json<ReindexBody>>,
) -> ApiResult {
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
    let started = std::time::Instant::now();
    let work = async {
        let mut objects = 0;
        if body.objects {
            let oids = telos.world.all_oids().await?;
            let indexer = telos.indexer();
            let total = oids.len() as u64;
            for (i, oid) in oids.into_iter().enumerate() {
                crate::progress::report("objects", i as u64, total);
                if crate::actors::retrievable::reindex(&indexer, &oid, false)
                    .await?
                    .is_some()
                {
                    objects += 1;
                }
            }
        }
        crate::progress::report("index", 0, 1);
        let records = telos
            .memory
            .send(crate::actors::memory::Reindex)
            .await
            .map_err(crate::actors::down(crate::actors::Who::Memory))??;
        crate::progress::report("index", 1, 1);
        Ok::<_, ApiError>((records, objects))
    };
    let (records, objects) = telos.jobs.run("reindex", "memory_manager", work).await?;
    Ok(HttpResponse::Ok().json(Reindexed {
        records,
        retrievable_objects: objects,
        ms: started.elapsed().as_millis() as u64,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RememberBody {
    items: Vec<crate::memory::NewMemory>,
}

/// `POST /api/memory/records` `{"items": [{"text", "kind"?, "prompt"?, "owner"?, "selector"?,
/// "source"?}]}`: embeds and remembers notes (one batch, one transaction). Answers the keys.
#[utoipa::path(post, path = "/api/memory/records", tag = "memory", request_body = RememberBody, responses((status = 201, body = Remembered), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn memory_remember(telos: web::Data<Telos>, body: web::Json<RememberBody>) -> ApiResult {
    let items = body.into_inner().items;
    if items.is_empty() || items.len() > 256 {
        return Err(ApiError::bad_request("give 1 to 256 items"));
    }
    let keys = crate::actors::memory::remember(&telos.embedder, &telos.memory, items).await?;
    Ok(HttpResponse::Created().json(Remembered { ids: keys }))
}

/// `GET /api/approvals`: kernel runs waiting for a person (`kernel_approval = "ask"`).
#[utoipa::path(get, path = "/api/approvals", tag = "kernel", responses((status = 200, description = "Runs waiting, oldest first", body = Vec<crate::kernel::approval::Request>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn list_approvals(telos: web::Data<Telos>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.approvals.pending()))
}

/// The body of an approval or rejection (optional for an approval).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Who decides (recorded in the method's provenance). Default: `api`.
    #[serde(default)]
    by: Option<String>,
    /// Why a method is rejected: the run fails with it, and the next attempt's prompt shows it
    /// to BRICK.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Decided {
    run: String,
    decision: &'static str,
}

/// Longest `by` and `reason` of a decision (the reason reaches BRICK's prompt).
const MAX_BY: usize = 100;
const MAX_REASON: usize = 2000;

fn decision_body(body: &web::Bytes) -> Result<(String, String), ApiError> {
    let body: DecisionBody = serde_json::from_value(optional_body(body)?).map_err(|e| {
        ApiError::bad_request(format!("the body must be {{\"by\"?, \"reason\"?}}: {e}"))
    })?;
    let by = body
        .by
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty());
    let by = by.unwrap_or_else(|| "api".to_string());
    let reason = body.reason.unwrap_or_default();
    if by.chars().count() > MAX_BY || reason.chars().count() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "`by` takes at most {MAX_BY} characters and `reason` at most {MAX_REASON}"
        )));
    }
    Ok((by, reason))
}

/// Hands `decision` to the run waiting under `run`.
fn decide(telos: &Telos, run: String, decision: crate::kernel::approval::Decision) -> ApiResult {
    let answer = match &decision {
        crate::kernel::approval::Decision::Approve { .. } => "approved",
        crate::kernel::approval::Decision::Reject { .. } => "rejected",
    };
    telos.approvals.decide(&run, decision)?;
    Ok(HttpResponse::Ok().json(Decided {
        run,
        decision: answer,
    }))
}

/// `POST /api/runs/{run}/approve` `{"by"?}`: installs the waiting method; its message is then
/// answered.
#[utoipa::path(post, path = "/api/runs/{run}/approve", tag = "kernel", params(("run" = String, Path, description = "A kernel run id (from its stage events or GET /api/approvals)")), request_body(content = Option<DecisionBody>), responses((status = 200, body = Decided), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn approve_run(
    telos: web::Data<Telos>,
    run: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let (by, _) = decision_body(&body)?;
    decide(
        &telos,
        run.into_inner(),
        crate::kernel::approval::Decision::Approve { by },
    )
}

/// `POST /api/runs/{run}/reject` `{"reason"?, "by"?}`: nothing is installed; the waiting
/// message is answered with an error naming the reason.
#[utoipa::path(post, path = "/api/runs/{run}/reject", tag = "kernel", params(("run" = String, Path, description = "A kernel run id (from its stage events or GET /api/approvals)")), request_body(content = Option<DecisionBody>), responses((status = 200, body = Decided), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn reject_run(
    telos: web::Data<Telos>,
    run: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let (by, reason) = decision_body(&body)?;
    decide(
        &telos,
        run.into_inner(),
        crate::kernel::approval::Decision::Reject { by, reason },
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RunsQuery {
    /// How many (default 50, at most 1000).
    limit: Option<u64>,
}

/// `GET /api/runs?limit=`: the most recent kernel runs, learned or failed, newest first.
#[utoipa::path(get, path = "/api/runs", tag = "kernel", params(RunsQuery), responses((status = 200, body = Vec<crate::store::Attempt>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn list_runs(telos: web::Data<Telos>, query: web::Query<RunsQuery>) -> ApiResult {
    let limit = query.limit.unwrap_or(50).min(1000);
    Ok(HttpResponse::Ok().json(telos.world.store().recent_attempts(limit).await?))
}

/// `GET /api/jobs`: long work running now (backups, verifications, reindexing) and how far
/// along it is; subscribers of the job's target object get the same as `progress` frames.
#[utoipa::path(get, path = "/api/jobs", tag = "world", responses((status = 200, description = "Running jobs, oldest first", body = Vec<crate::progress::JobEvent>), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn list_jobs(telos: web::Data<Telos>) -> ApiResult {
    Ok(HttpResponse::Ok().json(telos.jobs.list()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MapQuery {
    /// The newest this many records (default 1000, at most 5000).
    limit: Option<u64>,
}

/// One memory on the map.
#[derive(Serialize, utoipa::ToSchema)]
struct MapPoint {
    id: u64,
    x: f32,
    y: f32,
    kind: crate::memory::MemoryKind,
    owner: String,
    selector: String,
    /// The start of the record's text.
    text: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct MemoryMap {
    points: Vec<MapPoint>,
    /// The share of the vectors' variance each axis shows.
    explained: [f32; 2],
}

/// `GET /api/memory/map?limit=`: the newest records as points in 2-D (their vectors' first two
/// principal components): memories near in meaning are near on the map.
#[utoipa::path(get, path = "/api/memory/map", tag = "memory", params(MapQuery), responses((status = 200, body = MemoryMap), (status = "default", description = "An error", body = super::error::ErrorBody)))]
async fn memory_map(telos: web::Data<Telos>, query: web::Query<MapQuery>) -> ApiResult {
    // One projection at a time (each reads up to 5,000 vectors and iterates over them): many
    // pages asking at once wait instead of taking every core.
    static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = ONE_AT_A_TIME
        .acquire()
        .await
        .map_err(crate::error::TelosError::internal)?;
    let limit = query.limit.unwrap_or(1000).min(5000);
    let rows = telos.world.store().memory_with_vectors(limit).await?;
    let (rows, vectors): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    let (points, explained) = web::block(move || crate::memory::map::project(&vectors))
        .await
        .map_err(crate::error::TelosError::internal)?;
    let points = rows
        .into_iter()
        .zip(points)
        .map(|(r, [x, y])| MapPoint {
            id: r.key,
            x,
            y,
            kind: r.kind,
            owner: r.owner,
            selector: r.selector,
            text: r.text.chars().take(160).collect(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(MemoryMap { points, explained }))
}
