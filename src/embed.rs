//! The sentence embedder: all-MiniLM-L6-v2 through rust-bert on libtorch (CPU), 384 dims,
//! L2-normalised. Pure core: owned by the `PersonaActor`, usable alone in tests and tools.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use rust_bert::pipelines::sentence_embeddings::{
    SentenceEmbeddingsBuilder, SentenceEmbeddingsModel,
};
use tch::Device;

/// Identifies the vectors an embedder makes; an index built by another embedder is rebuilt.
pub const EMBEDDER_ID: &str = "all-MiniLM-L6-v2@rust-bert-0.23";
pub const DIMS: usize = 384;
/// The model's directory name under the models dir.
pub const MODEL_DIR: &str = "all-MiniLM-L6-v2";

pub struct Embedder {
    model: SentenceEmbeddingsModel,
}

/// Where the model lives under `models_dir`.
pub fn model_dir(models_dir: &Path) -> PathBuf {
    models_dir.join(MODEL_DIR)
}

/// Converts the snapshot's `model.safetensors` to the `rust_model.ot` rust-bert loads (once;
/// written to a temporary file and renamed, so a crash never leaves half a file).
pub fn ensure_rust_model(dir: &Path) -> anyhow::Result<()> {
    let target = dir.join("rust_model.ot");
    if target.exists() {
        return Ok(());
    }
    let source = dir.join("model.safetensors");
    ensure!(
        source.exists(),
        "the MiniLM model is not in {} (no model.safetensors): run ./ops/setup-models.sh",
        dir.display()
    );
    tracing::info!(from = %source.display(), "converting safetensors to rust_model.ot");
    let tensors = tch::Tensor::read_safetensors(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let tmp = dir.join("rust_model.ot.tmp");
    tch::Tensor::save_multi(&tensors, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &target)?;
    Ok(())
}

impl Embedder {
    /// Loads the model from `models_dir` on the CPU, with `threads` torch threads.
    pub fn load(models_dir: &Path, threads: i32) -> anyhow::Result<Embedder> {
        let dir = model_dir(models_dir);
        ensure_rust_model(&dir)?;
        tch::set_num_threads(threads.max(1));
        let model = SentenceEmbeddingsBuilder::local(&dir)
            .with_device(Device::Cpu)
            .create_model()
            .with_context(|| format!("loading MiniLM from {}", dir.display()))?;
        Ok(Embedder { model })
    }

    /// One normalised 384-dimensional vector per text.
    pub fn embed<S: AsRef<str> + Send + Sync>(&self, texts: &[S]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = self.model.encode(texts).context("encoding")?;
        for v in &mut out {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(out)
    }
}
