//! The learning benchmark (`telos bench --learning FILE`): does memory make learning pay?
//!
//! Each family in FILE (see `bench/families.json`) has the slots of its objects and a list of
//! members: a first selector, then related ones. Every member is sent to a fresh clone of
//! `genesis_obj` with those slots, so only what the world *remembers* links one member to the
//! next. After the first member, a repeat of it on another fresh object of the same shape
//! measures reuse. The whole file runs twice, in two fresh worlds: with recall on
//! (`recall_k` as configured) and with `recall_k = 0`, then prints pass rates and median times.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::app::{Application, Telos};
use crate::config::Settings;
use crate::kernel::{Stage, Status};
use crate::sandbox::Op;

#[derive(Deserialize)]
struct File {
    families: Vec<Family>,
}

#[derive(Deserialize, Clone)]
struct Family {
    name: String,
    #[serde(default)]
    slots: serde_json::Map<String, Json>,
    members: Vec<Member>,
}

#[derive(Deserialize, Clone)]
struct Member {
    selector: String,
    #[serde(default)]
    args: Vec<Json>,
    expect: Json,
}

/// What one send did.
#[derive(Debug, Clone)]
struct Run {
    family: String,
    selector: String,
    /// 0: first member; 1..: later members; `repeat`: the first member again.
    position: usize,
    repeat: bool,
    passed: bool,
    reused: bool,
    time: Duration,
    detail: String,
    /// Milliseconds per stage (started → done/failed, summed over repair rounds).
    stage_ms: BTreeMap<&'static str, u64>,
    /// Prompt tokens BRICK and ALFRED evaluated (not reused from the previous call), summed.
    new_tokens: u64,
    /// Prompt tokens reused from the previous call's cache, summed.
    reused_tokens: u64,
}

/// Latencies of operator requests issued while the kernel was working.
#[derive(Default)]
struct Probes {
    search: Vec<Duration>,
    /// The two parts of a search: embedding the query, then the memory actor's lookup.
    embed: Vec<Duration>,
    lookup: Vec<Duration>,
    health: Vec<Duration>,
}

/// Whether `got` is the expected answer (numbers within a relative 1e-3).
fn matches(got: &Json, want: &Json) -> bool {
    match (got, want) {
        (Json::Number(a), Json::Number(b)) => {
            let (a, b) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            (a - b).abs() <= 1e-3 * b.abs().max(1.0)
        }
        (Json::Array(a), Json::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| matches(x, y))
        }
        _ => got == want,
    }
}

fn median(mut xs: Vec<Duration>) -> Option<Duration> {
    if xs.is_empty() {
        return None;
    }
    xs.sort();
    Some(xs[xs.len() / 2])
}

/// The `p` quantile (0..1) of `xs`, if any.
fn quantile(xs: &[Duration], p: f64) -> Option<Duration> {
    let mut xs = xs.to_vec();
    xs.sort();
    (!xs.is_empty()).then(|| super::percentile(&xs, p))
}

fn millis(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

pub fn run(settings: Settings, file: &Path, limit: Option<usize>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the families file {}", file.display()))?;
    let mut families = serde_json::from_str::<File>(&text)
        .with_context(|| format!("parsing {}", file.display()))?
        .families;
    if let Some(n) = limit {
        families.truncate(n);
    }
    let model = match settings.persona_backend {
        crate::llm::BackendKind::Local => settings.default_model_path().display().to_string(),
        other => other.to_string(),
    };
    println!(
        "learning benchmark: {} families from {}, persona backend {}, model {}",
        families.len(),
        file.display(),
        settings.persona_backend,
        model
    );
    let recall_k = settings.recall_k.max(1);
    let mut with = settings.clone();
    with.recall_k = recall_k;
    let (on, probes) = pass(with, &families, "memory on")?;
    let mut without = settings;
    without.recall_k = 0;
    let (off, _) = pass(without, &families, "memory off")?;
    report(&on, &off, recall_k);
    report_stages(&on);
    report_probes(&probes);
    Ok(())
}

/// Where a miss's time goes (memory on, every member that was generated).
fn report_stages(on: &[Run]) {
    let misses: Vec<&Run> = on.iter().filter(|r| !r.reused).collect();
    if misses.is_empty() {
        return;
    }
    println!(
        "\nwhere a miss's time goes (memory on, {} misses, medians):",
        misses.len()
    );
    for stage in Stage::ALL {
        let times: Vec<Duration> = misses
            .iter()
            .filter_map(|r| r.stage_ms.get(stage.as_str()))
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        if !times.is_empty() {
            println!(
                "  {:<8} {} (in {} runs)",
                stage.as_str(),
                secs(median(times.clone())),
                times.len()
            );
        }
    }
    let mut new: Vec<u64> = misses.iter().map(|r| r.new_tokens).collect();
    let mut reused: Vec<u64> = misses.iter().map(|r| r.reused_tokens).collect();
    new.sort();
    reused.sort();
    println!(
        "  prompt tokens per miss: {} evaluated, {} reused from the cache (medians)",
        new[new.len() / 2],
        reused[reused.len() / 2]
    );
}

fn report_probes(probes: &Probes) {
    println!(
        "\noperator requests while the kernel worked (memory on): memory search p50 {} p99 {} max {} ({} requests); health p50 {} p99 {} max {} ({} requests)",
        millis(quantile(&probes.search, 0.5)),
        millis(quantile(&probes.search, 0.99)),
        millis(quantile(&probes.search, 1.0)),
        probes.search.len(),
        millis(quantile(&probes.health, 0.5)),
        millis(quantile(&probes.health, 0.99)),
        millis(quantile(&probes.health, 1.0)),
        probes.health.len(),
    );
    println!(
        "  a search's parts: embedding p50 {} p99 {} max {}; memory lookup p50 {} p99 {} max {}",
        millis(quantile(&probes.embed, 0.5)),
        millis(quantile(&probes.embed, 0.99)),
        millis(quantile(&probes.embed, 1.0)),
        millis(quantile(&probes.lookup, 0.5)),
        millis(quantile(&probes.lookup, 0.99)),
        millis(quantile(&probes.lookup, 1.0)),
    );
}

fn report(on: &[Run], off: &[Run], recall_k: usize) {
    let rate = |runs: &[Run], f: &dyn Fn(&Run) -> bool| {
        let picked: Vec<&Run> = runs.iter().filter(|r| f(r)).collect();
        let passed = picked.iter().filter(|r| r.passed).count();
        let pct = if picked.is_empty() {
            0.0
        } else {
            100.0 * passed as f64 / picked.len() as f64
        };
        format!("{passed}/{} ({pct:.0}%)", picked.len())
    };
    let times = |runs: &[Run], f: &dyn Fn(&Run) -> bool| {
        median(runs.iter().filter(|r| f(r)).map(|r| r.time).collect())
    };
    let first = |r: &Run| r.position == 0 && !r.repeat;
    let later = |r: &Run| r.position > 0;
    let repeat = |r: &Run| r.repeat;
    let reused = |r: &Run| r.reused;
    println!();
    println!("| | memory on (recall_k = {recall_k}) | memory off (recall_k = 0) |");
    println!("|---|---|---|");
    println!(
        "| first members passed | {} | {} |",
        rate(on, &first),
        rate(off, &first)
    );
    println!(
        "| later members passed | {} | {} |",
        rate(on, &later),
        rate(off, &later)
    );
    println!(
        "| repeats passed | {} | {} |",
        rate(on, &repeat),
        rate(off, &repeat)
    );
    println!(
        "| repeats answered by reuse | {} | {} |",
        on.iter().filter(|r| r.repeat && r.reused).count(),
        off.iter().filter(|r| r.repeat && r.reused).count()
    );
    println!(
        "| median first miss | {} | {} |",
        secs(times(on, &first)),
        secs(times(off, &first))
    );
    println!(
        "| median later miss | {} | {} |",
        secs(times(on, &later)),
        secs(times(off, &later))
    );
    println!(
        "| median repeat | {} | {} |",
        secs(times(on, &repeat)),
        secs(times(off, &repeat))
    );
    let first_on = times(on, &first);
    let reuse_on = times(on, &reused);
    if let (Some(f), Some(r)) = (first_on, reuse_on)
        && r > Duration::ZERO
    {
        println!(
            "\nreuse: median {:.0} ms, {:.0}x faster than a median first miss",
            r.as_secs_f64() * 1000.0,
            f.as_secs_f64() / r.as_secs_f64()
        );
    }
    println!("\nfailures (memory on):");
    for r in on.iter().filter(|r| !r.passed) {
        println!("  {} {}: {}", r.family, r.selector, r.detail);
    }
}

/// Runs every family once in a fresh world. While each member is sent, a prober issues a memory
/// search and a health request every 250 ms and records how long they took.
fn pass(
    mut settings: Settings,
    families: &[Family],
    label: &str,
) -> anyhow::Result<(Vec<Run>, Probes)> {
    let name = format!("telos-bench-learning-k{}", settings.recall_k);
    let dir = super::scratch_world(&mut settings, &name);
    // A benchmark measures learning, not the guard rails around it.
    settings.kernel_runs_per_minute = 0;
    settings.kernel_max_failures = 0;
    let label = label.to_string();
    let families = families.to_vec();
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let telos = app.telos().clone();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        // As a running server would be: the model loaded and the fixed instructions evaluated
        // (the start-up warm-up runs first; this waits for it).
        let _ = telos.personas.send(crate::actors::persona::Warm).await;
        // The server inside handles SIGINT/SIGTERM by shutting down gracefully, which would
        // leave this loop running: a signal ends the benchmark.
        actix_web::rt::spawn(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                eprintln!("learning benchmark interrupted");
                std::process::exit(130);
            }
        });
        let probes = Arc::new(Mutex::new(Probes::default()));
        let prober = actix_web::rt::spawn(probe(telos.clone(), probes.clone()));
        let mut runs = Vec::new();
        for family in &families {
            for (position, member) in family.members.iter().enumerate() {
                let run = one(&telos, family, member, position, false).await?;
                print_run(&label, &run);
                runs.push(run);
                if position == 0 {
                    let run = one(&telos, family, member, 0, true).await?;
                    print_run(&label, &run);
                    runs.push(run);
                }
            }
        }
        prober.abort();
        server.abort();
        let probes = std::mem::take(&mut *probes.lock().unwrap_or_else(|e| e.into_inner()));
        Ok::<_, anyhow::Error>((runs, probes))
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What an operator does while objects learn: searches memory and reads health.
async fn probe(telos: Telos, probes: Arc<Mutex<Probes>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut i = 0usize;
    loop {
        tick.tick().await;
        // A new query each time, so no recent vector answers it.
        i += 1;
        let query = format!(
            "the area of a rectangle from its width and height ({})",
            super::memory::sentence(i)
        );
        let searched = super::timed_search(&telos, query).await;
        let t = Instant::now();
        let health = telos.health().await;
        let health_time = t.elapsed();
        let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok((embed, search)) = searched {
            p.search.push(search);
            p.embed.push(embed);
            p.lookup.push(search - embed);
        }
        if health.is_ok() {
            p.health.push(health_time);
        }
    }
}

fn print_run(label: &str, r: &Run) {
    println!(
        "  [{label}] {} {}{}: {} in {:.1} s{}",
        r.family,
        r.selector,
        if r.repeat { " (repeat)" } else { "" },
        if r.passed { "pass" } else { "FAIL" },
        r.time.as_secs_f64(),
        if r.reused { " (reused)" } else { "" }
    );
}

/// Sends one member to a fresh object of its family and waits until learning has finished.
async fn one(
    telos: &Telos,
    family: &Family,
    member: &Member,
    position: usize,
    repeat: bool,
) -> anyhow::Result<Run> {
    let mut slots = family.slots.clone();
    slots.insert("name".into(), json!(family.name));
    let created = telos
        .call("genesis_obj", Op::Clone { slots })
        .await
        .result?;
    let oid = created["oid"].as_str().unwrap_or_default().to_string();
    let mut stages = telos.stages.subscribe();
    let t = Instant::now();
    let reply = telos
        .send(&oid, &member.selector, member.args.clone())
        .await;
    let time = t.elapsed();
    // Learning goes on after the answer; the next member must find it in memory.
    let mut reused = false;
    let mut learning = false;
    let mut stage_ms = BTreeMap::new();
    let mut started: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut new_tokens, mut reused_tokens) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let event = match tokio::time::timeout(Duration::from_millis(200), stages.recv()).await {
            Ok(Ok(e)) => e,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) => break,
            Err(_) if !learning || Instant::now() > deadline => break,
            Err(_) => continue,
        };
        if event.receiver != oid {
            continue;
        }
        let stage = event.stage.as_str();
        match event.status {
            Status::Started => {
                started.insert(stage, event.at_ms);
            }
            Status::Done | Status::Failed => {
                if let Some(from) = started.remove(stage) {
                    *stage_ms.entry(stage).or_insert(0) += event.at_ms.saturating_sub(from);
                }
                let prompt = event.detail["prompt_tokens"].as_u64().unwrap_or(0);
                let cached = event.detail["reused_tokens"].as_u64().unwrap_or(0);
                new_tokens += prompt.saturating_sub(cached);
                reused_tokens += cached;
            }
        }
        if event.stage == Stage::Trial
            && event.status == Status::Done
            && !event.detail["reuse"].is_null()
        {
            reused = true;
        }
        if event.stage == Stage::Install && event.status == Status::Done {
            learning = true;
        }
        if event.stage == Stage::Learn && event.status != Status::Started {
            break;
        }
    }
    let (passed, detail) = match &reply.result {
        Ok(v) if matches(v, &member.expect) => (true, v.to_string()),
        Ok(v) => (false, format!("answered {v}, expected {}", member.expect)),
        Err(e) => (false, e.to_string()),
    };
    Ok(Run {
        family: family.name.clone(),
        selector: member.selector.clone(),
        position,
        repeat,
        passed,
        reused,
        time,
        detail,
        stage_ms,
        new_tokens,
        reused_tokens,
    })
}
