//! The HTTP edge: REST under `/api`, the WebSocket at `/ws`, the page at `/`.
//! Handlers only extract, call the [`Telos`] handle, and map; errors become `{code, message}`.

/// Registers a module's routes and lists them in `ROUTES` (method, path under `/api`): the one
/// table both come from, so the OpenAPI test can check that every registered route is
/// documented.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route this module registers: (method, path under `/api`).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
            $(cfg.route($path, actix_web::web::$method().to($handler));)*
        }
    };
}

pub mod api;
pub mod backups;
pub mod error;
pub mod guard;
pub mod hub;
pub mod openapi;
pub mod ws;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::telos::Telos;
use error::ApiError;

/// The page, embedded so the binary serves it from anywhere (no build step, no CDN).
const INDEX_HTML: &str = include_str!("../../frontend/index.html");
const APP_JS: &str = include_str!("../../frontend/app.js");
const STYLE_CSS: &str = include_str!("../../frontend/style.css");

/// The routes outside `/api` (registered below, in this order), besides the page's files.
pub const ROOT_ROUTES: &[(&str, &str)] = &[("get", "/metrics"), ("get", "/ws")];

/// Builds the HTTP server over `listener`.
pub fn server(
    telos: Telos,
    backups: crate::actors::backup::Backups,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let max_body = telos.settings.max_frame_bytes();
    let boundary = web::Data::new(guard::Boundary::new(
        &telos.settings,
        listener.local_addr()?,
    ));
    let max_connections = telos.settings.max_connections;
    let hub = web::Data::from(hub::Hub::start(&telos.world, &telos.jobs));
    let data = web::Data::new(telos);
    let backups = web::Data::new(backups);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(guard::enforce))
            .app_data(boundary.clone())
            .app_data(data.clone())
            .app_data(backups.clone())
            .app_data(hub.clone())
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
            .route(ROOT_ROUTES[0].1, web::get().to(api::metrics))
            .route(ROOT_ROUTES[1].1, web::get().to(ws::index))
            .route("/", web::get().to(index))
            .route("/app.js", web::get().to(app_js))
            .route("/style.css", web::get().to(style_css))
            .default_service(web::to(not_found))
    })
    .workers(2)
    // Per worker: two workers hold at most twice this many connections.
    .max_connections(max_connections.div_ceil(2).max(1))
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
