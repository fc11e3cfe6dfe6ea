//! `telos soak`: drives N WebSocket clients against a running server for M minutes and reports,
//! every few seconds and at the end, round trips, errors, dropped connections, latency p50/p99
//! and (with `--pid`) the server's resident memory. `ops/soak.sh` starts a server and runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;

/// What the soak is told to do.
pub struct Soak {
    pub server: String,
    pub clients: usize,
    pub minutes: f64,
    /// Pause between one client's round trips.
    pub pause: Duration,
    /// The server's process id, to read its memory from /proc.
    pub pid: Option<u32>,
    pub token: String,
}

#[derive(Default)]
struct Counters {
    trips: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

pub(super) fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

pub fn run(soak: Soak) -> anyhow::Result<()> {
    super::raise_fd_limit();
    actix_web::rt::System::new().block_on(drive(soak))
}

async fn drive(soak: Soak) -> anyhow::Result<()> {
    let base = soak.server.trim_end_matches('/').to_string();
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut req = http.post(format!("{base}/api/objects/genesis_obj/clone"));
    if !soak.token.is_empty() {
        req = req.bearer_auth(&soak.token);
    }
    let created: serde_json::Value = req
        .send_json(&json!({"slots": {"name": "soak", "w": 3, "h": 4}}))
        .await
        .map_err(|e| anyhow!("cannot reach {base}: {e}"))?
        .json()
        .await?;
    let target = created["oid"]
        .as_str()
        .ok_or_else(|| anyhow!("the server did not clone: {created}"))?
        .to_string();
    let url = format!("{}/ws", base.replace("http://", "ws://"));
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let end = Instant::now() + Duration::from_secs_f64(soak.minutes * 60.0);
    let mut tasks = Vec::with_capacity(soak.clients);
    for c in 0..soak.clients {
        let mut ws = awc::Client::new().ws(&url);
        if !soak.token.is_empty() {
            ws = ws.bearer_auth(&soak.token);
        }
        let (_, mut framed) = ws
            .connect()
            .await
            .map_err(|e| anyhow!("connecting client {c}: {e}"))?;
        let (counters, latencies, target) = (counters.clone(), latencies.clone(), target.clone());
        let pause = soak.pause;
        tasks.push(actix_web::rt::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                i += 1;
                // Alternate a read and a committed write.
                let frame = if i.is_multiple_of(2) {
                    json!({"type": "send", "id": i, "target": target, "selector": "w", "args": []})
                } else {
                    json!({"type": "send", "id": i, "target": target, "selector": "h_", "args": [i % 100]})
                };
                let t = Instant::now();
                if framed
                    .send(awc::ws::Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                loop {
                    match framed.next().await {
                        Some(Ok(awc::ws::Frame::Text(bytes))) => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&bytes).unwrap_or_default();
                            if v["type"] == "error" {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            if v["type"] == "result" || v["type"] == "error" {
                                break;
                            }
                        }
                        Some(Ok(awc::ws::Frame::Ping(p))) => {
                            let _ = framed.send(awc::ws::Message::Pong(p)).await;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                counters.trips.fetch_add(1, Ordering::Relaxed);
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t.elapsed());
                tokio::time::sleep(pause).await;
            }
            let _ = framed.close().await;
        }));
    }
    println!(
        "soak: {} clients connected to {base}, running {:.1} min",
        soak.clients, soak.minutes
    );
    let started = Instant::now();
    let mut peak_rss = 0;
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_secs(10).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        let rss = soak.pid.and_then(|p| rss_kib(p, "VmRSS:")).unwrap_or(0);
        peak_rss = peak_rss.max(rss);
        let (p50, p99) = {
            let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner());
            l.sort();
            let out = (super::percentile(&l, 0.5), super::percentile(&l, 0.99));
            l.clear();
            out
        };
        println!(
            "  {:>5.0} s: {} round trips, {} errors, {} dropped, last 10 s p50 {:.1} ms p99 {:.1} ms, server RSS {} MiB",
            started.elapsed().as_secs_f64(),
            counters.trips.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.dropped.load(Ordering::Relaxed),
            super::ms(p50),
            super::ms(p99),
            rss >> 10
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    let hwm = soak.pid.and_then(|p| rss_kib(p, "VmHWM:")).unwrap_or(0);
    let trips = counters.trips.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let dropped = counters.dropped.load(Ordering::Relaxed);
    println!(
        "soak done: {trips} round trips ({:.0}/s), {errors} errors, {dropped} dropped connections, server peak RSS {} MiB",
        trips as f64 / started.elapsed().as_secs_f64(),
        hwm.max(peak_rss) >> 10
    );
    if dropped > 0 {
        bail!("{dropped} connections were dropped");
    }
    Ok(())
}
