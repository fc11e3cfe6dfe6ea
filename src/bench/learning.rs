//! The learning benchmark (`telos bench --learning FILE`): does memory make learning pay?
//!
//! Each family in FILE (see `bench/families.json`) has the slots of its objects and a list of
//! members: a first selector, then related ones. Every member is sent to a fresh clone of
//! `genesis_obj` with those slots, so only what the world *remembers* links one member to the
//! next. After the first member, a repeat of it on another fresh object of the same shape
//! measures reuse. The whole file runs twice, in two fresh worlds: with recall on
//! (`recall_k` as configured) and with `recall_k = 0`, then prints pass rates and median times.

use std::path::Path;
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
    let model = match settings.persona_backend.as_str() {
        "local" => settings.default_model_path().display().to_string(),
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
    let on = pass(with, &families, "memory on")?;
    let mut without = settings;
    without.recall_k = 0;
    let off = pass(without, &families, "memory off")?;
    report(&on, &off, recall_k);
    Ok(())
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

/// Runs every family once in a fresh world.
fn pass(mut settings: Settings, families: &[Family], label: &str) -> anyhow::Result<Vec<Run>> {
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
        server.abort();
        Ok::<_, anyhow::Error>(runs)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
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
    })
}
