//! `telos bench --objects N`: one node over a world of N stored objects — how long it takes to
//! awaken, how fast its list pages, what a cold object costs to activate, the memory 10,000
//! active objects take, and what a passivation sweep costs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{percentile, scratch_world};
use crate::app::Application;
use crate::config::Settings;
use crate::object::{ObjectState, Slot};
use crate::store::Store;

/// Objects activated (sent a message) while the rest stay passive.
const ACTIVE: usize = 10_000;
/// Rows per insert while filling the world.
const FILL_CHUNK: usize = 5_000;

pub fn run(mut settings: Settings, n: usize, fill_only: bool) -> anyhow::Result<()> {
    if fill_only {
        return fill(&settings, n);
    }
    let dir = scratch_world(&mut settings, "telos-bench-objects");
    settings.llm_preload = false;
    // Filled by a child process, so this one's memory is the server's alone.
    let filled = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "--fill-only", "--objects", &n.to_string()])
        .env("TELOS_DATA_DIR", &settings.data_dir)
        .env("TELOS_LOG", "warn")
        .status()?;
    anyhow::ensure!(filled.success(), "filling the world failed ({filled})");
    let cfg = settings.store_config();
    let result = actix_web::rt::System::new().block_on(measure(settings, n));
    // The store closes (flushing its memtable) on the thread that drops it last: wait for
    // that before removing its files.
    for _ in 0..600 {
        match Store::open(&cfg) {
            Ok(_) => break,
            Err(e) if format!("{e:#}").contains("in use") => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(_) => break,
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn rss_mib() -> f64 {
    super::soak::rss_kib(std::process::id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0
}

fn oid(i: usize) -> String {
    format!("s{i:07}")
}

/// Fills the world straight into the store (the commit protocol is measured elsewhere).
fn fill(settings: &Settings, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = Store::open(&settings.store_config())?;
    let seq = store.current_seq_blocking()?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    for start in (0..n).step_by(FILL_CHUNK) {
        let chunk: Vec<ObjectState> = (start..(start + FILL_CHUNK).min(n))
            .map(|i| {
                let mut slots = BTreeMap::new();
                slots.insert("name".to_string(), Slot::Value(json!(format!("thing {i}"))));
                slots.insert("i".to_string(), Slot::Value(json!(i)));
                ObjectState::new(oid(i), &["genesis_obj"], slots)
            })
            .collect();
        rt.block_on(store.insert_objects_fresh(&chunk, seq))?;
    }
    drop(store);
    println!(
        "# objects bench: {n} objects stored in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn measure(settings: Settings, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let app = Application::build(settings).await?;
    let awakened = t.elapsed();
    let telos = app.telos().clone();
    let server = actix_web::rt::spawn(app.run_until_stopped());
    println!(
        "awakening with {} stored objects: {:.2} s; RSS {:.0} MiB",
        telos.world.count().await?,
        awakened.as_secs_f64(),
        rss_mib()
    );

    // Listing: pages of 100 spread over the whole list (the page's inspector asks for these).
    let mut pages = Vec::new();
    for k in 0..20u64 {
        let offset = (n as u64).saturating_sub(100) * k / 19;
        let t = Instant::now();
        let page = telos.world.list(offset, 100).await?;
        pages.push(t.elapsed());
        anyhow::ensure!(!page.is_empty(), "an empty page at offset {offset}");
    }
    p50_max(
        &format!("listing, a page of 100 at 20 offsets from 0 to {n} (?offset=)"),
        pages,
    );
    let mut cursor = Vec::new();
    for k in 0..20usize {
        let after = if k == 0 {
            String::new()
        } else {
            oid(n.saturating_sub(101) * k / 19)
        };
        let t = Instant::now();
        let page = telos.world.list_after(&after, 100).await?;
        cursor.push(t.elapsed());
        anyhow::ensure!(!page.is_empty(), "an empty page after {after:?}");
    }
    p50_max(
        "listing, a page of 100 after 20 oids across the world (?after=)",
        cursor,
    );

    // Cold activation: a message to an object neither live nor cached (read its slot).
    let active = ACTIVE.min(n);
    let step = (n / active).max(1);
    let rss_before = rss_mib();
    let mut cold = Vec::with_capacity(active);
    for k in 0..active {
        let i = k * step;
        let t = Instant::now();
        let reply = telos.send(&oid(i), "i", Vec::new()).await;
        cold.push(t.elapsed());
        match reply.result {
            Ok(v) if v == json!(i) => {}
            other => anyhow::bail!("{}.i answered {other:?}", oid(i)),
        }
    }
    cold.sort();
    let rss_active = rss_mib();
    println!(
        "cold activation of {active} objects (one message each): p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms (goal: p99 < 10 ms)",
        ms(percentile(&cold, 0.5)),
        ms(percentile(&cold, 0.99)),
        ms(*cold.last().expect("at least one"))
    );
    println!(
        "RSS with {active} active of {n} stored: {rss_active:.0} MiB ({:+.0} MiB for the active ones; goal < 1024 MiB)",
        rss_active - rss_before
    );

    // A warm message to the same objects, for comparison.
    let mut warm = Vec::with_capacity(active);
    for k in 0..active {
        let t = Instant::now();
        let _ = telos.send(&oid(k * step), "i", Vec::new()).await;
        warm.push(t.elapsed());
    }
    warm.sort();
    println!(
        "the same objects warm: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&warm, 0.5)),
        ms(percentile(&warm, 0.99))
    );

    // A sweep: the directory drops stopped actors and the world evicts idle cache entries;
    // this times the larger part (the cache holds the active objects).
    let t = Instant::now();
    let evicted = telos.world.evict_idle(Duration::ZERO);
    println!(
        "passivation sweep of the object cache: {evicted} entries evicted in {:.2} ms",
        ms(t.elapsed())
    );
    server.abort();
    Ok(())
}

/// Prints the median and the slowest of `times`.
fn p50_max(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let max = times.last().copied().unwrap_or_default();
    println!(
        "{what}: p50 {:.2} ms, max {:.2} ms",
        ms(percentile(&times, 0.5)),
        ms(max)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
