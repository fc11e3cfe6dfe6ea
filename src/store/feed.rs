//! The change feed: a consistent read of what changed after a sequence number (what backups
//! carry) and its application to an empty store (what restores do).

use futures_util::StreamExt as _;
use serde_json::Value as Json;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;
use surrealdb::method::Transaction;

use super::{Result, Store, db_err};

/// The fields of an object row, as backups carry them.
const ROW_FIELDS: &str = "oid, name, parents, doc, version, seq";

/// A consistent read of what changed after some sequence number.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Object rows (oid, name, parents, doc, version, seq).
    pub objects: Vec<Json>,
    /// `{oid, seq}` of deleted objects.
    pub tombstones: Vec<Json>,
    /// Memory records (with their vectors).
    pub memories: Vec<Json>,
    /// `{key, seq}` of forgotten memory records.
    pub memory_tombstones: Vec<Json>,
    /// The sequence number this read is consistent with.
    pub seq: u64,
    /// How many objects the world held at that point.
    pub total_objects: u64,
    /// How many memory records it held.
    pub total_memories: u64,
}

impl Store {
    /// Every object written and every object deleted after `after` (0: everything), read in
    /// one transaction so the result is consistent. A full read reports its phases to the job
    /// it runs in (`read objects`, `read memories`).
    pub async fn changes_since(&self, after: u64) -> Result<Changes> {
        let (sender, mut pages) = tokio::sync::mpsc::unbounded_channel();
        // The read runs on the store's runtime, where this task's job is not in scope: its
        // progress comes back over a channel and is reported from here.
        let read = self.run(move |db| read_snapshot(db, after, sender));
        tokio::pin!(read);
        let changes = loop {
            tokio::select! {
                Some((phase, done, total)) = pages.recv() => crate::progress::report(phase, done, total),
                changes = &mut read => break changes?,
            }
        };
        // What the read sent last may still be queued when it ends.
        while let Ok((phase, done, total)) = pages.try_recv() {
            crate::progress::report(phase, done, total);
        }
        changes
    }

    /// Applies backed-up changes: upserts the rows, deletes tombstoned objects, records the
    /// tombstones and the sequence. Used by restores into a fresh database.
    pub async fn apply(&self, changes: Changes) -> Result<()> {
        self.apply_into(changes, false).await
    }

    /// [`Store::apply`] into tables known to be empty (the full backup a restore starts
    /// with): rows are inserted in bulk, which skips looking each one up first.
    pub async fn apply_fresh(&self, changes: Changes) -> Result<()> {
        self.apply_into(changes, true).await
    }

    async fn apply_into(&self, changes: Changes, fresh: bool) -> Result<()> {
        const BATCH: usize = 500;
        let Changes {
            objects,
            tombstones,
            memories,
            memory_tombstones,
            seq,
            ..
        } = changes;
        self.upsert_batches("memory", "key", memories, BATCH, fresh)
            .await?;
        self.run_statement(
            "BEGIN TRANSACTION;
             FOR $t IN $rows {
                 DELETE type::record('memory', $t.key) RETURN NONE;
                 UPSERT type::record('memory_tombstone', $t.key) CONTENT $t RETURN NONE;
             };
             COMMIT TRANSACTION;",
            Json::Array(memory_tombstones),
        )
        .await?;
        self.upsert_batches("object", "oid", objects, BATCH, fresh)
            .await?;
        let tombs = Json::Array(tombstones);
        self.run(move |db| async move {
            db.query(
                "BEGIN TRANSACTION;
                 FOR $t IN $tombs {
                     DELETE type::record('object', $t.oid) RETURN NONE;
                     UPSERT type::record('tombstone', $t.oid) CONTENT $t RETURN NONE;
                 };
                 UPSERT meta:seq SET value = $seq RETURN NONE;
                 COMMIT TRANSACTION;",
            )
            .bind(("tombs", tombs))
            .bind(("seq", seq as i64))
            .await
            .and_then(|r| r.check())
            .map_err(db_err)
        })
        .await??;
        Ok(())
    }

    /// Upserts `rows` into `table` (record id from the field `id_field`), `batch` per
    /// transaction; into an empty table (`fresh`) they are inserted as they are.
    async fn upsert_batches(
        &self,
        table: &'static str,
        id_field: &'static str,
        mut rows: Vec<Json>,
        batch: usize,
        fresh: bool,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = if fresh {
            for row in &mut rows {
                if let Some(r) = row.as_object_mut() {
                    let id = r.get(id_field).cloned().unwrap_or(Json::Null);
                    r.insert("id".into(), id);
                }
            }
            format!("INSERT INTO {table} $rows RETURN NONE;")
        } else {
            format!(
                "BEGIN TRANSACTION;
                 FOR $r IN $rows {{ UPSERT type::record('{table}', $r.{id_field}) CONTENT $r RETURN NONE; }};
                 COMMIT TRANSACTION;"
            )
        };
        // Into empty tables, two inserts run at once (they touch disjoint keys): on two cores
        // that is most of the gain to be had, the rest is SurrealDB's cost per record.
        let at_once = if fresh { 2 } else { 1 };
        let total = rows.len() as u64;
        let phase = format!("restore {table}");
        crate::progress::report(&phase, 0, total);
        let mut writes = futures_util::stream::iter(rows.chunks(batch))
            .map(|chunk| {
                let n = chunk.len() as u64;
                let write = self.run_statement(&sql, Json::Array(chunk.to_vec()));
                async move { write.await.map(|()| n) }
            })
            .buffer_unordered(at_once);
        let mut done = 0;
        while let Some(written) = writes.next().await {
            done += written?;
            crate::progress::report(&phase, done, total);
        }
        Ok(())
    }

    /// Inserts `rows` into `table`, known to be empty of them (a restore's first backup):
    /// each row's record id is its `id_field`.
    pub async fn insert_fresh(
        &self,
        table: &'static str,
        id_field: &'static str,
        mut rows: Vec<Json>,
    ) -> Result<()> {
        for row in &mut rows {
            if let Some(r) = row.as_object_mut() {
                let id = r.get(id_field).cloned().unwrap_or(Json::Null);
                r.insert("id".into(), id);
            }
        }
        self.run_statement(
            &format!("INSERT INTO {table} $rows RETURN NONE;"),
            Json::Array(rows),
        )
        .await
    }

    /// Runs one statement with `$rows` bound.
    async fn run_statement(&self, sql: &str, rows: Json) -> Result<()> {
        let sql = sql.to_string();
        self.run(move |db| async move {
            db.query(sql)
                .bind(("rows", rows))
                .await
                .and_then(|r| r.check())
                .map(|_| ())
                .map_err(db_err)
        })
        .await?
    }
}

type PageSender = tokio::sync::mpsc::UnboundedSender<(&'static str, u64, u64)>;

/// [`Store::changes_since`] on the store's runtime: every statement runs in one client-side
/// transaction (a snapshot: commits made meanwhile are not seen), cancelled at the end since
/// it writes nothing.
async fn read_snapshot(db: Surreal<Any>, after: u64, pages: PageSender) -> Result<Changes> {
    let tx = db.begin().await.map_err(db_err)?;
    let read = read_in(&tx, after, &pages).await;
    // Read-only: nothing to commit. A failed cancel leaves nothing behind that matters.
    let _ = tx.cancel().await;
    read
}

async fn read_in(tx: &Transaction<Any>, after: u64, pages: &PageSender) -> Result<Changes> {
    let mut res = tx
        .query(
            "SELECT VALUE value FROM ONLY meta:seq;
             SELECT count() AS n FROM object GROUP ALL;
             SELECT count() AS n FROM memory GROUP ALL;
             SELECT oid, seq FROM tombstone WHERE seq > $after ORDER BY oid;
             SELECT key, seq FROM memory_tombstone WHERE seq > $after ORDER BY key;",
        )
        .bind(("after", after as i64))
        .await
        .map_err(db_err)?;
    let seq: Option<i64> = res.take(0).map_err(db_err)?;
    let counts: Vec<Json> = res.take(1).map_err(db_err)?;
    let memory_counts: Vec<Json> = res.take(2).map_err(db_err)?;
    let tombstones: Vec<Json> = res.take(3).map_err(db_err)?;
    let memory_tombstones: Vec<Json> = res.take(4).map_err(db_err)?;
    let n = |rows: &[Json]| rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
    let (total_objects, total_memories) = (n(&counts), n(&memory_counts));
    // One statement per table, inside the snapshot: SurrealDB 3.3's record-range scan reads the
    // whole rest of the range before its LIMIT, so reading a table page by page would cost the
    // square of its size (a full backup of 100,000 objects took 5.6 s paged, 1.0 s whole). The
    // read's progress is therefore a phase with no measure until it has the rows.
    let (objects, memories) = if after == 0 {
        (
            read_table(tx, "object", ROW_FIELDS, total_objects, pages).await?,
            read_table(tx, "memory", "* OMIT id", total_memories, pages).await?,
        )
    } else {
        // An incremental reads through the `seq` indexes: usually a small part of the world.
        let mut res = tx
            .query(format!(
                "SELECT {ROW_FIELDS} FROM object WHERE seq > $after ORDER BY oid;
                 SELECT * OMIT id FROM memory WHERE seq > $after ORDER BY key;"
            ))
            .bind(("after", after as i64))
            .await
            .map_err(db_err)?;
        (res.take(0).map_err(db_err)?, res.take(1).map_err(db_err)?)
    };
    Ok(Changes {
        objects,
        tombstones,
        memories,
        memory_tombstones,
        seq: seq.unwrap_or(0).max(0) as u64,
        total_objects,
        total_memories,
    })
}

/// Every row of `table` (`fields` of each) in record-key order, reported as the phase
/// `read objects` / `read memories`: no measure while it runs, `total` of `total` once read.
async fn read_table(
    tx: &Transaction<Any>,
    table: &'static str,
    fields: &str,
    total: u64,
    pages: &PageSender,
) -> Result<Vec<Json>> {
    let phase = if table == "object" {
        "read objects"
    } else {
        "read memories"
    };
    let _ = pages.send((phase, 0, 0));
    let rows: Vec<Json> = tx
        .query(format!("SELECT {fields} FROM {table}"))
        .await
        .and_then(|mut r| r.take(0))
        .map_err(db_err)?;
    let n = rows.len() as u64;
    let _ = pages.send((phase, n, n.max(total)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::object::ObjectState;
    use crate::store::StoreConfig;

    fn open(dir: &tempfile::TempDir, name: &str) -> Store {
        Store::open(&StoreConfig::embedded(dir.path().join(name))).unwrap()
    }

    #[test]
    fn changes_after_a_sequence_hold_only_later_writes_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "data");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let base = store.current_seq_blocking().unwrap();
        let a = ObjectState::new("oa", &["genesis_obj"], BTreeMap::new());
        let b = ObjectState::new("ob", &["genesis_obj"], BTreeMap::new());
        store.commit_blocking(&[a], &[], base + 1).unwrap();
        store.commit_blocking(&[b], &[], base + 2).unwrap();
        store
            .commit_blocking(&[], &["oa".into()], base + 3)
            .unwrap();

        let later = rt.block_on(store.changes_since(base + 1)).unwrap();
        let oids: Vec<&str> = later
            .objects
            .iter()
            .filter_map(|o| o["oid"].as_str())
            .collect();
        assert_eq!(oids, vec!["ob"]);
        assert_eq!(later.tombstones.len(), 1);
        assert_eq!(later.tombstones[0]["oid"], "oa");
        assert_eq!(later.seq, base + 3);
        assert_eq!(later.total_objects, rt.block_on(store.count()).unwrap());
    }

    #[test]
    fn everything_read_from_one_store_applies_to_an_empty_one_as_the_same_world() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "data");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let base = store.current_seq_blocking().unwrap();
        let a = ObjectState::new("oa", &["genesis_obj"], BTreeMap::new());
        store.commit_blocking(&[a], &[], base + 1).unwrap();
        let all = rt.block_on(store.changes_since(0)).unwrap();

        let copy = Store::open_empty(&StoreConfig::embedded(dir.path().join("copy"))).unwrap();
        rt.block_on(copy.apply(all.clone())).unwrap();
        assert_eq!(
            rt.block_on(copy.all_oids()).unwrap(),
            rt.block_on(store.all_oids()).unwrap()
        );
        assert_eq!(copy.current_seq_blocking().unwrap(), all.seq);
        assert!(copy.load_blocking("oa").unwrap().is_some());
    }

    #[test]
    fn a_full_read_holds_every_object_once_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "data");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let base = store.current_seq_blocking().unwrap();
        let many: Vec<ObjectState> = (0..4007)
            .map(|i| ObjectState::new(format!("o{i:05}"), &["genesis_obj"], BTreeMap::new()))
            .collect();
        store.commit_blocking(&many, &[], base + 1).unwrap();

        let all = rt.block_on(store.changes_since(0)).unwrap();
        let oids: Vec<String> = all
            .objects
            .iter()
            .map(|o| o["oid"].as_str().unwrap().to_string())
            .collect();
        let mut expected = rt.block_on(store.all_oids()).unwrap();
        expected.sort();
        assert_eq!(oids, expected, "each object once, in key order");
        assert_eq!(all.total_objects, oids.len() as u64);
        assert!(all.objects.iter().all(|o| o["doc"].is_string()));
    }

    #[test]
    fn a_read_transaction_does_not_see_commits_made_after_it_began() {
        // What a read of several statements relies on: they all see one snapshot.
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "data");
        let base = store.current_seq_blocking().unwrap();
        let (began, go) = std::sync::mpsc::channel();
        let (committed, wait) = std::sync::mpsc::channel::<()>();
        let reader = store.clone();
        let seen = std::thread::spawn(move || {
            reader
                .block(move |db| async move {
                    let tx = db.begin().await.unwrap();
                    let before: Vec<Json> = tx
                        .query("SELECT VALUE oid FROM object")
                        .await
                        .unwrap()
                        .take(0)
                        .unwrap();
                    began.send(()).unwrap();
                    // The store runtime's other worker commits meanwhile.
                    tokio::task::spawn_blocking(move || wait.recv().unwrap())
                        .await
                        .unwrap();
                    let after: Vec<Json> = tx
                        .query("SELECT VALUE oid FROM object")
                        .await
                        .unwrap()
                        .take(0)
                        .unwrap();
                    let _ = tx.cancel().await;
                    (before, after)
                })
                .unwrap()
        });
        go.recv().unwrap();
        let late = ObjectState::new("late", &["genesis_obj"], BTreeMap::new());
        store.commit_blocking(&[late], &[], base + 1).unwrap();
        committed.send(()).unwrap();
        let (before, after) = seen.join().unwrap();
        assert_eq!(before, after, "the snapshot did not change");
        assert!(!after.contains(&Json::from("late")));
        assert!(store.load_blocking("late").unwrap().is_some());
    }
}
