//! The kernel's attempt log: one row per kernel run, learned or failed (the kernel's negative
//! memory: recent failures gate new runs and are shown to BRICK).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{Result, StoreError};
use super::{Store, db_err};

/// One kernel run, as the `attempt` table holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub run: String,
    pub receiver: String,
    pub selector: String,
    pub ok: bool,
    /// The stage that failed (a kernel stage's name, or `kernel` for a failure outside the
    /// stages); empty when the run learned a method.
    pub stage: String,
    pub reason: String,
    /// Unix seconds.
    pub at: i64,
    pub ms: u64,
}

/// A failed run, as the gate and BRICK's prompt read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub stage: String,
    pub reason: String,
    /// Unix seconds.
    pub at: i64,
}

/// Rows of the `attempt` table as `T`.
fn attempt_rows<T: serde::de::DeserializeOwned>(rows: Vec<Json>) -> Result<Vec<T>> {
    rows.into_iter()
        .map(|r| serde_json::from_value(r).map_err(StoreError::malformed("an attempt row")))
        .collect()
}

impl Store {
    /// Records one kernel run (learned or failed).
    pub async fn record_attempt(&self, attempt: Attempt) -> Result<()> {
        let row = serde_json::to_value(attempt).map_err(StoreError::malformed("an attempt"))?;
        self.run(move |db| async move {
            db.query("CREATE attempt CONTENT $a RETURN NONE")
                .bind(("a", row))
                .await
                .and_then(|r| r.check())
                .map_err(db_err)
                .map(|_| ())
        })
        .await?
    }

    /// The `limit` most recent kernel runs, newest first.
    pub async fn recent_attempts(&self, limit: u64) -> Result<Vec<Attempt>> {
        self.run(move |db| async move {
            let mut res = db
                .query(
                    "SELECT run, receiver, selector, ok, stage, reason, at, ms FROM attempt
                     ORDER BY at DESC LIMIT $n",
                )
                .bind(("n", limit))
                .await?;
            attempt_rows(res.take::<Vec<Json>>(0)?)
        })
        .await?
    }

    /// Failed kernel runs of `selector` on `receiver` since `since` (seconds since the epoch),
    /// oldest first.
    pub async fn recent_failures(
        &self,
        receiver: &str,
        selector: &str,
        since: i64,
    ) -> Result<Vec<Failure>> {
        let (receiver, selector) = (receiver.to_string(), selector.to_string());
        self.run(move |db| async move {
            let mut res = db
                .query(
                    "SELECT stage, reason, at FROM attempt
                     WHERE receiver = $r AND selector = $s AND ok = false AND at >= $since
                     ORDER BY at",
                )
                .bind(("r", receiver))
                .bind(("s", selector))
                .bind(("since", since))
                .await?;
            attempt_rows(res.take::<Vec<Json>>(0)?)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn attempt(run: &str, selector: &str, ok: bool, at: i64) -> Attempt {
        Attempt {
            run: run.into(),
            receiver: "o1".into(),
            selector: selector.into(),
            ok,
            stage: if ok { "" } else { "trial" }.into(),
            reason: if ok { "" } else { "NaN" }.into(),
            at,
            ms: 5,
        }
    }

    #[test]
    fn recent_failures_are_the_failed_runs_of_that_selector_in_the_window_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::embedded(dir.path().join("data"))).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        for a in [
            attempt("r1", "area", false, 100),
            attempt("r2", "area", false, 300),
            attempt("r3", "area", true, 400),
            attempt("r4", "perimeter", false, 350),
            attempt("r0", "area", false, 10),
        ] {
            rt.block_on(store.record_attempt(a)).unwrap();
        }
        let found = rt
            .block_on(store.recent_failures("o1", "area", 50))
            .unwrap();
        let at: Vec<i64> = found.iter().map(|f| f.at).collect();
        assert_eq!(at, vec![100, 300]);
        let recent = rt.block_on(store.recent_attempts(2)).unwrap();
        let runs: Vec<&str> = recent.iter().map(|a| a.run.as_str()).collect();
        assert_eq!(runs, ["r3", "r4"]);
        assert_eq!(found[0].stage, "trial");
        assert_eq!(found[0].reason, "NaN");
        assert!(
            rt.block_on(store.recent_failures("o2", "area", 0))
                .unwrap()
                .is_empty()
        );
    }
}
