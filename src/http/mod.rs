//! The HTTP edge: REST under `/api`, the WebSocket at `/ws`, the page at `/`.
//! Handlers only extract, call the [`Telos`] handle, and map; errors become `{code, message}`.

pub mod api;
pub mod backups;
pub mod error;
pub mod ws;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::app::Telos;
use error::ApiError;

/// The page, embedded so the binary serves it from anywhere (no build step, no CDN).
const INDEX_HTML: &str = include_str!("../../frontend/index.html");
const APP_JS: &str = include_str!("../../frontend/app.js");
const STYLE_CSS: &str = include_str!("../../frontend/style.css");

/// Builds the HTTP server over `listener`.
pub fn server(
    telos: Telos,
    backups: actix::Addr<crate::actors::backup::BackupActor>,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let max_body = telos.settings.max_frame_bytes();
    let data = web::Data::new(telos);
    let backups = web::Data::new(backups);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(backups.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .error_handler(|err, _| ApiError::from_json_error(err).into()),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|err, _| ApiError::bad_request(err.to_string()).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|err, _| ApiError::bad_request(err.to_string()).into()),
            )
            .service(
                web::scope("/api")
                    .configure(api::configure)
                    .configure(backups::configure),
            )
            .route("/metrics", web::get().to(api::metrics))
            .route("/ws", web::get().to(ws::index))
            .route("/", web::get().to(index))
            .route("/app.js", web::get().to(app_js))
            .route("/style.css", web::get().to(style_css))
            .default_service(web::to(not_found))
    })
    .workers(2)
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    Ok(server)
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(APP_JS)
}

async fn style_css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLE_CSS)
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

/// Checks the admin token (when one is configured) on a request that changes the world.
pub fn authorise(telos: &Telos, req: &HttpRequest) -> Result<(), ApiError> {
    let token = &telos.settings.admin_token;
    if token.is_empty() {
        return Ok(());
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or_else(|| {
            web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.get("token").cloned())
        });
    if given.as_deref() == Some(token.as_str()) {
        Ok(())
    } else {
        Err(ApiError::from(crate::error::TelosError::Forbidden(
            "this server requires the admin token (Authorization: Bearer TOKEN)".into(),
        )))
    }
}
