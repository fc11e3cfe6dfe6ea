//! `telos bench --busy SECONDS`: what an operator waits for while the model generates. BRICK
//! writes methods back to back (each prompt new, so prompt evaluation and generation both run)
//! while a prober searches memory with a different query every 100 ms and reads health; prints
//! the embedding, lookup, whole search and health latencies (p50/p99/max) beside the goal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::memory::sentence;
use super::{ms, percentile};
use crate::actors::persona::{Generate, Warm};
use crate::app::Application;
use crate::config::Settings;
use crate::llm::Message;

/// The goal for a search or a health read during a generation (issue 10).
const GOAL_MS: f64 = 50.0;

const TASKS: [&str; 8] = [
    "returns the area of a rectangle from its width and height slots",
    "returns the names of the tracks in the playlist, sorted by duration",
    "returns the warmest day of the temperature log",
    "returns a greeting for the person, using the name slot",
    "returns the number of vowels in the title slot",
    "returns the average of the numbers in the scores slot",
    "returns the quadrant of the point from its x and y slots",
    "returns the total price of the items in the cart, with tax",
];

#[derive(Default)]
struct Samples {
    embed: Vec<Duration>,
    lookup: Vec<Duration>,
    search: Vec<Duration>,
    health: Vec<Duration>,
}

pub fn run(mut settings: Settings, seconds: u64) -> anyhow::Result<()> {
    let dir = super::scratch_world(&mut settings, "telos-bench-busy");
    settings.llm_preload = true;
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let telos = app.telos().clone();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let _ = telos.personas.send(Warm).await;
        // The embedder warms up too: its first call loads MiniLM.
        telos.embedder.embed(vec!["warm up".into()]).await?;
        let mut idle = probe(&telos, (seconds / 3).max(5), false).await?;
        println!("search during generation: {seconds} s of BRICK writing methods back to back");

        let stop = Arc::new(AtomicBool::new(false));
        let generations = Arc::new(AtomicU64::new(0));
        let writer = {
            let (personas, stop, generations) =
                (telos.personas.clone(), stop.clone(), generations.clone());
            actix_web::rt::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let task = TASKS[i % TASKS.len()];
                    let messages = vec![
                        Message::system(
                            "You write one JavaScript method for a prototype object. Read slots \
                             with self.name, write them with self.name = value. Answer with the \
                             function only.",
                        ),
                        Message::user(format!(
                            "Write `function method{i}()` that {task}. Request {i}: {}",
                            sentence(i)
                        )),
                    ];
                    let asked = personas.send(Generate {
                        persona: "BRICK".into(),
                        messages,
                        temperature: Some(0.7),
                    });
                    if let Ok(Ok(_)) = asked.await {
                        generations.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        };

        let mut busy = probe(&telos, seconds, true).await?;
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        server.abort();
        println!(
            "  {} probes during {} generations",
            busy.search.len(),
            generations.load(Ordering::Relaxed)
        );
        busy.print(true);
        println!(
            "the same probes with the model idle ({} probes):",
            idle.search.len()
        );
        idle.print(false);
        let (p50, p99) = machine_jitter();
        println!(
            "peer: this machine's own jitter, a fixed {p50:.1} ms computation (no TelOS code) \
             repeated 300 times: p99 {p99:.1} ms ({:.1}x its median)",
            p99 / p50
        );
        Ok::<_, anyhow::Error>(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

impl Samples {
    fn print(&mut self, goals: bool) {
        for (name, xs, goal) in [
            ("embedding", &mut self.embed, false),
            ("lookup", &mut self.lookup, false),
            ("search (both)", &mut self.search, goals),
            ("health", &mut self.health, goals),
        ] {
            xs.sort();
            let p99 = ms(percentile(xs, 0.99));
            let verdict = if p99 <= GOAL_MS { "met" } else { "NOT met" };
            println!(
                "  {name:<14} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms{}",
                ms(percentile(xs, 0.5)),
                p99,
                ms(percentile(xs, 1.0)),
                if goal {
                    format!("  (goal p99 <= {GOAL_MS} ms: {verdict})")
                } else {
                    String::new()
                }
            );
        }
    }
}

/// Probes every 100 ms for `seconds`, as `GET /api/memory/search` (a new query each time, in
/// its two parts) and `GET /api/health` do; with `generating`, only while a generation runs.
async fn probe(
    telos: &crate::telos::Telos,
    seconds: u64,
    generating: bool,
) -> anyhow::Result<Samples> {
    let mut s = Samples::default();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut q = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        if generating && telos.persona_board.status().generating.is_none() {
            continue;
        }
        q += 1;
        let query = sentence(if generating { 100_000 } else { 0 } + q);
        let (embed, search) = super::timed_search(telos, query).await?;
        let t = Instant::now();
        telos.health().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        s.health.push(t.elapsed());
        s.embed.push(embed);
        s.lookup.push(search - embed);
        s.search.push(search);
    }
    Ok(s)
}

/// The machine's own latency noise: a fixed amount of arithmetic (calibrated to about as long
/// as one embedding), timed 300 times with pauses between, on one thread; answers (p50, p99)
/// in milliseconds. On a shared VM the whole guest stalls now and then; no code avoids that.
fn machine_jitter() -> (f64, f64) {
    fn work(n: u64) -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..n {
            x = std::hint::black_box(x.rotate_left(7) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
        }
        x
    }
    // Calibrate to ~15 ms (the fastest of five tries, so a stall does not skew it).
    let per = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(work(2_000_000));
            t.elapsed().as_secs_f64() / 2e6
        })
        .fold(f64::INFINITY, f64::min);
    let n = (0.015 / per.max(1e-12)) as u64;
    let mut xs: Vec<Duration> = (0..300)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let t = Instant::now();
            std::hint::black_box(work(n));
            t.elapsed()
        })
        .collect();
    xs.sort();
    (ms(percentile(&xs, 0.5)), ms(percentile(&xs, 0.99)))
}
