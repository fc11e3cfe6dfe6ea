//! Memory records in the database: the truth the vector index is rebuilt from.
//!
//! Every write is one transaction stamped with the world's global sequence number (through
//! [`crate::world::World::commit_memory`]), and a forgotten record leaves a tombstone, so backups
//! carry memories exactly as they carry objects.

use serde_json::Value as Json;

use super::{MemoryKind, Record};
use crate::store::{Result, StoreError};
use crate::store::{Store, Tombstoned, Write, db_err, write_tombstoned};

/// Memory records, written once; a forgotten one leaves a tombstone.
const MEMORY: Tombstoned = Tombstoned {
    table: "memory",
    key: "key",
    tombstones: "memory_tombstone",
    write: Write::Insert,
};

/// The fields of a memory row without its vector.
const LIST_FIELDS: &str =
    "key, kind, text, prompt, owner, selector, source, origin, embedder, created, seq";

/// Memories written after a sequence number (key, vector, seq), and the keys forgotten.
pub type MemoryChanges = (Vec<(u64, Vec<f32>, u64)>, Vec<u64>);

/// `v`'s `f32`s as little-endian bytes (how vectors are stored, and cached by the benchmark).
pub(crate) fn f32s_to_le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The `f32`s of little-endian `bytes` (a trailing partial value is ignored).
pub(crate) fn le_bytes_to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A vector as it is stored: the base64 text of its little-endian `f32`s. One short string
/// per record instead of an array of 384 numbers makes storing a record ~8x cheaper (each
/// array element is a value SurrealDB checks, encodes and indexes separately).
fn encode_vector(v: &[f32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(f32s_to_le_bytes(v))
}

/// The `vector` field of a memory row: base64 text, or the array of numbers records written
/// before the text form (and backups of them) hold. Empty when it is neither.
fn vector_of(row: &Json) -> Vec<f32> {
    use base64::Engine as _;
    match &row["vector"] {
        Json::String(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .filter(|b| b.len() % 4 == 0)
            .map(|b| le_bytes_to_f32s(&b))
            .unwrap_or_default(),
        Json::Array(a) => a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect(),
        _ => Vec::new(),
    }
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
                let vector = encode_vector(&r.vector);
                let mut row = serde_json::to_value(Record {
                    seq,
                    vector: Vec::new(),
                    ..r.clone()
                })
                .expect("a record serialises");
                row["vector"] = Json::String(vector);
                row
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
                // By record id: `WHERE key IN $keys` would scan the table at every call.
                .query("SELECT key, vector FROM array::map($keys, |$k| type::record('memory', $k))")
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
                    "SELECT {LIST_FIELDS} FROM array::map($keys, |$k| type::record('memory', $k))"
                ))
                .bind(("keys", keys))
                .await?;
            res.take::<Vec<Json>>(0).map_err(db_err)
        })??;
        rows_to_records(rows)
    }

    /// The newest `limit` records with their vectors (the memory map), newest first.
    pub async fn memory_with_vectors(&self, limit: u64) -> Result<Vec<(Record, Vec<f32>)>> {
        let rows = self
            .run(move |db| async move {
                let mut res = db
                    .query(format!(
                        "SELECT {LIST_FIELDS}, vector FROM memory ORDER BY key DESC LIMIT $limit"
                    ))
                    .bind(("limit", limit as i64))
                    .await?;
                res.take::<Vec<Json>>(0).map_err(StoreError::from)
            })
            .await??;
        rows.into_iter()
            .map(|mut row| {
                let vector = vector_of(&row);
                if let Some(r) = row.as_object_mut() {
                    r.remove("vector");
                }
                let record = serde_json::from_value(row)
                    .map_err(StoreError::malformed("a memory record"))?;
                Ok((record, vector))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn record(key: u64, vector: Vec<f32>) -> Record {
        Record {
            key,
            kind: MemoryKind::Note,
            text: format!("note {key}"),
            prompt: String::new(),
            owner: String::new(),
            selector: String::new(),
            source: String::new(),
            origin: crate::memory::ORIGIN_EXTERNAL.into(),
            embedder: "test".into(),
            created: String::new(),
            seq: 0,
            vector,
        }
    }

    #[test]
    fn vectors_come_back_exactly_whether_stored_as_text_or_as_an_older_array() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::embedded(dir.path().join("data"))).unwrap();
        let seq = store.current_seq_blocking().unwrap() + 1;
        let exact = vec![0.1_f32, -2.5e-8, f32::MAX, 1.0 / 3.0];
        store
            .memory_commit_blocking(&[record(1, exact.clone())], &[], seq)
            .unwrap();
        // A record as servers before the text form wrote it (and as their backups hold it).
        store
            .block(|db| async move {
                db.query("CREATE memory:2 CONTENT { key: 2, text: 'old', embedder: 'test', created: '', vector: [0.5, 0.25] } RETURN NONE")
                    .await?
                    .check()?;
                Ok::<_, surrealdb::Error>(())
            })
            .unwrap()
            .unwrap();
        let mut got = store.memory_vectors_blocking(&[1, 2, 3]).unwrap();
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got, vec![(1, exact.clone()), (2, vec![0.5, 0.25])]);
        let (written, _) = store.memory_changes_since_blocking(0).unwrap();
        assert!(
            written
                .iter()
                .any(|(k, v, s)| *k == 1 && *v == exact && *s == seq)
        );
        let records = store.memory_records_blocking(&[2, 1]).unwrap();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.vector.is_empty()));
        // A key written twice is an error, and the batch it came in writes nothing.
        let again = store.memory_commit_blocking(
            &[record(3, vec![1.0]), record(1, vec![2.0])],
            &[],
            seq + 1,
        );
        assert!(again.is_err());
        assert!(store.memory_vectors_blocking(&[3]).unwrap().is_empty());
    }
}
