//! Human approval of generated methods (`kernel_approval = "ask"`): a run that passed its
//! review and trial waits in the `approve` stage until a person approves or rejects it (REST,
//! the CLI or the page), or until the timeout rejects it. Pure core: no actix, no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::oneshot;

use crate::error::TelosError;

/// Whether generated methods wait for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// Installed as soon as review and trial pass.
    #[default]
    Never,
    /// Each waits for a person's approval.
    Ask,
}

/// The slot that asks for approval for an object and its descendants where the server does not:
/// anything but `"never"` asks (found along the receiver's chain like any slot). It cannot
/// waive a server's `ask`: any message may write it.
pub const APPROVAL_SLOT: &str = "kernel_approval";

/// What a person is asked to approve.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Request {
    pub run: String,
    pub receiver: String,
    pub selector: String,
    /// The message's arguments.
    #[schema(value_type = Vec<Object>)]
    pub args: Vec<Json>,
    /// The method, as it would be installed.
    pub code: String,
    /// ALFRED's review.
    pub review: String,
    /// What the method answered in its trial.
    #[schema(value_type = Object)]
    pub trial: Json,
    /// RFC 3339.
    pub asked_at: String,
    /// Seconds after `asked_at` when nobody's answer rejects it.
    pub timeout_secs: u64,
}

/// A person's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve { by: String },
    Reject { by: String, reason: String },
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved { by: String, at: String },
    Rejected { by: String, reason: String },
    TimedOut,
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Decision>,
}

/// The runs waiting for a person, shared by the kernel and the HTTP edge.
#[derive(Clone, Default)]
pub struct Approvals(Arc<Mutex<HashMap<String, Pending>>>);

impl Approvals {
    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a decision on `request` and waits for it, at most `timeout`.
    pub async fn ask(&self, request: Request, timeout: Duration) -> Outcome {
        let run = request.run.clone();
        let (tx, rx) = oneshot::channel();
        self.pending_map()
            .insert(run.clone(), Pending { request, reply: tx });
        // Gone whatever happens (decided, timed out, or the run dropped while it waits).
        struct Forget<'a>(&'a Approvals, String);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending_map().remove(&self.1);
            }
        }
        let _forget = Forget(self, run);
        let decided = tokio::time::timeout(timeout, rx).await;
        match decided {
            Ok(Ok(Decision::Approve { by })) => Outcome::Approved {
                by,
                at: chrono::Utc::now().to_rfc3339(),
            },
            Ok(Ok(Decision::Reject { by, reason })) => Outcome::Rejected { by, reason },
            Ok(Err(_)) | Err(_) => Outcome::TimedOut,
        }
    }

    /// How many runs wait for a person.
    pub fn count(&self) -> usize {
        self.pending_map().len()
    }

    /// Every run waiting for a person, oldest first.
    pub fn pending(&self) -> Vec<Request> {
        let mut all: Vec<Request> = self
            .pending_map()
            .values()
            .map(|p| p.request.clone())
            .collect();
        all.sort_by(|a, b| a.asked_at.cmp(&b.asked_at));
        all
    }

    /// Hands a person's decision to the waiting run `run`.
    pub fn decide(&self, run: &str, decision: Decision) -> Result<(), TelosError> {
        let pending = self.pending_map().remove(run).ok_or_else(|| {
            TelosError::NotFound(format!(
                "no kernel run {run} is waiting for approval (it may have been decided or timed out already)"
            ))
        })?;
        pending.reply.send(decision).map_err(|_| {
            TelosError::Conflict(format!("kernel run {run} stopped waiting for approval"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(run: &str) -> Request {
        Request {
            run: run.into(),
            receiver: "o1".into(),
            selector: "area".into(),
            args: vec![],
            code: "function area(self) { return 1; }".into(),
            review: "VALID".into(),
            trial: Json::from(1),
            asked_at: chrono::Utc::now().to_rfc3339(),
            timeout_secs: 60,
        }
    }

    async fn pending_soon(a: &Approvals, run: &str) {
        while !a.pending().iter().any(|r| r.run == run) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_decision_reaches_the_waiting_run_once() {
        let a = Approvals::default();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.ask(request("r1"), Duration::from_secs(60)).await }
        });
        pending_soon(&a, "r1").await;
        let by = "ada".to_string();
        a.decide("r1", Decision::Approve { by: by.clone() })
            .unwrap();
        match waiting.await.unwrap() {
            Outcome::Approved { by: who, .. } => assert_eq!(who, by),
            other => panic!("expected an approval, got {other:?}"),
        }
        assert!(a.pending().is_empty());
        let again = a.decide("r1", Decision::Approve { by }).unwrap_err();
        assert_eq!(again.code(), "not_found");
    }

    #[tokio::test]
    async fn a_rejection_carries_its_reason_and_silence_times_out() {
        let a = Approvals::default();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.ask(request("r2"), Duration::from_secs(60)).await }
        });
        pending_soon(&a, "r2").await;
        let reason = "use the width slot".to_string();
        a.decide(
            "r2",
            Decision::Reject {
                by: "ada".into(),
                reason: reason.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            waiting.await.unwrap(),
            Outcome::Rejected {
                by: "ada".into(),
                reason
            }
        );
        let silent = a.ask(request("r3"), Duration::from_millis(1)).await;
        assert_eq!(silent, Outcome::TimedOut);
        assert!(a.pending().is_empty());
    }
}
