//! The example configurations for GPU machines (`config/ollama-gpu.toml`,
//! `config/openai-gpu.toml`), loaded as a user would and run against a stand-in model server
//! that speaks the Ollama or OpenAI protocol: an object learns a method through the real HTTP
//! backend, every persona asks for the model its section names, and a server error is a clear
//! error that changes nothing.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value as Json, json};

use crate::common::*;

/// What the stand-in server was asked.
#[derive(Debug, Clone)]
struct Asked {
    path: String,
    model: String,
    persona: String,
    authorization: Option<String>,
}

#[derive(Clone, Default)]
struct Stand {
    asked: Arc<Mutex<Vec<Asked>>>,
    /// Answer every request with a 500.
    broken: Arc<Mutex<bool>>,
}

/// The persona a request is for, read from its system message.
fn persona_of(body: &Json) -> String {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    ["BRICK", "ALFRED", "BABS", "ROBIN"]
        .into_iter()
        .find(|p| system.contains(&format!("You are {p}")))
        .unwrap_or("?")
        .to_string()
}

async fn chat(req: HttpRequest, body: web::Json<Json>, stand: web::Data<Stand>) -> HttpResponse {
    let persona = persona_of(&body);
    stand.asked.lock().unwrap().push(Asked {
        path: req.path().to_string(),
        model: body["model"].as_str().unwrap_or_default().to_string(),
        persona: persona.clone(),
        authorization: req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    if *stand.broken.lock().unwrap() {
        return HttpResponse::InternalServerError().body("out of GPU memory");
    }
    let text = match persona.as_str() {
        "BRICK" => {
            "```javascript\nfunction perimeter(self) {\n  return 2 * (self.width + self.height);\n}\n```"
        }
        "ALFRED" => "VALID: reads its own slots",
        "BABS" => "Answers the perimeter of a rectangle from its width and height slots.",
        _ => "Hello.",
    };
    if req.path() == "/api/chat" {
        HttpResponse::Ok().json(json!({
            "model": body["model"], "message": {"role": "assistant", "content": text},
            "done": true, "eval_count": 20,
        }))
    } else {
        HttpResponse::Ok().json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"completion_tokens": 20},
        }))
    }
}

/// Starts the stand-in model server on 127.0.0.1:0; answers its base URL.
fn stand_in(stand: Stand) -> String {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(stand.clone()))
            .route("/api/chat", web::post().to(chat))
            .route("/v1/chat/completions", web::post().to(chat))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("stand-in binds");
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    format!("http://{addr}")
}

fn tls_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// An HTTPS front for the plain stand-in at `plain` (`http://ADDR`), with the test server
/// certificate (signed by the test CA in `tests/fixtures/tls`); answers its `https://` URL.
async fn tls_front(plain: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(tls_fixture("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_fixture("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = plain.trim_start_matches("http://").to_string();
    actix_web::rt::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            actix_web::rt::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://127.0.0.1:{port}")
}

/// The example file loaded as `telos --config FILE` would, pointed at `url`, with this test's
/// directories (and `ca` as `llm_ca_file`).
async fn app_from_example(file: &str, url: &str, key: &str, ca: Option<&str>) -> TestApp {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let loaded = telos::Settings::load(Some(&path)).expect("the example config loads");
    let (url, key) = (url.to_string(), key.to_string());
    let ca = ca.unwrap_or_default().to_string();
    spawn_app_with(move |s| {
        let (bind, data, backups) = (s.bind.clone(), s.data_dir.clone(), s.backup_dir.clone());
        *s = loaded;
        (s.bind, s.data_dir, s.backup_dir) = (bind, data, backups);
        s.ollama_url = url.clone();
        s.openai_url = url;
        s.openai_api_key = key;
        s.llm_ca_file = ca;
    })
    .await
}

async fn learns_through(file: &str, dialect_path: &str, key: &str) {
    learns_through_over(file, dialect_path, key, false).await
}

async fn learns_through_over(file: &str, dialect_path: &str, key: &str, https: bool) {
    let stand = Stand::default();
    let mut url = stand_in(stand.clone());
    let ca = tls_fixture("ca.pem").display().to_string();
    if https {
        url = tls_front(&url).await;
    }
    let app = app_from_example(file, &url, key, https.then_some(ca.as_str())).await;
    let rect = app
        .clone_obj(
            "genesis_obj",
            json!({"name": "rect", "width": 3, "height": 4}),
        )
        .await;

    // A model server that fails: a clear error naming the server, nothing installed.
    *stand.broken.lock().unwrap() = true;
    let (s, body) = app.send(&rect, "perimeter", json!([])).await;
    assert_ne!(s, 200, "{body}");
    assert!(
        body.to_string().contains("out of GPU memory"),
        "the server's own words reach the user: {body}"
    );
    let (s, _) = app
        .get(&format!("/api/objects/{rect}/methods/perimeter"))
        .await;
    assert_eq!(s, 404);

    // The server works again: the object learns the method through it.
    *stand.broken.lock().unwrap() = false;
    stand.asked.lock().unwrap().clear();
    let other = app
        .clone_obj(
            "genesis_obj",
            json!({"name": "rect", "width": 3, "height": 4}),
        )
        .await;
    let (s, body) = app.send(&other, "perimeter", json!([])).await;
    assert_eq!((s, &body["value"]), (200, &json!(14)), "{body}");
    let (s, m) = app
        .get(&format!("/api/objects/{other}/methods/perimeter"))
        .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["origin"], "kernel");
    let loaded = telos::Settings::load(Some(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file),
    ))
    .unwrap();
    assert_eq!(
        m["provenance"]["brick"]["model"], loaded.personas["BRICK"].model,
        "{m}"
    );
    app.wait_for_memories(&other, 1).await;

    // Each persona asked for the model its section names, on the dialect's path.
    let asked = stand.asked.lock().unwrap().clone();
    for persona in ["BRICK", "ALFRED", "BABS"] {
        let a = asked
            .iter()
            .find(|a| a.persona == persona)
            .unwrap_or_else(|| panic!("{persona} was never asked: {asked:?}"));
        assert_eq!(a.path, dialect_path, "{a:?}");
        assert_eq!(a.model, loaded.personas[persona].model, "{a:?}");
        let want = (!key.is_empty()).then(|| format!("Bearer {key}"));
        assert_eq!(a.authorization, want, "{a:?}");
    }
}

#[actix_web::test]
async fn the_ollama_example_config_learns_through_an_ollama_server() {
    learns_through("config/ollama-gpu.toml", "/api/chat", "").await;
}

#[actix_web::test]
async fn the_openai_example_config_learns_through_a_compatible_server() {
    learns_through("config/openai-gpu.toml", "/v1/chat/completions", "sk-test").await;
}

#[actix_web::test]
async fn both_backends_learn_over_https_with_a_private_ca() {
    learns_through_over(
        "config/openai-gpu.toml",
        "/v1/chat/completions",
        "sk-test",
        true,
    )
    .await;
    learns_through_over("config/ollama-gpu.toml", "/api/chat", "", true).await;
}

#[actix_web::test]
async fn an_untrusted_certificate_is_a_clear_error() {
    use telos::llm::Backend as _;
    use telos::llm::remote::{Dialect, Remote};
    let url = tls_front(&stand_in(Stand::default())).await;
    // The backend blocks (it is called from the persona host's own thread); this runtime
    // keeps serving the stand-in meanwhile.
    let err = tokio::task::spawn_blocking(move || {
        let cfg = telos::llm::PersonaConfig::default();
        let messages = [telos::llm::Message::user("hi")];
        Remote::new(
            Dialect::OpenAi,
            &url,
            "sk",
            std::time::Duration::from_secs(10),
        )
        .complete("ROBIN", &cfg, &messages)
        .unwrap_err()
    })
    .await
    .unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot reach the model server") && text.contains("certificate"),
        "{text}"
    );
}
