//! `telos bench --commits N`: what a durable commit costs in the database, next to bare
//! SurrealDB peers measured in the same data directory and the same run.
//!
//! It separates the database's share of a committed write from everything above it (HTTP,
//! actors, scripts, group commit): the load generator's figure over these is the cost of TelOS.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;

use crate::object::{Method, ObjectState, Slot};
use crate::store::{Store, StoreConfig, db_err};

/// An object like the load generator's: a name, a counter, a parent and one method.
fn object(i: usize, version: u64) -> ObjectState {
    let mut slots = BTreeMap::new();
    slots.insert("name".to_string(), Slot::Value(json!(format!("load{i}"))));
    slots.insert("n".to_string(), Slot::Value(json!(version)));
    slots.insert(
        "bump".to_string(),
        Slot::Method(Method::new(
            "function bump(self) { self.n = self.n + 1; return self.n; }",
            "user",
        )),
    );
    let mut o = ObjectState::new(format!("c{i:05}"), &["genesis_obj"], slots);
    o.version = version;
    o
}

pub fn run(n: usize) -> anyhow::Result<()> {
    let n = n.max(100);
    let root = std::env::temp_dir().join(format!("telos-bench-commits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let store = Store::open(&StoreConfig::embedded(root.join("data")))?;
    let result = measure(&store, n);
    drop(store);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn line(what: &str, n: usize, rows: usize, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!(
        "{what}: {:.0} transactions/s, {:.0} rows/s ({:.0} µs per transaction)",
        n as f64 / s,
        (n * rows) as f64 / s,
        s * 1e6 / n as f64
    );
}

/// Runs one statement with two bound values and checks every result.
async fn ok(
    db: &surrealdb::Surreal<surrealdb::engine::any::Any>,
    sql: &'static str,
    vars: [(&'static str, serde_json::Value); 2],
) -> anyhow::Result<()> {
    let [(a, x), (b, y)] = vars;
    db.query(sql)
        .bind((a, x))
        .bind((b, y))
        .await
        .and_then(|r| r.check())
        .map_err(db_err)?;
    Ok(())
}

fn measure(store: &Store, n: usize) -> anyhow::Result<()> {
    println!("# commit bench: {n} durable transactions per line, one writer unless said");
    let mut seq = store.current_seq_blocking()?;
    let mut version = 1;
    seq += 1;
    let all: Vec<ObjectState> = (0..64).map(|i| object(i, version)).collect();
    store.commit_blocking(&all, &[], seq)?;
    for rows in [1usize, 8, 64] {
        let t = Instant::now();
        for _ in 0..n {
            version += 1;
            seq += 1;
            let batch: Vec<ObjectState> = (0..rows).map(|i| object(i, version)).collect();
            store.commit_blocking(&batch, &[], seq)?;
        }
        line(
            &format!("telos commit, {rows} object(s) per transaction"),
            n,
            rows,
            t,
        );
    }

    // The same rows on the same table, as one INSERT … ON DUPLICATE KEY UPDATE.
    for k in [1usize, 8, 64] {
        let t = Instant::now();
        let base = version;
        store.block(move |db| async move {
            for v in 0..n {
                let rows: Vec<serde_json::Value> = (0..k)
                    .map(|i| {
                        let o = object(i, base + 1 + v as u64);
                        json!({"id": o.oid, "oid": o.oid, "name": o.name(), "parents": o.parents(), "doc": o.doc_json(), "version": o.version, "seq": o.version})
                    })
                    .collect();
                let seq = json!(base + 1 + v as u64);
                ok(&db, "INSERT INTO object $rows ON DUPLICATE KEY UPDATE name = $input.name, parents = $input.parents, doc = $input.doc, version = $input.version, seq = $input.seq RETURN NONE;
                     UPSERT meta:seq SET value = $seq RETURN NONE;", [("rows", json!(rows)), ("seq", seq)]).await?;
            }
            anyhow::Ok(())
        })??;
        line(
            &format!("variant: INSERT … ON DUPLICATE KEY UPDATE, {k} object(s)"),
            n,
            k,
            t,
        );
    }

    // Peers in the same database: the same row shape upserted into a schemaless table with no
    // index, and a bare one-field write (FIELD-NOTES' figure).
    let rows: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            let o = object(i, 1);
            json!({"oid": o.oid, "name": o.name(), "parents": o.parents(), "doc": o.doc_json(), "version": 1, "seq": 1})
        })
        .collect();
    for k in [1usize, 8] {
        let batch = serde_json::Value::Array(rows[..k].to_vec());
        let t = Instant::now();
        store.block(move |db| async move {
            for _ in 0..n {
                ok(&db, "BEGIN TRANSACTION;
                     FOR $o IN $rows { UPSERT type::record('peer_row', $o.oid) CONTENT $o RETURN NONE; };
                     COMMIT TRANSACTION;", [("rows", batch.clone()), ("seq", json!(0))]).await?;
            }
            anyhow::Ok(())
        })??;
        line(
            &format!("peer: same rows, schemaless table, {k} per transaction"),
            n,
            k,
            t,
        );
    }
    // A log row: the whole batch as one JSON text in one new record (what a write-ahead log
    // would commit), and the same followed by deleting it again (the checkpoint's share).
    for k in [1usize, 8, 64] {
        let text = serde_json::to_string(&json!({
            "objects": (0..k).map(|i| object(i, 1)).map(|o| json!({"oid": o.oid, "doc": o.doc_json(), "version": 1})).collect::<Vec<_>>(),
            "gone": [],
        }))?;
        let t = Instant::now();
        let start = seq + 1_000_000 * k as u64;
        store.block(move |db| async move {
            for i in 0..n as u64 {
                ok(
                    &db,
                    "CREATE type::record('peer_log', $seq) CONTENT { batch: $batch } RETURN NONE",
                    [("seq", json!(start + i)), ("batch", json!(text))],
                )
                .await?;
            }
            anyhow::Ok(())
        })??;
        line(
            &format!("peer: one log row holding {k} object(s) as text"),
            n,
            k,
            t,
        );
    }
    // The same one-object log row through the SDK's create() (no SurrealQL text to parse).
    {
        let text = serde_json::to_string(
            &json!({"objects": [json!({"oid": "c00000", "doc": object(0, 1).doc_json(), "version": 1})], "gone": []}),
        )?;
        let start = seq + 50_000_000;
        let t = Instant::now();
        store.block(move |db| async move {
            for i in 0..n as u64 {
                let _: Option<serde_json::Value> = db
                    .create(("peer_log3", (start + i) as i64))
                    .content(json!({ "seq": start + i, "batch": text }))
                    .await
                    .map_err(db_err)?;
            }
            anyhow::Ok(())
        })??;
        line(
            "peer: one log row holding 1 object through create()",
            n,
            1,
            t,
        );
    }
    // What removing applied log records costs: one statement per record, or one range.
    for how in ["one DELETE per record", "one range DELETE", "REMOVE TABLE"] {
        let first = seq + 10_000_000;
        let last = first + n as u64 - 1;
        store.block(move |db| async move {
            ok(
                &db,
                "FOR $s IN $ids { CREATE type::record('peer_log2', $s) CONTENT { seq: $s, batch: 'x' } RETURN NONE; }",
                [("ids", json!((first..=last).collect::<Vec<_>>())), ("unused", json!(0))],
            )
            .await
        })??;
        let t = Instant::now();
        store.block(move |db| async move {
            if how.starts_with("one DELETE") {
                ok(
                    &db,
                    "FOR $s IN $ids { DELETE type::record('peer_log2', $s) RETURN NONE; }",
                    [
                        ("ids", json!((first..=last).collect::<Vec<_>>())),
                        ("unused", json!(0)),
                    ],
                )
                .await
            } else if how == "REMOVE TABLE" {
                db.query("REMOVE TABLE peer_log2")
                    .await
                    .and_then(|r| r.check())
                    .map_err(db_err)?;
                anyhow::Ok(())
            } else {
                db.query(format!("DELETE peer_log2:{first}..={last} RETURN NONE"))
                    .await
                    .and_then(|r| r.check())
                    .map_err(db_err)?;
                anyhow::Ok(())
            }
        })??;
        let el = t.elapsed();
        let left: Vec<serde_json::Value> = store.block(|db| async move {
            db.query("DEFINE TABLE IF NOT EXISTS peer_log2 SCHEMALESS; SELECT count() AS n FROM peer_log2 GROUP ALL")
                .await
                .and_then(|mut r| r.take::<Vec<serde_json::Value>>(1))
                .map_err(db_err)
        })??;
        println!(
            "peer: removing {n} log records, {how}: {:.1} µs per record ({left:?} left)",
            el.as_secs_f64() * 1e6 / n as f64
        );
    }
    let t = Instant::now();
    store.block(move |db| async move {
        for i in 0..n {
            ok(
                &db,
                "UPSERT peer:1 SET n = $n RETURN NONE",
                [("n", json!(i)), ("w", json!(1))],
            )
            .await?;
        }
        anyhow::Ok(())
    })??;
    line("peer: bare UPSERT of one field", n, 1, t);
    let t = Instant::now();
    store.block(move |db| async move {
        let writers = (0..8).map(|w| {
            let db = db.clone();
            async move {
                for i in 0..n / 8 {
                    ok(
                        &db,
                        "UPSERT type::record('peer', $w) SET n = $n RETURN NONE",
                        [("w", json!(w)), ("n", json!(i))],
                    )
                    .await?;
                }
                anyhow::Ok(())
            }
        });
        for r in futures_util::future::join_all(writers).await {
            r?;
        }
        anyhow::Ok(())
    })??;
    line("peer: bare UPSERT of one field, 8 writers", n / 8 * 8, 1, t);
    Ok(())
}
