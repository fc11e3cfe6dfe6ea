//! Memory records in the database: the truth the vector index is rebuilt from.
//!
//! Every write is one transaction stamped with the world's global sequence number (through
//! [`crate::world::World::commit_memory`]), and a forgotten record leaves a tombstone, so backups
//! carry memories exactly as they carry objects.

use serde_json::Value as Json;

use super::{MemoryKind, Record};
use crate::store::{Result, StoreError};
use crate::store::{Store, Tombstoned, db_err, write_tombstoned};

/// Memory records, written once; a forgotten one leaves a tombstone.
const MEMORY: Tombstoned = Tombstoned {
    table: "memory",
    key: "key",
    tombstones: "memory_tombstone",
    write: "CREATE",
};

/// The fields of a memory row without its vector.
const LIST_FIELDS: &str =
    "key, kind, text, prompt, owner, selector, source, origin, embedder, created, seq";

/// Memories written after a sequence number (key, vector, seq), and the keys forgotten.
pub type MemoryChanges = (Vec<(u64, Vec<f32>, u64)>, Vec<u64>);

/// The `vector` field of a memory row.
fn vector_of(row: &Json) -> Vec<f32> {
    row["vector"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
        .unwrap_or_default()
}

fn rows_to_records(rows: Vec<Json>) -> Result<Vec<Record>> {
    rows.into_iter()
        .map(|r| serde_json::from_value(r).map_err(StoreError::malformed("a memory record")))
        .collect()
}

impl Store {
    /// How many memory records there are.
    pub async fn memory_count(&self) -> Result<u64> {
        self.count_rows("memory").await
    }

    /// Writes `add` and deletes (with tombstones) `remove`, in one transaction at `seq`.
    pub fn memory_commit_blocking(&self, add: &[Record], remove: &[u64], seq: u64) -> Result<()> {
        let rows: Vec<Json> = add
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.seq = seq;
                serde_json::to_value(r).expect("a record serialises")
            })
            .collect();
        let gone: Vec<Json> = remove
            .iter()
            .map(|k| serde_json::json!({ "key": *k as i64, "seq": seq }))
            .collect();
        self.block(move |db| async move {
            write_tombstoned(&db, &MEMORY, Json::from(rows), Json::from(gone), "", seq)
                .await
                .map_err(StoreError::Database)
        })?
    }

    /// How many records each (owner, kind) has.
    pub fn memory_owner_counts_blocking(
        &self,
    ) -> Result<std::collections::HashMap<(String, MemoryKind), usize>> {
        self.block(|db| async move {
            let mut res = db
                .query("SELECT owner, kind, count() AS n FROM memory GROUP BY owner, kind")
                .await?;
            let rows: Vec<Json> = res.take(0)?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let text = |f: &str| r[f].as_str().unwrap_or_default().to_string();
                    (
                        (
                            text("owner"),
                            serde_json::from_value(r["kind"].clone()).unwrap_or_default(),
                        ),
                        r["n"].as_u64().unwrap_or(0) as usize,
                    )
                })
                .collect())
        })?
    }

    /// Every memory key.
    pub fn memory_keys_blocking(&self) -> Result<Vec<u64>> {
        self.block(|db| async move {
            let mut res = db.query("SELECT VALUE key FROM memory").await?;
            let keys: Vec<i64> = res.take(0)?;
            Ok(keys.into_iter().map(|k| k as u64).collect())
        })?
    }

    /// What changed after `seq`: records written (key, vector, seq) and keys forgotten.
    pub fn memory_changes_since_blocking(&self, seq: u64) -> Result<MemoryChanges> {
        self.block(move |db| async move {
            let mut res = db
                .query(
                    "SELECT key, vector, seq FROM memory WHERE seq > $seq;
                     SELECT VALUE key FROM memory_tombstone WHERE seq > $seq;",
                )
                .bind(("seq", seq as i64))
                .await?;
            let rows: Vec<Json> = res.take(0)?;
            let gone: Vec<i64> = res.take(1)?;
            let written = rows
                .into_iter()
                .map(|r| {
                    (
                        r["key"].as_u64().unwrap_or_default(),
                        vector_of(&r),
                        r["seq"].as_u64().unwrap_or_default(),
                    )
                })
                .collect();
            Ok((written, gone.into_iter().map(|k| k as u64).collect()))
        })?
    }

    /// The keys of the memories of `owner` of `kind`.
    pub fn memory_keys_of_blocking(&self, owner: &str, kind: MemoryKind) -> Result<Vec<u64>> {
        let owner = owner.to_string();
        self.block(move |db| async move {
            let mut res = db
                .query("SELECT VALUE key FROM memory WHERE owner = $owner AND kind = $kind")
                .bind(("owner", owner))
                .bind(("kind", kind.as_str()))
                .await?;
            let keys: Vec<i64> = res.take(0)?;
            Ok(keys.into_iter().map(|k| k as u64).collect())
        })?
    }

    /// The stored vectors of `keys` (the index is rebuilt from these; nothing is re-embedded).
    pub fn memory_vectors_blocking(&self, keys: &[u64]) -> Result<Vec<(u64, Vec<f32>)>> {
        let keys: Vec<i64> = keys.iter().map(|k| *k as i64).collect();
        self.block(move |db| async move {
            let mut res = db
                .query("SELECT key, vector FROM memory WHERE key IN $keys")
                .bind(("keys", keys))
                .await?;
            let rows: Vec<Json> = res.take(0)?;
            Ok(rows
                .into_iter()
                .map(|r| (r["key"].as_u64().unwrap_or_default(), vector_of(&r)))
                .collect())
        })?
    }

    /// The records of `keys`, without vectors, in no particular order.
    pub fn memory_records_blocking(&self, keys: &[u64]) -> Result<Vec<Record>> {
        let keys: Vec<i64> = keys.iter().map(|k| *k as i64).collect();
        let rows = self.block(move |db| async move {
            let mut res = db
                .query(format!(
                    "SELECT {LIST_FIELDS} FROM memory WHERE key IN $keys"
                ))
                .bind(("keys", keys))
                .await?;
            res.take::<Vec<Json>>(0).map_err(db_err)
        })??;
        rows_to_records(rows)
    }

    /// One page of records, newest first, optionally of one owner; and the total count.
    pub async fn memory_page(
        &self,
        owner: Option<String>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Record>, u64)> {
        let (rows, total) = self
            .run(move |db| async move {
                let filter = if owner.is_some() {
                    "WHERE owner = $owner"
                } else {
                    ""
                };
                let mut res = db
                    .query(format!(
                        "SELECT {LIST_FIELDS} FROM memory {filter} ORDER BY key DESC LIMIT $limit START $offset;
                         SELECT count() AS n FROM memory {filter} GROUP ALL;"
                    ))
                    .bind(("owner", owner.unwrap_or_default()))
                    .bind(("limit", limit as i64))
                    .bind(("offset", offset as i64))
                    .await
                    ?;
                let rows: Vec<Json> = res.take(0)?;
                let counts: Vec<Json> = res.take(1)?;
                let total = counts.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
                Ok::<_, StoreError>((rows, total))
            })
            .await??;
        Ok((rows_to_records(rows)?, total))
    }
}
