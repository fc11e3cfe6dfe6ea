//! Memory figures (`telos bench --memory N`): embeddings per second at batch 1 and 32 with 1
//! and 2 torch threads; search latency and recall@10 against exact search at 10k and N records
//! of real MiniLM vectors (of generated sentences); cold start with N records (index load plus
//! catch-up, nothing re-embedded).

use std::time::Instant;

use anyhow::Context as _;

use super::{ms, percentile};
use crate::embed::{DIMS, EMBEDDER_ID, Embedder};
use crate::memory::Record;
use crate::memory::index::VectorIndex;
use crate::memory::records::{f32s_to_le_bytes, le_bytes_to_f32s};

const ADJ: [&str; 16] = [
    "quick", "lazy", "red", "quiet", "ancient", "tiny", "brave", "gentle", "noisy", "hidden",
    "frozen", "golden", "clever", "broken", "silent", "curious",
];
const NOUN: [&str; 24] = [
    "fox", "robot", "garden", "river", "teacher", "engine", "castle", "library", "sailor",
    "violin", "market", "comet", "baker", "bridge", "forest", "painter", "server", "lantern",
    "kitten", "mountain", "doctor", "compass", "harbor", "orchard",
];
const VERB: [&str; 16] = [
    "repairs",
    "paints",
    "follows",
    "counts",
    "builds",
    "watches",
    "sells",
    "measures",
    "describes",
    "carries",
    "cleans",
    "opens",
    "sorts",
    "teaches",
    "finds",
    "remembers",
];
const PLACE: [&str; 12] = [
    "station", "school", "village", "kitchen", "harbour", "museum", "desert", "island", "factory",
    "hospital", "stadium", "valley",
];

/// The `i`-th generated sentence (distinct for every `i` below 16·24·16·24·12).
pub fn sentence(i: usize) -> String {
    let mut x = i;
    let mut pick = |n: usize| {
        let v = x % n;
        x /= n;
        v
    };
    let (a, n1, v, n2, p) = (pick(16), pick(24), pick(16), pick(24), pick(12));
    format!(
        "The {} {} {} the {} near the {} (note {i}).",
        ADJ[a], NOUN[n1], VERB[v], NOUN[n2], PLACE[p]
    )
}

fn embeddings_per_second(e: &Embedder, batch: usize, texts: usize) -> anyhow::Result<f64> {
    let all: Vec<String> = (0..texts).map(|i| sentence(i * 7 + 3)).collect();
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        e.embed(chunk)?;
    }
    Ok(texts as f64 / t.elapsed().as_secs_f64())
}

/// Runs the memory measurements for `n` records and prints one line per figure.
pub fn run(models_dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let n = n.max(1000);
    let mut best = (1, 0.0);
    for threads in [1, 2] {
        let e = Embedder::load(models_dir, threads)?;
        e.embed(&["warm up"])?;
        let b1 = embeddings_per_second(&e, 1, 100)?;
        let b32 = embeddings_per_second(&e, 32, 640)?;
        println!(
            "embed torch_threads={threads}: {b1:.0} texts/s at batch 1, {b32:.0} texts/s at batch 32"
        );
        if b32 > best.1 {
            best = (threads, b32);
        }
    }
    let threads = best.0;
    let e = Embedder::load(models_dir, threads)?;
    let texts: Vec<String> = (0..n).map(sentence).collect();
    // Embedding 100k sentences takes minutes: the vectors are kept for the next run.
    let cache = std::env::temp_dir().join(format!("telos-bench-vectors-{n}.f32"));
    let vectors = match read_vectors(&cache, n) {
        Some(v) => {
            println!("using the {n} cached embeddings in {}", cache.display());
            v
        }
        None => {
            let t = Instant::now();
            let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n);
            for (i, chunk) in texts.chunks(64).enumerate() {
                vectors.extend(e.embed(chunk)?);
                if i % 200 == 199 {
                    eprintln!(
                        "  embedded {} of {n} ({:.0}/s)",
                        vectors.len(),
                        vectors.len() as f64 / t.elapsed().as_secs_f64()
                    );
                }
            }
            println!(
                "embedded {n} generated sentences in {:.1} s ({:.0}/s, batch 64, {threads} torch threads)",
                t.elapsed().as_secs_f64(),
                n as f64 / t.elapsed().as_secs_f64()
            );
            let _ = std::fs::write(&cache, f32s_to_le_bytes(&vectors.concat()));
            vectors
        }
    };
    // Queries: other sentences from the same generator, not in the index.
    let queries: Vec<String> = (0..200).map(|i| sentence(n + 1 + i * 13)).collect();
    let query_vectors = e.embed(&queries)?;

    let root = std::env::temp_dir().join(format!("telos-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let mut sizes = vec![10_000.min(n)];
    if n > 10_000 {
        sizes.push(n);
    }
    for size in sizes {
        let path = root.join(format!("index-{size}.usearch"));
        let mut idx = VectorIndex::empty(&path, EMBEDDER_ID, DIMS)?;
        idx.reserve_more(size)?;
        let t = Instant::now();
        for (k, v) in vectors.iter().take(size).enumerate() {
            idx.add(k as u64, v)?;
        }
        let build = t.elapsed();
        let mut lat = Vec::new();
        let mut hits = 0usize;
        for q in &query_vectors {
            let t = Instant::now();
            let approx = idx.search(q, 10)?;
            lat.push(t.elapsed());
            let exact = idx.exact_search(q, 10)?;
            hits += approx
                .iter()
                .filter(|h| exact.iter().any(|x| x.key == h.key))
                .count();
        }
        lat.sort();
        println!(
            "search {size} records: build {:.1} s, p50 {:.3} ms, p99 {:.3} ms, recall@10 {:.3} (vs exact, {} queries)",
            build.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            hits as f64 / (10 * query_vectors.len()) as f64,
            query_vectors.len()
        );
    }
    cold_start(&root, &vectors, &texts)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

fn read_vectors(path: &std::path::Path, n: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != n * DIMS * 4 {
        return None;
    }
    let floats = le_bytes_to_f32s(&bytes);
    Some(floats.chunks(DIMS).map(<[f32]>::to_vec).collect())
}

/// Stores `vectors` as records, saves the index, then times a start: index load + catch-up.
fn cold_start(
    root: &std::path::Path,
    vectors: &[Vec<f32>],
    texts: &[String],
) -> anyhow::Result<()> {
    use crate::store::{Store, StoreConfig};
    let n = vectors.len();
    let cfg = StoreConfig::embedded(root.join("data"));
    let store = Store::open(&cfg)?;
    let t = Instant::now();
    let mut seq = 10;
    let records: Vec<Record> = vectors
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(k, (v, text))| Record {
            key: k as u64 + 1,
            kind: crate::memory::MemoryKind::Note,
            text: text.clone(),
            prompt: String::new(),
            owner: String::new(),
            selector: String::new(),
            source: String::new(),
            origin: crate::memory::ORIGIN_EXTERNAL.into(),
            embedder: EMBEDDER_ID.into(),
            created: String::new(),
            seq: 0,
            vector: v.clone(),
        })
        .collect();
    for chunk in records.chunks(500) {
        seq += 1;
        store.memory_commit_blocking(chunk, &[], seq)?;
    }
    println!(
        "stored {n} memory records in {:.1} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let path = root.join("data").join("memory.usearch");
    let mut idx = VectorIndex::empty(&path, EMBEDDER_ID, DIMS)?;
    idx.reserve_more(n)?;
    for r in &records {
        idx.add(r.key, &r.vector)?;
    }
    idx.set_seq(seq);
    let t = Instant::now();
    idx.save()?;
    println!(
        "index save with {n} records: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop(idx);
    // A cold start: load the index (checksum, usearch load) and catch up with what was
    // written after its sequence number (what MemoryActor::open does).
    let t = Instant::now();
    let idx = VectorIndex::open(&path, EMBEDDER_ID, DIMS)
        .map_err(anyhow::Error::msg)
        .context("opening the saved index")?;
    let loaded = t.elapsed();
    let (written, gone) = store.memory_changes_since_blocking(idx.seq())?;
    let total = t.elapsed();
    println!(
        "cold start with {n} records: {:.2} s (index load {:.2} s, catch-up since seq {} {:.2} s: {} written, {} forgotten; 0 re-embedded)",
        total.as_secs_f64(),
        loaded.as_secs_f64(),
        idx.seq(),
        (total - loaded).as_secs_f64(),
        written.len(),
        gone.len(),
    );
    // Without a known sequence number (an index rebuilt by an older server) every key is compared.
    let t = Instant::now();
    let keys = store.memory_keys_blocking()?;
    let missing = keys.iter().filter(|k| !idx.contains(**k)).count();
    println!(
        "full key comparison of {} records: {:.2} s ({missing} missing)",
        keys.len(),
        t.elapsed().as_secs_f64()
    );
    // And a rebuild from the stored vectors, as after a lost index file.
    let t = Instant::now();
    let mut fresh = VectorIndex::empty(&path, EMBEDDER_ID, DIMS)?;
    fresh.reserve_more(n)?;
    for chunk in keys.chunks(2000) {
        for (k, v) in store.memory_vectors_blocking(chunk)? {
            fresh.add(k, &v)?;
        }
    }
    println!(
        "rebuild from {n} stored vectors (no embedding): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
