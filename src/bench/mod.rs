//! `telos bench`: measures a real server in a temporary data dir and prints the figures, and
//! `telos send`: the command-line client.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value as Json, json};

use crate::app::{Application, Telos};
use crate::config::Settings;
use crate::line;
use crate::sandbox::{Op, Outcome};

/// POSTs `body` to `server` + `path` with the admin token if one is set; answers the JSON
/// body of a success, or an error carrying the server's `code: message`.
async fn post_json(
    server: &str,
    path: &str,
    body: Json,
    settings: &Settings,
) -> anyhow::Result<Json> {
    request_json(server, path, &[], Some(body), settings).await
}

/// GETs `server` + `path` with `query` (form-encoded by awc; see [`post_json`]).
async fn get_json(
    server: &str,
    path: &str,
    query: &[(&str, String)],
    settings: &Settings,
) -> anyhow::Result<Json> {
    request_json(server, path, query, None, settings).await
}

/// An oid as a path segment: refused unless it is one (nothing else reaches the URL).
fn oid_segment(oid: &str) -> anyhow::Result<&str> {
    if oid.is_empty()
        || oid.len() > 128
        || !oid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        bail!("{oid:?} is not an object id");
    }
    Ok(oid)
}

fn print_json(v: &Json) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `telos objects [--filter TEXT]`: every object (oid and name), paged through the server.
pub async fn cli_objects(
    server: &str,
    filter: Option<&str>,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let needle = filter.map(str::to_lowercase);
    let mut all = Vec::new();
    let mut offset = 0u64;
    loop {
        let page = get_json(
            server,
            "/api/objects",
            &[("offset", offset.to_string()), ("limit", "1000".into())],
            settings,
        )
        .await?;
        let rows = page.as_array().cloned().unwrap_or_default();
        let n = rows.len() as u64;
        all.extend(rows.into_iter().filter(|o| match &needle {
            None => true,
            Some(t) => ["oid", "name"].iter().any(|k| {
                o[k].as_str()
                    .is_some_and(|v| v.to_lowercase().contains(t.as_str()))
            }),
        }));
        if n < 1000 {
            break;
        }
        offset += n;
    }
    if json {
        return print_json(&Json::Array(all));
    }
    for o in &all {
        println!(
            "{:<20} {}",
            o["oid"].as_str().unwrap_or_default(),
            o["name"].as_str().unwrap_or_default()
        );
    }
    eprintln!("{} objects", all.len());
    Ok(())
}

/// `telos show OID`: an object's slots, parents and methods.
pub async fn cli_show(
    server: &str,
    oid: &str,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let o = get_json(
        server,
        &format!("/api/objects/{}", oid_segment(oid)?),
        &[],
        settings,
    )
    .await?;
    if json {
        return print_json(&o);
    }
    println!(
        "{} ({})  version {}",
        o["oid"].as_str().unwrap_or_default(),
        o["name"].as_str().unwrap_or_default(),
        o["version"]
    );
    let parents: Vec<&str> = o["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    println!("parents: {}", parents.join(", "));
    for (name, value) in o["slots"].as_object().into_iter().flatten() {
        match value.get("method") {
            Some(m) if value.as_object().is_some_and(|v| v.len() == 1) => println!(
                "  {name}: method ({}){}\n{}",
                m["origin"].as_str().unwrap_or_default(),
                if m["history"].as_array().is_some_and(|h| !h.is_empty()) {
                    format!(
                        ", {} earlier versions",
                        m["history"].as_array().map_or(0, Vec::len)
                    )
                } else {
                    String::new()
                },
                m["source"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            _ => println!("  {name} = {value}"),
        }
    }
    Ok(())
}

/// `telos memory search TEXT`: the nearest memories, closest first.
pub async fn cli_memory_search(
    server: &str,
    text: &str,
    k: usize,
    kind: Option<&str>,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let mut query = vec![("q", text.to_string()), ("k", k.to_string())];
    if let Some(kind) = kind {
        query.push(("kind", kind.to_string()));
    }
    let found = get_json(server, "/api/memory/search", &query, settings).await?;
    if json {
        return print_json(&found);
    }
    let hits = found.as_array().cloned().unwrap_or_default();
    if hits.is_empty() {
        println!("no memories");
    }
    for m in hits {
        println!(
            "#{:<6} {:.3}  {:<6} {}{}",
            m["id"],
            m["distance"].as_f64().unwrap_or(f64::NAN),
            m["kind"].as_str().unwrap_or_default(),
            m["text"].as_str().unwrap_or_default(),
            match m["owner"].as_str() {
                Some(o) if !o.is_empty() => format!("  (owner {o})"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// `telos runs`: the most recent kernel runs, newest first.
pub async fn cli_runs(
    server: &str,
    limit: u64,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let runs = get_json(
        server,
        "/api/runs",
        &[("limit", limit.to_string())],
        settings,
    )
    .await?;
    if json {
        return print_json(&runs);
    }
    let runs = runs.as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        println!("no kernel runs yet");
    }
    for r in runs {
        let at = r["at"]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let outcome = if r["ok"] == true {
            "learned".to_string()
        } else {
            format!(
                "failed at {}: {}",
                r["stage"].as_str().unwrap_or_default(),
                r["reason"].as_str().unwrap_or_default()
            )
        };
        println!(
            "{at}  {}  {}.{}  {} ms  {outcome}",
            r["run"].as_str().unwrap_or_default(),
            r["receiver"].as_str().unwrap_or_default(),
            r["selector"].as_str().unwrap_or_default(),
            r["ms"],
        );
    }
    Ok(())
}

async fn request_json(
    server: &str,
    path: &str,
    query: &[(&str, String)],
    body: Option<Json>,
    settings: &Settings,
) -> anyhow::Result<Json> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(3600))
        .finish();
    let mut req = match body {
        Some(_) => client.post(&url),
        None => client.get(&url),
    };
    if !query.is_empty() {
        req = req.query(&query).context("encoding the query")?;
    }
    if !settings.admin_token.is_empty() {
        req = req.bearer_auth(&settings.admin_token);
    }
    let sent = match body {
        Some(body) => req.send_json(&body).await,
        None => req.send().await,
    };
    let mut resp = sent.map_err(|e| anyhow!("cannot reach {server}: {e}"))?;
    let body: Json = resp
        .json()
        .limit(64 << 20)
        .await
        .context("reading the answer")?;
    if resp.status().is_success() {
        Ok(body)
    } else {
        bail!(
            "{}: {}",
            body["code"].as_str().unwrap_or("error"),
            body["message"].as_str().unwrap_or_default()
        )
    }
}

/// `telos send 'obj.sel(args)'` against a running server.
pub async fn cli_send(server: &str, text: &str, settings: &Settings) -> anyhow::Result<()> {
    let Some(msg) = line::parse(text)? else {
        bail!("not a message send: write target.selector(json args), e.g. genesis_obj.name");
    };
    let path = format!("/api/objects/{}/send", msg.target);
    let body = json!({ "selector": msg.selector, "args": msg.args });
    let answer = post_json(server, &path, body, settings).await?;
    for log in answer["logs"].as_array().into_iter().flatten() {
        eprintln!("log: {}", log.as_str().unwrap_or_default());
    }
    println!("{}", serde_json::to_string_pretty(&answer["value"])?);
    Ok(())
}

/// A job's progress on stderr: a bar on a terminal; elsewhere (a log, a pipe, CI) one line
/// when a phase starts and one when it completes.
struct JobView {
    bar: indicatif::ProgressBar,
    kind: String,
    plain: bool,
    /// The phase last printed (plain output), and whether its completion was.
    printed: std::sync::Mutex<(String, bool)>,
}

impl JobView {
    fn new(kind: &str) -> JobView {
        use std::io::IsTerminal as _;
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{kind} {{msg:>18}} [{{bar:32}}] {{pos}}/{{len}} ({{elapsed}})"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        JobView {
            bar,
            kind: kind.to_string(),
            plain: !std::io::stderr().is_terminal(),
            printed: std::sync::Mutex::default(),
        }
    }

    fn show(&self, job: &crate::progress::JobEvent) {
        if !self.plain {
            self.bar.set_message(job.phase.clone());
            self.bar.set_length(job.total);
            self.bar.set_position(job.done);
            return;
        }
        let mut printed = self.printed.lock().unwrap_or_else(|p| p.into_inner());
        let complete = job.total > 0 && job.done >= job.total;
        if printed.0 != job.phase || (complete && !printed.1) {
            eprintln!("{}: {} {}/{}", self.kind, job.phase, job.done, job.total);
            *printed = (job.phase.clone(), complete);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `work` (a request to `server` that starts a job of `kind` on `target`) with its
/// progress shown as it happens: the WebSocket's `progress` frames to `target`'s watchers
/// carry every phase change and the end. Without a WebSocket, `work` runs without progress.
async fn with_server_bar<T>(
    server: &str,
    kind: &str,
    target: &str,
    settings: &Settings,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let Some(mut feed) = progress_feed(server, target, settings).await else {
        return work.await;
    };
    let view = JobView::new(kind);
    let mut job: Option<String> = None;
    let mut ended = false;
    // Answers whether `frame` ended this kind's job.
    let mut show = |frame: &Json| -> bool {
        if frame["type"] != "progress" || frame["kind"] != kind {
            return false;
        }
        let id = frame["job"].as_str().unwrap_or_default();
        if job.get_or_insert_with(|| id.to_string()) != id {
            return false;
        }
        let event = crate::progress::JobEvent {
            id: id.to_string(),
            kind: kind.to_string(),
            target: target.to_string(),
            phase: frame["phase"].as_str().unwrap_or_default().to_string(),
            done: frame["done"].as_u64().unwrap_or(0),
            total: frame["total"].as_u64().unwrap_or(0),
            state: frame["state"].as_str().unwrap_or_default().to_string(),
            started_at: String::new(),
        };
        view.show(&event);
        event.state != "running"
    };
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            frame = next_json(&mut feed) => match frame {
                Some(frame) => ended |= show(&frame),
                None => break work.await,
            },
        }
    };
    // The job's last frames can arrive just after the answer: show them (briefly).
    let drain = async {
        while !ended {
            match next_json(&mut feed).await {
                Some(frame) => ended |= show(&frame),
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    view.finish();
    let _ = feed.close().await;
    out
}

type Feed = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// A WebSocket to `server` subscribed to `target` (None if it cannot be had).
async fn progress_feed(server: &str, target: &str, settings: &Settings) -> Option<Feed> {
    let url = format!("{}/ws", server.replacen("http", "ws", 1));
    let mut ws = awc::Client::new().ws(&url);
    if !settings.admin_token.is_empty() {
        ws = ws.bearer_auth(&settings.admin_token);
    }
    let subscribe = async {
        let (_, mut feed) = ws.connect().await.ok()?;
        let frame = json!({"type": "subscribe", "target": target});
        feed.send(awc::ws::Message::Text(frame.to_string().into()))
            .await
            .ok()?;
        loop {
            let frame = next_json(&mut feed).await?;
            if frame["type"] == "subscribed" {
                return Some(feed);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), subscribe)
        .await
        .ok()
        .flatten()
}

/// The next JSON text frame (None when the socket ends or fails).
async fn next_json(feed: &mut Feed) -> Option<Json> {
    loop {
        match feed.next().await? {
            Ok(awc::ws::Frame::Text(text)) => {
                if let Ok(frame) = serde_json::from_slice(&text) {
                    return Some(frame);
                }
            }
            // The server drops a client it has not heard from for 30 s: answer its pings.
            Ok(awc::ws::Frame::Ping(ping)) => {
                feed.send(awc::ws::Message::Pong(ping)).await.ok()?;
            }
            Ok(awc::ws::Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Runs `work` here as a job of `kind`, with a progress bar (`telos verify`, `telos restore`).
pub async fn with_local_bar<T>(
    kind: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let jobs = crate::progress::Jobs::default();
    let mut feed = jobs.subscribe();
    let view = JobView::new(kind);
    let draw = async {
        while let Ok(job) = feed.recv().await {
            view.show(&job);
        }
    };
    let out = tokio::select! {
        out = jobs.run(kind, "", work) => out,
        () = draw => unreachable!("the feed lives as long as the jobs"),
    };
    view.finish();
    out
}

/// `telos backup [--full]` against a running server.
pub async fn cli_backup(server: &str, full: bool, settings: &Settings) -> anyhow::Result<()> {
    let kind = if full { "full" } else { "incremental" };
    let post = post_json(server, "/api/backups", json!({ "kind": kind }), settings);
    let m = with_server_bar(server, "backup", "backup_manager", settings, post).await?;
    println!(
        "backup {} ({}): {} objects in the world, {} rows written",
        m["id"].as_str().unwrap_or_default(),
        m["kind"].as_str().unwrap_or_default(),
        m["total_objects"],
        m["counts"]["object"]
    );
    Ok(())
}

/// `telos reindex`: asks a running server to rebuild its memory index.
pub async fn cli_reindex(server: &str, objects: bool, settings: &Settings) -> anyhow::Result<()> {
    let post = post_json(
        server,
        "/api/memory/reindex",
        json!({ "objects": objects }),
        settings,
    );
    let r = with_server_bar(server, "reindex", "memory_manager", settings, post).await?;
    println!(
        "memory index rebuilt: {} records ({} Retrievable objects re-chunked) in {} ms",
        r["records"], r["retrievable_objects"], r["ms"]
    );
    Ok(())
}

/// `telos approvals`: the kernel runs waiting for a person.
pub async fn cli_approvals(server: &str, json: bool, settings: &Settings) -> anyhow::Result<()> {
    let pending = get_json(server, "/api/approvals", &[], settings).await?;
    if json {
        return print_json(&pending);
    }
    let pending = pending.as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        println!("no kernel run is waiting for approval");
    }
    for r in pending {
        let args: Vec<String> = r["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        println!(
            "run {}  {}.{}({})  asked {} (rejected after {} s)\n  review: {}\n  trial:  {}\n{}\n",
            r["run"].as_str().unwrap_or_default(),
            r["receiver"].as_str().unwrap_or_default(),
            r["selector"].as_str().unwrap_or_default(),
            args.join(", "),
            r["asked_at"].as_str().unwrap_or_default(),
            r["timeout_secs"],
            r["review"].as_str().unwrap_or_default(),
            r["trial"],
            r["code"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

/// `telos approve RUN [--reject --reason TEXT]`.
pub async fn cli_approve(
    server: &str,
    run: &str,
    reject: Option<String>,
    by: &str,
    settings: &Settings,
) -> anyhow::Result<()> {
    let (verb, body) = match reject {
        None => ("approve", json!({ "by": by })),
        Some(reason) => ("reject", json!({ "by": by, "reason": reason })),
    };
    if run.is_empty() || !run.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("{run:?} is not a kernel run id (see `telos approvals`)");
    }
    let r = post_json(server, &format!("/api/runs/{run}/{verb}"), body, settings).await?;
    println!("run {run}: {}", r["decision"].as_str().unwrap_or(verb));
    Ok(())
}

pub mod busy;
pub mod kernel;
pub mod learning;
pub mod load;
pub mod memory;
pub mod scale;
pub mod soak;
pub mod store;

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One memory search as `GET /api/memory/search` makes it (`actors::memory::search`), timed in
/// its two parts: answers (embedding the query, the whole search).
pub(crate) async fn timed_search(
    telos: &Telos,
    query: String,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let mut vectors = telos.embedder.embed(vec![query.clone()]).await?;
    let embed = t.elapsed();
    telos
        .memory
        .send(crate::actors::memory::Search {
            query,
            k: 3,
            kind: None,
            vector: vectors.pop().unwrap_or_default(),
        })
        .await
        .map_err(|e| anyhow!("{e}"))??;
    Ok((embed, t.elapsed()))
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Lets this process open enough sockets for a thousand WebSocket clients.
pub(crate) fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Points `settings` at a fresh embedded world in a temporary directory named after `name`,
/// listening on a free loopback port; answers the directory (removed by the caller).
pub(crate) fn scratch_world(settings: &mut Settings, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    settings.data_dir = dir.clone();
    settings.db_url.clear();
    settings.bind = "127.0.0.1:0".into();
    dir
}

/// Runs every measurement and prints one line per figure.
pub fn run(mut settings: Settings, sends: usize, round_trips: usize) -> anyhow::Result<()> {
    raise_fd_limit();
    let dir = scratch_world(&mut settings, "telos-bench");
    settings.wall_time_ms = 120_000;
    settings.ws_rate_per_sec = 100_000;
    // No model is needed here: loading one would take the CPU these figures measure.
    settings.llm_preload = false;
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let addr = app.addr();
        let telos = app.telos().clone();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let r = measure(&telos, addr, sends, round_trips).await;
        server.abort();
        r
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn install(telos: &Telos, parent: &str, slots: Json) -> anyhow::Result<String> {
    let slots = slots.as_object().cloned().unwrap_or_default();
    let v = telos
        .call(parent, Op::Clone { slots })
        .await
        .result
        .map_err(|e| anyhow!("{e}"))?;
    Ok(v["oid"].as_str().unwrap_or_default().to_string())
}

async fn method(telos: &Telos, oid: &str, name: &str, source: &str) -> anyhow::Result<()> {
    telos
        .call(
            oid,
            Op::SetMethod {
                name: name.into(),
                source: source.into(),
            },
        )
        .await
        .result
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

async fn measure(
    telos: &Telos,
    addr: std::net::SocketAddr,
    sends: usize,
    round_trips: usize,
) -> anyhow::Result<()> {
    println!("# telos bench (2 script threads; figures from this run)");
    let rect = install(telos, "genesis_obj", json!({"w": 3, "h": 4})).await?;
    method(
        telos,
        &rect,
        "area",
        "function area(self) { return self.w * self.h; }",
    )
    .await?;
    method(
        telos,
        &rect,
        "loop",
        "function loop(self, n) { let s = 0; for (let i = 0; i < n; i++) s += self.area(); return s; }",
    )
    .await?;

    // 1. Sends inside one operation, on one script thread (one core): host dispatch, lookup,
    //    argument and result marshalling, method call.
    let t = Instant::now();
    let v = telos.send(&rect, "loop", vec![json!(sends)]).await.result;
    let el = t.elapsed();
    anyhow::ensure!(v.ok() == Some(json!(12 * sends)), "loop answered wrongly");
    println!(
        "in-process sends, one object, one script thread: {:.0} sends/s ({sends} sends in {:.2} s)",
        sends as f64 / el.as_secs_f64(),
        el.as_secs_f64()
    );

    // 2. Top-level operations straight to the script threads (no actor hop), one at a time.
    let n = (sends / 10).max(1000);
    let exec = telos.exec.clone();
    let rect2 = rect.clone();
    let (el, ok) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut ok = true;
        for _ in 0..n {
            let out = exec.run_blocking(
                &rect2,
                Op::Send {
                    selector: "area".into(),
                    args: vec![],
                },
            );
            ok &= matches!(out, Ok(Outcome::Done { .. }));
        }
        (t.elapsed(), ok)
    })
    .await?;
    anyhow::ensure!(ok, "a top-level send failed");
    println!(
        "top-level sends via script threads, sequential: {:.0} sends/s ({n} in {:.2} s)",
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64()
    );

    // 3. Through the actors, 64 in flight: one object, then 1,000 objects round-robin.
    let (rate, _) = actor_sends(telos, std::slice::from_ref(&rect), n).await?;
    println!("top-level sends via ObjectActor, one object, 64 in flight: {rate:.0} sends/s");
    let mut many = Vec::with_capacity(1000);
    for i in 0..1000 {
        many.push(install(telos, &rect, json!({ "w": i, "h": 2 })).await?);
    }
    let (rate, _) = actor_sends(telos, &many, n).await?;
    println!(
        "top-level sends via ObjectActor, 1,000 objects round-robin, 64 in flight: {rate:.0} sends/s"
    );

    // 4. WebSocket round trips on loopback.
    for clients in [100usize, 1000] {
        let (p50, p99, total) = ws_round_trips(addr, &rect, clients, round_trips).await?;
        println!(
            "websocket round trip, {clients} concurrent clients x {round_trips}: p50 {:.2} ms, p99 {:.2} ms ({total} round trips)",
            ms(p50),
            ms(p99)
        );
    }
    Ok(())
}

async fn actor_sends(telos: &Telos, targets: &[String], n: usize) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let mut done = 0usize;
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    let mut next = 0usize;
    while done < n {
        while inflight.len() < 64 && next < n {
            let target = targets[next % targets.len()].clone();
            let telos = telos.clone();
            inflight.push(async move { telos.send(&target, "area", vec![]).await });
            next += 1;
        }
        if let Some(reply) = inflight.next().await {
            reply.result.map_err(|e| anyhow!("{e}"))?;
            done += 1;
        }
    }
    Ok((n as f64 / t.elapsed().as_secs_f64(), done))
}

async fn ws_round_trips(
    addr: std::net::SocketAddr,
    target: &str,
    clients: usize,
    round_trips: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let url = format!("ws://{addr}/ws");
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (_, framed) = awc::Client::new()
            .ws(&url)
            .connect()
            .await
            .map_err(|e| anyhow!("connecting a websocket client: {e}"))?;
        conns.push(framed);
    }
    let tasks = conns.into_iter().map(|mut framed| {
        let target = target.to_string();
        async move {
            let mut lat = Vec::with_capacity(round_trips);
            for i in 0..round_trips {
                let frame =
                    json!({"type":"send","id":i,"target":target,"selector":"area","args":[]});
                let t = Instant::now();
                framed
                    .send(awc::ws::Message::Text(frame.to_string().into()))
                    .await?;
                loop {
                    match framed.next().await {
                        Some(Ok(awc::ws::Frame::Text(_))) => break,
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(anyhow!("websocket: {e}")),
                        None => bail!("websocket closed"),
                    }
                }
                lat.push(t.elapsed());
            }
            let _ = framed.close().await;
            anyhow::Ok(lat)
        }
    });
    let mut all: Vec<Duration> = Vec::new();
    for r in futures_util::future::join_all(tasks).await {
        all.extend(r?);
    }
    all.sort();
    Ok((percentile(&all, 0.5), percentile(&all, 0.99), all.len()))
}

/// `telos bench --backup-objects N`: full backup, restore and a 1% incremental of a world of
/// `n` objects, in a temporary directory.
pub fn run_backup(settings: Settings, n: usize) -> anyhow::Result<()> {
    use crate::backup::{self, Kind};
    use crate::object::{Method, ObjectState, Slot};
    use crate::store::{Store, StoreConfig};
    let root = std::env::temp_dir().join(format!("telos-bench-backup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cfg = StoreConfig::embedded(root.join("data"));
    let store = Store::open(&cfg)?;
    let make = |i: usize, version: u64| {
        let mut slots = std::collections::BTreeMap::new();
        slots.insert("name".to_string(), Slot::Value(json!(format!("thing {i}"))));
        slots.insert("w".to_string(), Slot::Value(json!(i % 97)));
        slots.insert("h".to_string(), Slot::Value(json!(version)));
        slots.insert(
            "area".to_string(),
            Slot::Method(Method::new(
                "function area(self) { return self.w * self.h; }",
                "user",
            )),
        );
        let mut o = ObjectState::new(format!("b{i:07}"), &["genesis_obj"], slots);
        o.version = version;
        o
    };
    let t = Instant::now();
    let mut seq = store.current_seq_blocking()?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        seq += 1;
        let objs: Vec<ObjectState> = chunk.iter().map(|&i| make(i, 1)).collect();
        store.commit_blocking(&objs, &[], seq)?;
    }
    println!(
        "# backup bench: {n} objects written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = root.join("backups");
    actix_web::rt::System::new().block_on(async {
        let t = Instant::now();
        let full = backup::take(&store, &dir, Kind::Full, chrono::Utc::now()).await?;
        let el = t.elapsed().as_secs_f64();
        let mb = backup::size_of(&full) as f64 / 1e6;
        println!(
            "full backup: {mb:.1} MB in {el:.2} s ({:.1} MB/s, {:.0} objects/s)",
            mb / el,
            n as f64 / el
        );

        let t = Instant::now();
        backup::restore(&dir, None, &root.join("restored")).await?;
        let el = t.elapsed().as_secs_f64();
        println!(
            "restore (verified count): {mb:.1} MB in {el:.2} s ({:.1} MB/s, {:.0} objects/s)",
            mb / el,
            n as f64 / el
        );

        let changed = (n / 100).max(1);
        let mut seq = seq;
        for chunk in (0..changed)
            .map(|i| i * 100)
            .collect::<Vec<_>>()
            .chunks(1000)
        {
            seq += 1;
            let objs: Vec<ObjectState> = chunk.iter().map(|&i| make(i, 2)).collect();
            store.commit_async(objs, seq).await?;
        }
        let t = Instant::now();
        let inc = backup::take(&store, &dir, Kind::Incremental, chrono::Utc::now()).await?;
        let el = t.elapsed().as_secs_f64();
        println!(
            "incremental after {changed} objects (1%) changed: {:.2} MB in {el:.3} s ({} rows)",
            backup::size_of(&inc) as f64 / 1e6,
            inc.counts["object"]
        );
        anyhow::Ok(())
    })?;
    drop(store);
    sends_during_backup(settings, &root.join("data"), n)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Serves the world of `data` (already holding `n` objects) and sends messages to one of them,
/// one after another, while a full backup of it runs: how long an object's answer takes while
/// the backup reads, writes and hashes every file (none of that runs on the arbiter the
/// objects' actors share).
fn sends_during_backup(
    mut settings: Settings,
    data: &std::path::Path,
    n: usize,
) -> anyhow::Result<()> {
    settings.data_dir = data.to_path_buf();
    settings.backup_dir = data.with_file_name("backups-served");
    settings.db_url.clear();
    settings.bind = "127.0.0.1:0".into();
    settings.llm_preload = false;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings.clone()).await?;
        let telos = app.telos().clone();
        let url = format!("http://{}/api/backups", app.addr());
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let target = "b0000001";
        // Warm: the object's actor is active and its method compiled.
        let _ = telos.send(target, "area", vec![]).await.result?;
        let backup = actix_web::rt::spawn(async move {
            let t = Instant::now();
            let answer = post_json(&url, "", json!({ "kind": "full" }), &settings).await;
            (answer, t.elapsed())
        });
        let mut latencies = Vec::new();
        let mut i = 0u64;
        while !backup.is_finished() {
            i += 1;
            let t = Instant::now();
            let reply = if i.is_multiple_of(2) {
                telos.send(target, "area", vec![]).await
            } else {
                telos.send(target, "w_", vec![json!(i % 97)]).await
            };
            reply.result?;
            latencies.push(t.elapsed());
        }
        let (answer, took) = backup.await?;
        answer?;
        latencies.sort();
        println!(
            "messages during a full backup of {n} objects ({:.1} s): {} answered (half of them durable writes), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal: p99 < 50 ms)",
            took.as_secs_f64(),
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
        );
        server.abort();
        anyhow::Ok(())
    })
}
