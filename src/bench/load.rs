//! `telos load`: an out-of-process load generator for a running server.
//!
//! - `--mode writes`: each client sends a setter to an object of its own over REST
//!   (`POST /api/objects/{oid}/send`, one committed write per message);
//! - `--mode ws`: each client holds a WebSocket and sends reads and committed writes (a setter)
//!   to an object of its own, `--writes` percent of them writes (default 50: alternating).
//!
//! Closed loop (`--rate 0`, the default): every client sends its next message as soon as the
//! last is answered (maximum throughput). Open loop (`--rate R`): R messages per second offered
//! in total, spread evenly over the clients on a fixed schedule kept by a pacing thread; a
//! message's latency counts from when it was *due*, so a server that falls behind shows it (no
//! coordinated omission).
//! Prints throughput, p50/p99/p99.9 latency and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value as Json, json};

/// What the load generator is told to do.
pub struct Load {
    pub server: String,
    pub mode: Mode,
    pub clients: usize,
    /// Messages per second offered in total; 0: closed loop.
    pub rate: f64,
    pub seconds: f64,
    /// `--mode ws`: percent of messages that are writes (the rest are reads).
    pub writes: u8,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// REST setters, one committed write per message.
    Writes,
    /// WebSocket round trips: reads and committed writes (`--writes` percent).
    Ws,
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    errors: AtomicU64,
    /// Open loop: messages handed to their client more than 1 ms after they were due.
    late: AtomicU64,
    /// Open loop: the most the pacing thread, which only sleeps, was late (µs): how long this
    /// machine can keep a runnable thread waiting.
    latest: AtomicU64,
}

pub fn run(load: Load) -> anyhow::Result<()> {
    super::raise_fd_limit();
    actix_web::rt::System::new().block_on(drive(load))
}

/// One object per client, so clients do not conflict with each other.
async fn objects(base: &str, token: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut req = http.post(format!("{base}/api/objects/genesis_obj/clone"));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let created: Json = req
            .send_json(&json!({"slots": {"name": format!("load{i}"), "n": 0}}))
            .await
            .map_err(|e| anyhow!("cannot reach {base}: {e}"))?
            .json()
            .await
            .context("reading the clone's answer")?;
        out.push(
            created["oid"]
                .as_str()
                .ok_or_else(|| anyhow!("the server did not clone: {created}"))?
                .to_string(),
        );
    }
    Ok(out)
}

/// When a client's `i`-th message is due in the open loop: on its schedule, `offset` into it.
fn due(start: Instant, interval: Duration, offset: Duration, i: u64) -> Instant {
    start + offset + interval.mul_f64(i as f64)
}

/// One client's schedule.
enum Pacer {
    /// The next message as soon as the last is answered, until `end`. No timer at all: Tokio's
    /// timer wheel has 1 ms slots, so even a sleep until now may wait for the next tick.
    Closed { end: Instant, sent: u64 },
    /// Messages handed over by the pacing thread ([`pace`]) when due.
    Open(tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>),
}

impl Pacer {
    /// The next message's number and when it was due (its latency counts from then); `None`
    /// once the run is over.
    async fn tick(&mut self) -> Option<(u64, Instant)> {
        match self {
            Pacer::Closed { end, sent } => {
                let now = Instant::now();
                if now >= *end {
                    return None;
                }
                *sent += 1;
                Some((*sent - 1, now))
            }
            Pacer::Open(due) => due.recv().await,
        }
    }
}

/// The open loop's schedule, kept by a thread of its own: it sleeps until each message is due
/// (a thread's sleep overshoots by tens of µs, where Tokio's timer rounds up to its next 1 ms
/// slot) and hands it to its client. A client still waiting for an answer finds its next
/// messages queued when it is done, each counted from when it was due. Counts the messages
/// handed over more than 1 ms late.
fn pace(
    start: Instant,
    end: Instant,
    interval: Duration,
    clients: Vec<tokio::sync::mpsc::UnboundedSender<(u64, Instant)>>,
    late: Arc<Counters>,
) {
    let n = clients.len();
    for k in 0u64.. {
        let (c, i) = ((k % n as u64) as usize, k / n as u64);
        let offset = interval.mul_f64(c as f64 / n as f64);
        let at = due(start, interval, offset, i);
        if at >= end {
            return;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let lag = Instant::now().saturating_duration_since(at);
        if lag > Duration::from_millis(1) {
            late.late.fetch_add(1, Ordering::Relaxed);
        }
        late.latest
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        // A client that stopped (its connection failed) is counted in errors already.
        let _ = clients[c].send((i, at));
    }
}

async fn drive(load: Load) -> anyhow::Result<()> {
    if load.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let base = load.server.trim_end_matches('/').to_string();
    let targets = objects(&base, &load.token, load.clients).await?;
    // Open loop: each client offers rate/clients messages per second, the clients' schedules
    // staggered over one interval.
    let interval =
        (load.rate > 0.0).then(|| Duration::from_secs_f64(load.clients as f64 / load.rate));
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let run_for = Duration::from_secs_f64(load.seconds);
    let mut tasks = Vec::with_capacity(load.clients);
    let mut sockets = Vec::new();
    if load.mode == Mode::Ws {
        let url = format!("{}/ws", base.replace("http://", "ws://"));
        for c in 0..load.clients {
            let mut ws = awc::Client::new().ws(&url);
            if !load.token.is_empty() {
                ws = ws.bearer_auth(&load.token);
            }
            let (_, framed) = ws
                .connect()
                .await
                .map_err(|e| anyhow!("connecting client {c}: {e}"))?;
            sockets.push(framed);
        }
    }
    let start = Instant::now();
    let end = start + run_for;
    let mut schedules = Vec::new();
    let mut pacers: Vec<Pacer> = (0..load.clients)
        .map(|_| match interval {
            None => Pacer::Closed { end, sent: 0 },
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                schedules.push(tx);
                Pacer::Open(rx)
            }
        })
        .collect();
    let pacing = interval.map(|every| {
        let late = counters.clone();
        std::thread::Builder::new()
            .name("telos-load-pacer".into())
            .spawn(move || pace(start, end, every, schedules, late))
    });
    let pacing = pacing.transpose().context("starting the pacing thread")?;
    for (client, target) in targets.into_iter().enumerate() {
        let (counters, latencies) = (counters.clone(), latencies.clone());
        let mut pacer = pacers.remove(0);
        match load.mode {
            Mode::Writes => {
                let (base, token) = (base.clone(), load.token.clone());
                tasks.push(actix_web::rt::spawn(async move {
                    let http = awc::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .finish();
                    let url = format!("{base}/api/objects/{target}/send");
                    while let Some((i, at)) = pacer.tick().await {
                        let mut req = http.post(&url);
                        if !token.is_empty() {
                            req = req.bearer_auth(&token);
                        }
                        let ok = match req.send_json(&json!({"selector": "n_", "args": [i]})).await
                        {
                            Ok(mut resp) => {
                                let _ = resp.body().await;
                                resp.status().is_success()
                            }
                            Err(_) => false,
                        };
                        record(&counters, &latencies, ok, at.elapsed());
                    }
                }));
            }
            Mode::Ws => {
                let writes = load.writes.min(100);
                let mut framed = sockets.remove(0);
                tasks.push(actix_web::rt::spawn(async move {
                    while let Some((i, at)) = pacer.tick().await {
                        // `writes` in every 100, evenly spread (50: alternating).
                        // Counted from the client's own place, so that in each round of the
                        // schedule (every client sends its i-th message) the writes are spread
                        // over the clients; counting from `i` alone made every client write in
                        // the same rounds, offering writes at twice the rate half the time.
                        let w = u64::from(writes);
                        let j = i + client as u64;
                        let frame = if j * w / 100 == (j + 1) * w / 100 {
                            json!({"type": "send", "id": i, "target": target, "selector": "n", "args": []})
                        } else {
                            json!({"type": "send", "id": i, "target": target, "selector": "n_", "args": [i]})
                        };
                        if framed
                            .send(awc::ws::Message::Text(frame.to_string().into()))
                            .await
                            .is_err()
                        {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        let ok = loop {
                            match framed.next().await {
                                Some(Ok(awc::ws::Frame::Text(bytes))) => {
                                    let v: Json =
                                        serde_json::from_slice(&bytes).unwrap_or_default();
                                    if v["type"] == "result" {
                                        break true;
                                    }
                                    if v["type"] == "error" {
                                        break false;
                                    }
                                }
                                Some(Ok(awc::ws::Frame::Ping(p))) => {
                                    let _ = framed.send(awc::ws::Message::Pong(p)).await;
                                }
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => {
                                    counters.errors.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                        };
                        record(&counters, &latencies, ok, at.elapsed());
                    }
                    let _ = framed.close().await;
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(pacing) = pacing {
        let _ = pacing.join();
    }
    let took = start.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    l.sort();
    let done = counters.done.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let late = counters.late.load(Ordering::Relaxed);
    let latest = counters.latest.load(Ordering::Relaxed) as f64 / 1000.0;
    println!(
        "load {:?}: {} clients, {}, {:.0} s: {done} answered ({:.0}/s), {errors} errors, latency p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
        load.mode,
        load.clients,
        if load.rate > 0.0 {
            format!(
                "open loop at {:.0}/s offered (latency from when due; {late} handed over more than 1 ms late, the latest {latest:.1} ms)",
                load.rate
            )
        } else {
            "closed loop".to_string()
        },
        took,
        done as f64 / took,
        super::ms(super::percentile(&l, 0.5)),
        super::ms(super::percentile(&l, 0.99)),
        super::ms(super::percentile(&l, 0.999)),
        super::ms(l.last().copied().unwrap_or_default()),
    );
    Ok(())
}

fn record(
    counters: &Counters,
    latencies: &std::sync::Mutex<Vec<Duration>>,
    ok: bool,
    took: Duration,
) {
    if ok {
        counters.done.fetch_add(1, Ordering::Relaxed);
        latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(took);
    } else {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_messages_are_due_on_a_fixed_schedule() {
        let start = Instant::now();
        let every = Duration::from_millis(10);
        let offset = Duration::from_millis(3);
        assert_eq!(due(start, every, offset, 0), start + offset);
        assert_eq!(
            due(start, every, offset, 5),
            start + offset + Duration::from_millis(50)
        );
    }
}
