//! Test helpers: the real server on 127.0.0.1:0 with a fresh data dir, in-process (through the
//! same `Application::build` as `main`) or as a child process (for restarts and kill -9).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use actix_web::rt;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value as Json, json};
use telos::{Application, Settings};

pub struct TestApp {
    pub telos: telos::Telos,
    pub addr: SocketAddr,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub client: awc::Client,
}

pub fn test_settings(dir: &Path) -> Settings {
    Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: dir.join("data"),
        backup_dir: dir.join("backups"),
        // No language model in the black-box tests unless a test scripts one: a miss fails fast.
        persona_backend: telos::llm::BackendKind::Scripted,
        // Models load when a test first needs them, not at every start.
        llm_preload: false,
        ..Settings::default()
    }
}

/// Starts the server in-process with default settings (changed by `tweak`).
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("server builds");
    let addr = app.addr();
    let telos = app.telos().clone();
    rt::spawn(app.run_until_stopped());
    TestApp {
        telos,
        addr,
        base: format!("http://{addr}"),
        dir,
        client: client(),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// Over HTTP to the server at `base`: clones `genesis_obj` with `slots` and gives the clone
/// the method `name`; answers the new oid.
pub async fn object_with_method(
    c: &awc::Client,
    base: &str,
    slots: Json,
    name: &str,
    source: &str,
) -> String {
    let (s, b) = request(
        c,
        "POST",
        &format!("{base}/api/objects/genesis_obj/clone"),
        Some(json!({ "slots": slots })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let oid = b["oid"].as_str().expect("oid").to_string();
    let (s, b) = request(
        c,
        "PUT",
        &format!("{base}/api/objects/{oid}/slots/{name}"),
        Some(json!({ "method": source })),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    oid
}

/// Answers (status, JSON body) of a request; an empty body is `null`.
pub async fn request(
    client: &awc::Client,
    method: &str,
    url: &str,
    body: Option<Json>,
) -> (u16, Json) {
    let req = client.request(method.parse().expect("method"), url);
    let mut resp = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(64 << 20).await.expect("body");
    let json = if bytes.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }))
    };
    (status, json)
}

impl TestApp {
    pub async fn get(&self, path: &str) -> (u16, Json) {
        request(&self.client, "GET", &format!("{}{path}", self.base), None).await
    }
    pub async fn post(&self, path: &str, body: Json) -> (u16, Json) {
        request(
            &self.client,
            "POST",
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
    }
    pub async fn put(&self, path: &str, body: Json) -> (u16, Json) {
        request(
            &self.client,
            "PUT",
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
    }
    pub async fn delete(&self, path: &str) -> (u16, Json) {
        request(
            &self.client,
            "DELETE",
            &format!("{}{path}", self.base),
            None,
        )
        .await
    }

    /// Clones `parent` with `slots`; answers the new oid.
    pub async fn clone_obj(&self, parent: &str, slots: Json) -> String {
        let (status, body) = self
            .post(
                &format!("/api/objects/{parent}/clone"),
                json!({ "slots": slots }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["oid"].as_str().expect("oid").to_string()
    }

    pub async fn set_method(&self, oid: &str, name: &str, source: &str) {
        let (status, body) = self
            .put(
                &format!("/api/objects/{oid}/slots/{name}"),
                json!({ "method": source }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Sends over REST; answers (status, body).
    pub async fn send(&self, oid: &str, selector: &str, args: Json) -> (u16, Json) {
        self.post(
            &format!("/api/objects/{oid}/send"),
            json!({ "selector": selector, "args": args }),
        )
        .await
    }

    pub async fn ws(&self) -> Ws {
        Ws::connect(&self.base).await
    }

    /// Waits until `owner` has at least `n` memory records (learning happens after the
    /// answer; indexing after the change).
    pub async fn wait_for_memories(&self, owner: &str, n: u64) -> Json {
        // Generous: with the real model, a learn stage is a generation, and on a machine busy
        // with other work (two cores shared with the rest of the suite) it has taken over 60 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (_, records) = self
                .get(&format!("/api/memory/records?owner={owner}"))
                .await;
            if records["total"].as_u64().is_some_and(|t| t >= n) {
                return records;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{owner} never got {n} memories: {records}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Ws {
    framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
}

impl Ws {
    pub async fn connect(base: &str) -> Ws {
        let url = format!("{}/ws", base.replace("http://", "ws://"));
        let (_, framed) = client()
            .ws(url)
            .max_frame_size(64 << 20)
            .connect()
            .await
            .expect("websocket connects");
        Ws { framed }
    }

    pub fn from_framed(framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>) -> Ws {
        Ws { framed }
    }

    /// Whether the server closes the connection (within 30 s), skipping frames before that.
    pub async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.framed.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(awc::ws::Frame::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.framed
            .send(awc::ws::Message::Text(text.into()))
            .await
            .expect("frame sent");
    }

    pub async fn send_json(&mut self, frame: Json) {
        self.send_text(frame.to_string()).await;
    }

    /// The next text frame, as JSON (pings are skipped).
    pub async fn next(&mut self) -> Json {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.framed.next())
                .await
                .expect("a frame within 30 s")
                .expect("connection open")
                .expect("valid frame");
            if let awc::ws::Frame::Text(bytes) = frame {
                return serde_json::from_slice(&bytes).expect("JSON frame");
            }
        }
    }

    /// Collects frames until one satisfies `done` (included).
    pub async fn until(&mut self, done: impl Fn(&Json) -> bool) -> Vec<Json> {
        let mut frames = Vec::new();
        loop {
            let f = self.next().await;
            let last = done(&f);
            frames.push(f);
            if last {
                return frames;
            }
        }
    }

    /// Sends a frame with `id` and collects frames up to its `result` or `error`.
    pub async fn call(&mut self, mut frame: Json, id: &str) -> (Json, Vec<Json>) {
        frame["id"] = json!(id);
        self.send_json(frame).await;
        let mut others = Vec::new();
        loop {
            let f = self.next().await;
            if f["id"] == json!(id) && (f["type"] == "result" || f["type"] == "error") {
                return (f, others);
            }
            others.push(f);
        }
    }
}

/// The server as a child process of the real binary.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
}

impl ServerProcess {
    /// Starts `telos serve` on `data_dir` (backups beside it), waiting for its "listening on"
    /// line.
    pub fn start(data_dir: &Path) -> Result<ServerProcess, String> {
        Self::start_with(data_dir, &[])
    }

    /// [`ServerProcess::start`] with more `TELOS_*` (or other) variables.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Result<ServerProcess, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_telos"));
        cmd.arg("serve")
            .env("TELOS_BIND", "127.0.0.1:0")
            .env("TELOS_DATA_DIR", data_dir)
            .env("TELOS_BACKUP_DIR", data_dir.with_file_name("backups"))
            .env("TELOS_LOG", "warn")
            .env("TELOS_PERSONA_BACKEND", "scripted");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        match line.trim().strip_prefix("listening on ") {
            Some(base) => Ok(ServerProcess {
                base: base.to_string(),
                child,
            }),
            None => {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }

    /// Kills the server (SIGKILL) and answers everything it wrote on stderr.
    pub fn kill9_and_stderr(&mut self) -> String {
        self.kill9();
        let mut out = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut out);
        }
        out
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of the first sample line of `/metrics` that starts with `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl TestApp {
    /// `/metrics` as Prometheus text.
    pub async fn metrics(&self) -> String {
        let (s, body) = self.get("/metrics").await;
        assert_eq!(s, 200);
        body["raw"].as_str().expect("Prometheus text").to_string()
    }

    /// Asserts every one of `series` in `/metrics` has counted at least one event (counters
    /// are process-wide: other tests may have added to them).
    pub async fn assert_counted(&self, series: &[&str]) {
        let text = self.metrics().await;
        for series in series {
            assert!(
                sample(&text, series).unwrap_or(0.0) >= 1.0,
                "{series} in {text}"
            );
        }
    }
}
