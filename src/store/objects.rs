//! The object table: load, commit (rows and tombstones in one transaction), list, count.

use serde_json::{Value as Json, json};
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

use super::{Result, StoreError};
use super::{Store, Tombstoned, Write, db_err, write_tombstoned};
use crate::object::ObjectState;

/// A summary row of the object list.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ObjectSummary {
    pub oid: String,
    pub name: String,
}

impl Store {
    /// Loads one object, or `None` when there is no such object.
    pub fn load_blocking(&self, oid: &str) -> Result<Option<ObjectState>> {
        let oid = oid.to_string();
        self.block(|db| load(db, oid))?
    }

    pub async fn load(&self, oid: &str) -> Result<Option<ObjectState>> {
        let oid = oid.to_string();
        self.run(|db| load(db, oid)).await?
    }

    /// Writes `objects` (each with its new version) and deletes `deleted`, all in one
    /// transaction stamped with the global sequence number `seq`.
    pub fn commit_blocking(
        &self,
        objects: &[ObjectState],
        deleted: &[String],
        seq: u64,
    ) -> Result<()> {
        let (rows, gone) = commit_rows(objects, deleted, seq);
        self.block(move |db| commit(db, rows, gone, seq))?
    }

    /// Inserts `objects` (none of them stored yet) in one statement, each row stamped with
    /// `seq`, without the commit protocol: for filling a benchmark's world quickly.
    pub async fn insert_objects_fresh(&self, objects: &[ObjectState], seq: u64) -> Result<()> {
        let rows = objects
            .iter()
            .map(|o| super::log::object_row(o, seq))
            .collect();
        self.insert_fresh("object", "oid", rows).await
    }

    /// [`Store::commit_blocking`] for async callers.
    pub async fn commit_async(&self, objects: Vec<ObjectState>, seq: u64) -> Result<()> {
        let (rows, gone) = commit_rows(&objects, &[], seq);
        self.run(move |db| commit(db, rows, gone, seq)).await?
    }

    /// The sequence number of the last commit (0 for a new database).
    pub fn current_seq_blocking(&self) -> Result<u64> {
        self.block(|db| async move {
            let mut res = db.query("SELECT VALUE value FROM ONLY meta:seq").await?;
            let v: Option<i64> = res.take(0)?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })?
    }

    /// One page of the object list, ordered by oid.
    pub async fn list(&self, offset: u64, limit: u64) -> Result<Vec<ObjectSummary>> {
        self.run(move |db| async move {
            let mut res = db
                .query("SELECT oid, name FROM object ORDER BY oid LIMIT $limit START $offset")
                .bind(("limit", limit as i64))
                .bind(("offset", offset as i64))
                .await?;
            let rows: Vec<Json> = res.take(0)?;
            Ok(summaries(rows))
        })
        .await?
    }

    /// Up to `limit` objects after the oid `after` ("": from the start), in oid order (a
    /// table scan runs in key order). SurrealDB 3.3 has no seek here: the scan skips the keys
    /// before `after` (about 1 µs each, not decoded), where an `offset` page decodes and sorts
    /// every row before it, and a record-range scan reads the whole rest of the table.
    pub async fn list_after(&self, after: &str, limit: u64) -> Result<Vec<ObjectSummary>> {
        let after = surrealdb::types::RecordId::new("object", after.to_string());
        self.run(move |db| async move {
            let mut res = db
                .query("SELECT oid, name FROM object WHERE id > $after LIMIT $limit")
                .bind(("after", after))
                .bind(("limit", limit as i64))
                .await?;
            let rows: Vec<Json> = res.take(0)?;
            Ok(summaries(rows))
        })
        .await?
    }

    /// Every object's oid.
    pub async fn all_oids(&self) -> Result<Vec<String>> {
        self.run(|db| async move {
            let mut res = db
                .query("SELECT VALUE oid FROM object ORDER BY oid")
                .await?;
            res.take::<Vec<String>>(0).map_err(db_err)
        })
        .await?
    }

    /// The oids of objects that name `oid` as a parent (at most 10), leaving out `except`.
    pub fn children_blocking(&self, oid: &str, except: Vec<String>) -> Result<Vec<String>> {
        let oid = oid.to_string();
        self.block(move |db| async move {
            let mut res = db
                .query("SELECT VALUE oid FROM object WHERE parents CONTAINS $oid AND oid NOTINSIDE $except LIMIT 10")
                .bind(("oid", oid))
                .bind(("except", except))
                .await
                ?;
            res.take::<Vec<String>>(0).map_err(db_err)
        })?
    }

    /// How many objects the world holds.
    pub async fn count(&self) -> Result<u64> {
        self.count_rows("object").await
    }
}

async fn load(db: Surreal<Any>, oid: String) -> Result<Option<ObjectState>> {
    let mut res = db
        .query("SELECT doc, version FROM type::record('object', $oid)")
        .bind(("oid", oid.clone()))
        .await?;
    let rows: Vec<Json> = res.take(0)?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let doc = row["doc"]
        .as_str()
        .ok_or_else(|| StoreError::Incomplete(format!("object {oid} has no doc")))?;
    let version = row["version"].as_u64().unwrap_or(0);
    let what = format!("the stored object {oid}");
    ObjectState::from_doc(oid, doc, version)
        .map(Some)
        .map_err(StoreError::malformed(what))
}

fn commit_rows(objects: &[ObjectState], deleted: &[String], seq: u64) -> (Json, Json) {
    let rows: Vec<Json> = objects
        .iter()
        .map(|o| super::log::object_row(o, seq))
        .collect();
    let gone: Vec<Json> = deleted
        .iter()
        .map(|oid| json!({ "oid": oid, "seq": seq }))
        .collect();
    (Json::Array(rows), Json::Array(gone))
}

/// Objects, rewritten whole at each commit; a deleted one leaves a tombstone.
pub(super) const OBJECTS: Tombstoned = Tombstoned {
    table: "object",
    key: "oid",
    tombstones: "tombstone",
    write: Write::Upsert(&["name", "parents", "doc", "version", "seq"]),
};

async fn commit(db: Surreal<Any>, rows: Json, gone: Json, seq: u64) -> Result<()> {
    write_tombstoned(&db, &OBJECTS, rows, gone, "", seq)
        .await
        .map_err(StoreError::Database)
}

/// `{oid, name}` rows as summaries.
fn summaries(rows: Vec<Json>) -> Vec<ObjectSummary> {
    rows.into_iter()
        .map(|r| ObjectSummary {
            oid: r["oid"].as_str().unwrap_or_default().to_string(),
            name: r["name"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::object::Slot;
    use crate::store::StoreConfig;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::embedded(dir.path().join("data"))).unwrap();
        (dir, store)
    }

    fn child(oid: &str, parent: &str, n: i64, version: u64) -> ObjectState {
        let mut slots = BTreeMap::new();
        slots.insert("n".to_string(), Slot::Value(json!(n)));
        let mut o = ObjectState::new(oid, &[parent], slots);
        o.version = version;
        o
    }

    #[test]
    fn a_new_world_is_awakened_with_the_primordial_objects_and_nothing_else() {
        let (_dir, store) = store();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let oids = rt.block_on(store.all_oids()).unwrap();
        for name in [
            "genesis_obj",
            "traits_obj",
            "memory_manager",
            "backup_manager",
        ] {
            assert!(
                oids.iter().any(|o| o == name),
                "{name} missing from {oids:?}"
            );
        }
        assert_eq!(rt.block_on(store.count()).unwrap(), oids.len() as u64);
    }

    #[test]
    fn a_committed_object_loads_back_with_its_slots_and_version() {
        let (_dir, store) = store();
        let seq = store.current_seq_blocking().unwrap() + 1;
        store
            .commit_blocking(&[child("o1", "genesis_obj", 7, 3)], &[], seq)
            .unwrap();
        let back = store.load_blocking("o1").unwrap().expect("stored");
        assert_eq!(back.version, 3);
        assert_eq!(back.parents(), vec!["genesis_obj".to_string()]);
        assert!(matches!(back.slots.get("n"), Some(Slot::Value(v)) if *v == json!(7)));
        assert_eq!(store.current_seq_blocking().unwrap(), seq);
        assert!(store.load_blocking("nobody").unwrap().is_none());
    }

    #[test]
    fn children_are_found_by_parent_and_a_deleted_object_is_gone() {
        let (_dir, store) = store();
        let seq = store.current_seq_blocking().unwrap();
        store
            .commit_blocking(
                &[child("p1", "genesis_obj", 0, 1), child("c1", "p1", 1, 1)],
                &[],
                seq + 1,
            )
            .unwrap();
        assert_eq!(
            store.children_blocking("p1", vec![]).unwrap(),
            vec!["c1".to_string()]
        );
        store
            .commit_blocking(&[], &["c1".to_string()], seq + 2)
            .unwrap();
        assert!(store.children_blocking("p1", vec![]).unwrap().is_empty());
        assert!(store.load_blocking("c1").unwrap().is_none());
    }

    #[test]
    fn listing_pages_through_every_object_once() {
        let (_dir, store) = store();
        let seq = store.current_seq_blocking().unwrap();
        let objects: Vec<ObjectState> = (0..7)
            .map(|i| child(&format!("o{i}"), "genesis_obj", i, 1))
            .collect();
        store.commit_blocking(&objects, &[], seq + 1).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let total = rt.block_on(store.count()).unwrap();
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let page = rt.block_on(store.list(offset, 3)).unwrap();
            if page.is_empty() {
                break;
            }
            offset += page.len() as u64;
            seen.extend(page.into_iter().map(|s| s.oid));
        }
        let unique: std::collections::BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(seen.len() as u64, total);
        assert_eq!(unique.len(), seen.len());
    }
}
