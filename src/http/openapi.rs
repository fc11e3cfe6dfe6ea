//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every route, generated from the
//! handlers' `#[utoipa::path]` attributes and the request and response types they use.

use actix_web::HttpResponse;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, SecurityRequirement, Server};

/// The routes outside `/api` (the page's files are not API).
#[derive(utoipa::OpenApi)]
#[openapi(paths(super::api::metrics, super::ws::index, document))]
struct Root;

/// The whole document.
pub fn openapi() -> OpenApi {
    let mut doc = Root::openapi();
    doc.merge(super::api::Doc::openapi());
    doc.merge(super::backups::Doc::openapi());
    doc.info = InfoBuilder::new()
        .title("TelOS")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "A live, persistent world of prototype objects that learn. Errors are \
             `{code, message}` with a fitting status. With `admin_token` set, state-changing \
             requests (and, off loopback, reads but `/api/health`) need \
             `Authorization: Bearer TOKEN`; a browser page on another origin is refused.",
        ))
        .build();
    doc.servers = Some(vec![Server::new("/")]);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_token",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    // Optional: a server without a token needs none.
    doc.security = Some(vec![
        SecurityRequirement::default(),
        SecurityRequirement::new("admin_token", Vec::<String>::new()),
    ]);
    doc
}

/// `GET /api/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "world",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
        (status = "default", description = "An error", body = super::error::ErrorBody)
    )
)]
pub async fn document() -> HttpResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOC.get_or_init(|| openapi().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(text.as_str())
}

/// Every registered route: (method, full path).
pub fn routes() -> Vec<(&'static str, String)> {
    let api = super::api::ROUTES.iter().chain(super::backups::ROUTES);
    api.map(|(m, p)| (*m, format!("/api{p}")))
        .chain(super::ROOT_ROUTES.iter().map(|(m, p)| (*m, p.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks every registered route (they are registered from the same tables) and checks the
    /// document describes it, and describes nothing else.
    #[test]
    fn every_registered_route_is_documented_and_nothing_else() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let routes = routes();
        assert!(routes.len() > 25, "{routes:?}");
        for (method, path) in &routes {
            let op = &paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"))[method];
            assert!(
                op.is_object(),
                "{method} {path} is not in the OpenAPI document"
            );
            assert!(
                op["responses"]["default"].is_object() || path == "/ws" || path == "/metrics",
                "{method} {path} does not describe its errors"
            );
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            documented,
            routes.len(),
            "the document describes routes nobody registered"
        );
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
