//! `PersonaActor`: hosts the models, off the async threads (a sync actor on its own thread).
//!
//! Today it owns the MiniLM embedder, loaded on first use and kept; the persona language models
//! join it with the generative kernel. Embedding requests that arrive while a batch is being
//! encoded queue in the mailbox and are encoded together by the next `Embed` the caller sends
//! (callers batch their own texts).

use std::path::PathBuf;
use std::time::Instant;

use actix::prelude::*;

use crate::embed::{DIMS, EMBEDDER_ID, Embedder};
use crate::error::TelosError;

/// Embeds texts; answers one normalised vector per text.
#[derive(Message)]
#[rtype(result = "Result<Embedded, TelosError>")]
pub struct Embed {
    pub texts: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Embedded {
    pub model: &'static str,
    pub dims: usize,
    pub vectors: Vec<Vec<f32>>,
}

/// What the persona host has loaded.
#[derive(Message)]
#[rtype(result = "PersonaStatus")]
pub struct Status;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PersonaStatus {
    pub embedder: &'static str,
    pub embedder_loaded: bool,
    pub embedded_texts: u64,
    pub torch_threads: i32,
}

pub struct PersonaActor {
    models_dir: PathBuf,
    threads: i32,
    embedder: Option<Embedder>,
    embedded: u64,
}

impl PersonaActor {
    pub fn new(models_dir: PathBuf, threads: i32) -> Self {
        PersonaActor {
            models_dir,
            threads,
            embedder: None,
            embedded: 0,
        }
    }

    fn embedder(&mut self) -> Result<&Embedder, TelosError> {
        if self.embedder.is_none() {
            let t = Instant::now();
            let e = Embedder::load(&self.models_dir, self.threads).map_err(|e| {
                TelosError::Unavailable(format!("the embedder could not be loaded: {e:#}"))
            })?;
            tracing::info!(
                ms = t.elapsed().as_millis() as u64,
                "MiniLM embedder loaded"
            );
            self.embedder = Some(e);
        }
        Ok(self.embedder.as_ref().expect("just loaded"))
    }
}

impl Actor for PersonaActor {
    type Context = SyncContext<Self>;
}

impl Handler<Embed> for PersonaActor {
    type Result = Result<Embedded, TelosError>;

    fn handle(&mut self, msg: Embed, _: &mut SyncContext<Self>) -> Self::Result {
        let n = msg.texts.len() as u64;
        let vectors = self
            .embedder()?
            .embed(&msg.texts)
            .map_err(|e| TelosError::Internal(format!("embedding failed: {e:#}")))?;
        self.embedded += n;
        Ok(Embedded {
            model: EMBEDDER_ID,
            dims: DIMS,
            vectors,
        })
    }
}

impl Handler<Status> for PersonaActor {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(PersonaStatus {
            embedder: EMBEDDER_ID,
            embedder_loaded: self.embedder.is_some(),
            embedded_texts: self.embedded,
            torch_threads: self.threads,
        })
    }
}
