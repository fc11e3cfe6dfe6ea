//! The vector index: usearch (HNSW, cosine, f32) over memory records, as a file-backed cache.
//!
//! The records in the database are the truth; this index only makes search fast. Beside the
//! index file a small sidecar (`<file>.meta.json`) records which embedder and dimension made it,
//! the sha256 of the index file, and which keys it holds (usearch cannot list its keys), so a
//! catch-up pass can add missing records and drop keys whose record is gone. The checksum is
//! checked before usearch reads the file, so a truncated or overwritten file is never parsed.
//! Both files are written to temporary names, fsynced and renamed; a crash between the two
//! renames leaves a checksum mismatch, and the index is rebuilt. [`VectorIndex::open`] answers
//! `Err(reason)` for anything it cannot trust, and the caller rebuilds from the stored vectors.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Meta {
    embedder: String,
    dims: usize,
    sha256: String,
    /// The sequence number of the last memory commit the index reflects (0: unknown).
    #[serde(default)]
    seq: u64,
    keys: BTreeSet<u64>,
}

/// A search hit: record key and cosine distance (0 = same direction, 2 = opposite).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hit {
    pub key: u64,
    pub distance: f32,
}

pub struct VectorIndex {
    index: Index,
    path: PathBuf,
    embedder: String,
    dims: usize,
    keys: BTreeSet<u64>,
    /// The sequence number of the last memory commit reflected (0: unknown).
    seq: u64,
    /// Changes since the last save.
    unsaved: usize,
}

fn options(dims: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dims,
        metric: MetricKind::Cos,
        // The default is BF16; memory vectors are kept exact.
        quantization: ScalarKind::F32,
        connectivity: 0,
        expansion_add: 0,
        // Wider than the default (64): recall@10 on real sentence embeddings.
        expansion_search: 128,
        multi: false,
    }
}

/// The sidecar's path: `<index file>.meta.json`.
pub fn meta_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".meta.json");
    PathBuf::from(p)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl VectorIndex {
    /// An empty index for vectors of `dims` made by `embedder`, saved at `path`.
    pub fn empty(path: &Path, embedder: &str, dims: usize) -> anyhow::Result<VectorIndex> {
        let index = Index::new(&options(dims)).map_err(|e| anyhow!("creating the index: {e}"))?;
        index
            .reserve(1024)
            .map_err(|e| anyhow!("reserving index capacity: {e}"))?;
        Ok(VectorIndex {
            index,
            path: path.to_path_buf(),
            embedder: embedder.to_string(),
            dims,
            keys: BTreeSet::new(),
            seq: 0,
            unsaved: 0,
        })
    }

    /// Loads the index at `path`. `Err(reason)` says why it cannot be used as is (missing,
    /// corrupt, another embedder or dimension): the caller starts from [`VectorIndex::empty`]
    /// and rebuilds from the records.
    pub fn open(path: &Path, embedder: &str, dims: usize) -> Result<VectorIndex, String> {
        let meta_file = meta_path(path);
        if !path.exists() {
            return Err(format!("index file {} is missing", path.display()));
        }
        let meta: Meta = std::fs::read(&meta_file)
            .map_err(|e| format!("index sidecar {} is unreadable: {e}", meta_file.display()))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| format!("index sidecar {} is corrupt: {e}", meta_file.display()))
            })?;
        if meta.embedder != embedder || meta.dims != dims {
            return Err(format!(
                "index was made by {} ({} dims), not {embedder} ({dims} dims)",
                meta.embedder, meta.dims
            ));
        }
        let sum = sha256_file(path)
            .map_err(|e| format!("index file {} is unreadable: {e}", path.display()))?;
        if sum != meta.sha256 {
            return Err(format!(
                "index file {} is corrupt (its checksum does not match the sidecar's)",
                path.display()
            ));
        }
        let index = Index::new(&options(dims)).map_err(|e| format!("creating the index: {e}"))?;
        let p = path.to_str().ok_or("index path is not UTF-8")?;
        index
            .load(p)
            .map_err(|e| format!("index file {} is corrupt: {e}", path.display()))?;
        if index.dimensions() != dims || index.size() != meta.keys.len() {
            return Err(format!(
                "index file {} does not match its sidecar ({} vectors of {} dims, sidecar lists {})",
                path.display(),
                index.size(),
                index.dimensions(),
                meta.keys.len()
            ));
        }
        Ok(VectorIndex {
            index,
            path: path.to_path_buf(),
            embedder: embedder.to_string(),
            dims,
            keys: meta.keys,
            seq: meta.seq,
            unsaved: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }

    /// The keys the index holds.
    pub fn keys(&self) -> &BTreeSet<u64> {
        &self.keys
    }

    /// The sequence number of the last memory commit the index reflects (0: unknown, so a
    /// catch-up must compare every key).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn set_seq(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Changes since the last save.
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// Makes room for `more` additions (one allocation instead of many).
    pub fn reserve_more(&mut self, more: usize) -> anyhow::Result<()> {
        let need = self.index.size() + more;
        if need >= self.index.capacity() {
            self.index
                .reserve(need.max(1024))
                .map_err(|e| anyhow!("growing the index: {e}"))?;
        }
        Ok(())
    }

    /// Adds (or replaces) the vector of `key`.
    pub fn add(&mut self, key: u64, vector: &[f32]) -> anyhow::Result<()> {
        anyhow::ensure!(
            vector.len() == self.dims,
            "vector of {} dims, index has {}",
            vector.len(),
            self.dims
        );
        if self.keys.contains(&key) {
            self.index
                .remove(key)
                .map_err(|e| anyhow!("replacing key {key}: {e}"))?;
        }
        if self.index.size() + 1 >= self.index.capacity() {
            let grow = (self.index.capacity() * 2).max(1024);
            self.index
                .reserve(grow)
                .map_err(|e| anyhow!("growing the index: {e}"))?;
        }
        self.index
            .add(key, vector)
            .map_err(|e| anyhow!("adding key {key}: {e}"))?;
        self.keys.insert(key);
        self.unsaved += 1;
        Ok(())
    }

    pub fn remove(&mut self, key: u64) -> anyhow::Result<()> {
        if self.keys.remove(&key) {
            self.index
                .remove(key)
                .map_err(|e| anyhow!("removing key {key}: {e}"))?;
            self.unsaved += 1;
        }
        Ok(())
    }

    /// The `k` nearest keys to `query` (approximate).
    pub fn search(&self, query: &[f32], k: usize) -> anyhow::Result<Vec<Hit>> {
        if self.keys.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let m = self
            .index
            .search(query, k)
            .map_err(|e| anyhow!("searching: {e}"))?;
        Ok(hits(m))
    }

    /// The `k` nearest keys to `query` by brute force (for recall measurements).
    pub fn exact_search(&self, query: &[f32], k: usize) -> anyhow::Result<Vec<Hit>> {
        if self.keys.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let m = self
            .index
            .exact_search(query, k)
            .map_err(|e| anyhow!("searching: {e}"))?;
        Ok(hits(m))
    }

    /// Saves the index and its sidecar atomically.
    pub fn save(&mut self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("usearch.tmp");
        let tmp_str = tmp.to_str().context("index path is not UTF-8")?;
        self.index
            .save(tmp_str)
            .map_err(|e| anyhow!("saving the index: {e}"))?;
        File::open(&tmp)?.sync_all()?;
        let meta = Meta {
            embedder: self.embedder.clone(),
            dims: self.dims,
            sha256: sha256_file(&tmp)?,
            seq: self.seq,
            keys: self.keys.clone(),
        };
        let meta_file = meta_path(&self.path);
        let meta_tmp = meta_file.with_extension("tmp");
        let mut f = File::create(&meta_tmp)?;
        f.write_all(&serde_json::to_vec(&meta)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::rename(&meta_tmp, &meta_file)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.unsaved = 0;
        Ok(())
    }
}

fn hits(m: usearch::ffi::Matches) -> Vec<Hit> {
    m.keys
        .into_iter()
        .zip(m.distances)
        .map(|(key, distance)| Hit { key, distance })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        // A deterministic, well-spread vector.
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((x >> 33) as f32 / u32::MAX as f32) - 0.25
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    #[test]
    fn finds_what_it_holds_and_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.usearch");
        assert!(
            VectorIndex::open(&path, "e", 8)
                .err()
                .unwrap()
                .contains("missing")
        );
        let mut idx = VectorIndex::empty(&path, "e", 8).unwrap();
        for k in 0..50 {
            idx.add(k, &unit(k, 8)).unwrap();
        }
        idx.add(7, &unit(700, 8)).unwrap();
        idx.remove(9).unwrap();
        assert_eq!(idx.len(), 49);
        assert_eq!(idx.search(&unit(3, 8), 1).unwrap()[0].key, 3);
        assert_eq!(idx.search(&unit(700, 8), 1).unwrap()[0].key, 7, "replaced");
        idx.save().unwrap();

        let back = VectorIndex::open(&path, "e", 8).unwrap();
        assert_eq!(back.len(), 49);
        assert!(!back.contains(9));
        assert_eq!(back.search(&unit(21, 8), 1).unwrap()[0].key, 21);
        assert_eq!(
            back.search(&unit(21, 8), 3).unwrap(),
            back.exact_search(&unit(21, 8), 3).unwrap()
        );
    }

    #[test]
    fn a_damaged_or_foreign_index_is_reported_for_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.usearch");
        let mut idx = VectorIndex::empty(&path, "e", 8).unwrap();
        for k in 0..20 {
            idx.add(k, &unit(k, 8)).unwrap();
        }
        idx.save().unwrap();
        let reason = |e: &str, d| VectorIndex::open(&path, e, d).err().unwrap();
        assert!(reason("other", 8).contains("made by"));
        assert!(reason("e", 16).contains("made by"));
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(reason("e", 8).contains("checksum"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(reason("e", 8).contains("checksum"));
        std::fs::write(&path, &good).unwrap();
        assert!(VectorIndex::open(&path, "e", 8).is_ok());
        let meta = meta_path(&path);
        let bytes = std::fs::read(&meta).unwrap();
        std::fs::write(&meta, &bytes[..bytes.len() / 2]).unwrap();
        assert!(reason("e", 8).contains("corrupt"));
    }
}
