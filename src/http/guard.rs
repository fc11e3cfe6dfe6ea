//! The browser and network boundary, checked once for every request before any handler runs.
//!
//! - **Host.** A request whose `Host` is not one of the server's names (loopback names, the bind
//!   address, `allowed_hosts`) is refused: a page that rebinds its own domain name to 127.0.0.1
//!   (DNS rebinding) still sends its own name as `Host`.
//! - **Origin.** A request carrying an `Origin` other than the server's own (including the
//!   opaque `null`) is refused: this is what stops a page on another site from driving the world
//!   through the WebSocket or a "simple" cross-site POST. Clients without `Origin` (the CLI,
//!   scripts) are not browsers and pass.
//! - **Content type.** POST, PUT and PATCH under `/api` need `Content-Type: application/json`
//!   (415 otherwise), so an HTML form or a `text/plain` fetch can never be a valid request.
//! - **Token.** With `admin_token` set, every state-changing request, `POST /api/memory/embed`,
//!   and (when bound off loopback) every read but `GET /api/health` and the page need
//!   `Authorization: Bearer TOKEN`, compared in constant time. The token is never read from the
//!   URL. The WebSocket may instead authenticate with a first `{"type":"auth","token":…}` frame
//!   (see `ws.rs`), because browsers cannot set headers on a WebSocket handshake.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, ResponseError, web};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::Settings;
use crate::error::TelosError;

/// The names and rules this server answers to.
#[derive(Debug, Clone)]
pub struct Boundary {
    /// Host names (lower case, without port) a request may name.
    names: Vec<String>,
    /// Bound to an unspecified address (0.0.0.0 or ::): any IP literal is one of our names.
    any_ip: bool,
    /// Bound to a loopback address.
    loopback: bool,
    /// SHA-256 of the admin token (None: no token configured).
    token: Option<[u8; 32]>,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equal in constant time (the digests have a fixed length, so no length leaks either).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `host[:port]` → `host` in lower case (IPv6 literals keep their brackets).
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if a.starts_with('[') {
        return match a.find(']') {
            Some(end) => a[..=end].to_string(),
            None => a,
        };
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => a,
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

impl Boundary {
    /// The boundary of a server with these settings listening on `addr`.
    pub fn new(settings: &Settings, addr: SocketAddr) -> Boundary {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        names.push(host_name(&settings.bind));
        names.push(match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        names.extend(
            settings
                .allowed_hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(host_name),
        );
        names.sort();
        names.dedup();
        Boundary {
            names,
            any_ip: addr.ip().is_unspecified(),
            loopback: addr.ip().is_loopback(),
            token: (!settings.admin_token.is_empty()).then(|| digest(&settings.admin_token)),
        }
    }

    fn allowed_host(&self, host: &str) -> bool {
        self.names.iter().any(|n| n == host) || (self.any_ip && is_ip_literal(host))
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the admin token (always true when none is configured).
    pub fn token_matches(&self, given: &str) -> bool {
        match &self.token {
            None => true,
            Some(t) => same(t, &digest(given)),
        }
    }

    /// Whether the request carries the admin token in its `Authorization` header.
    pub fn authorised(&self, req: &HttpRequest) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same(token, &digest(given.trim())))
    }

    /// Checks one request against every rule; `Err` is the answer to send instead.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let forbidden = |m: String| ApiError::from(TelosError::Forbidden(m));
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string())
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        if let Some(host) = &host
            && !self.allowed_host(&host_name(host))
        {
            return Err(ApiError {
                error: TelosError::Forbidden(format!(
                    "this server does not answer to the host name {host:?}: add it to allowed_hosts (TELOS_ALLOWED_HOSTS) if it is really this server"
                )),
                status: Some(StatusCode::MISDIRECTED_REQUEST),
            });
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .map(|a| a.trim_end_matches('/').to_ascii_lowercase());
            let same_origin = match (&authority, &host) {
                (Some(a), Some(h)) => {
                    *a == h.to_ascii_lowercase() && self.allowed_host(&host_name(a))
                }
                _ => false,
            };
            if !same_origin {
                return Err(forbidden(format!(
                    "requests from pages of another origin ({origin}) are refused: open the page this server serves"
                )));
            }
        }
        let path = req.path();
        let method = req.method();
        let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if path.starts_with("/api/")
            && matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        {
            let json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Err(ApiError {
                    error: TelosError::BadRequest(
                        "send the request with Content-Type: application/json".into(),
                    ),
                    status: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                });
            }
        }
        if self.token.is_some() && path != "/ws" {
            let open = matches!(
                (method, path),
                (
                    &Method::GET | &Method::HEAD,
                    "/" | "/app.js" | "/style.css" | "/api/health"
                )
            );
            let needs = !open && (writes || !self.loopback || path == "/api/memory/embed");
            if needs && !self.authorised(req) {
                return Err(forbidden(
                    "this server requires the admin token: send Authorization: Bearer TOKEN".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The middleware: answers a refused request itself; passes the others on.
pub async fn enforce(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refused = match req.app_data::<web::Data<Boundary>>() {
        Some(b) => b.check(req.request()).err(),
        None => Some(ApiError::from(TelosError::Internal(
            "the server has no boundary configured".into(),
        ))),
    };
    if let Some(err) = refused {
        tracing::debug!(path = req.path(), error = %err, "request refused at the boundary");
        let resp = err.error_response();
        return Ok(req.into_response(resp));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn boundary(token: &str, bind: &str) -> Boundary {
        let settings = Settings {
            bind: bind.into(),
            admin_token: token.into(),
            allowed_hosts: "telos.example, Other.Example:8443".into(),
            ..Settings::default()
        };
        Boundary::new(&settings, bind.parse().unwrap())
    }

    fn req(method: Method, path: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut r = TestRequest::default().method(method).uri(path);
        for (k, v) in headers {
            r = r.insert_header((*k, *v));
        }
        r.to_http_request()
    }

    #[test]
    fn host_names_are_read_without_ports() {
        assert_eq!(host_name("LocalHost:7777"), "localhost");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("evil.example"), "evil.example");
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        let b = boundary("", "127.0.0.1:7777");
        let ok = |h: &[(&str, &str)], m: Method, p: &str| b.check(&req(m, p, h)).is_ok();
        assert!(ok(
            &[("host", "127.0.0.1:7777")],
            Method::GET,
            "/api/objects"
        ));
        assert!(ok(&[("host", "telos.example")], Method::GET, "/"));
        assert!(ok(&[("host", "other.example:1")], Method::GET, "/"));
        assert!(!ok(&[("host", "evil.example:7777")], Method::GET, "/"));
        assert!(ok(
            &[
                ("host", "localhost:7777"),
                ("origin", "http://localhost:7777")
            ],
            Method::GET,
            "/ws"
        ));
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost:9999",
            "file://",
        ] {
            assert!(
                !ok(
                    &[("host", "localhost:7777"), ("origin", origin)],
                    Method::GET,
                    "/ws"
                ),
                "{origin}"
            );
        }
    }

    #[test]
    fn writes_need_json_and_the_token_when_one_is_set() {
        let b = boundary("s3cret", "127.0.0.1:7777");
        let h = [
            ("host", "127.0.0.1:7777"),
            ("content-type", "application/json"),
        ];
        let status = |r: Result<(), ApiError>| r.err().map(|e| e.status_code().as_u16());
        assert_eq!(
            status(b.check(&req(Method::POST, "/api/objects/x/send", &h))),
            Some(403)
        );
        let auth = [h[0], h[1], ("authorization", "Bearer s3cret")];
        assert_eq!(
            status(b.check(&req(Method::POST, "/api/objects/x/send", &auth))),
            None
        );
        let wrong = [h[0], h[1], ("authorization", "Bearer s3cre")];
        assert_eq!(
            status(b.check(&req(Method::POST, "/api/objects/x/send", &wrong))),
            Some(403)
        );
        let plain = [h[0], ("content-type", "text/plain"), auth[2]];
        assert_eq!(
            status(b.check(&req(Method::POST, "/api/objects/x/send", &plain))),
            Some(415)
        );
        // Reads on loopback stay open; embedding does not.
        assert_eq!(status(b.check(&req(Method::GET, "/api/objects", &h))), None);
        assert_eq!(
            status(b.check(&req(Method::POST, "/api/memory/embed", &h))),
            Some(403)
        );
        // The query string never carries the token.
        assert_eq!(
            status(b.check(&req(Method::POST, "/api/objects/x/send?token=s3cret", &h))),
            Some(403)
        );
        // Off loopback, reads need it too, but not the health check or the page.
        let open = boundary("s3cret", "0.0.0.0:7777");
        let h = [("host", "10.1.2.3:7777")];
        assert_eq!(
            status(open.check(&req(Method::GET, "/api/objects", &h))),
            Some(403)
        );
        assert_eq!(
            status(open.check(&req(Method::GET, "/api/health", &h))),
            None
        );
        assert_eq!(status(open.check(&req(Method::GET, "/", &h))), None);
        assert_eq!(
            status(open.check(&req(Method::GET, "/", &[("host", "evil.example")]))),
            Some(421)
        );
    }
}
