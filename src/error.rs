//! The error every core layer answers with. The HTTP and WebSocket edges map each variant to a
//! stable `code` string (see [`TelosError::code`]) and, for REST, a status code.

use std::fmt;

/// Why a message, a request or an operation failed. Each variant names what a user can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelosError {
    /// No object with this oid, or no slot with this name.
    #[error("{0}")]
    NotFound(String),
    /// No object with this oid (typed, so that callers can act on it without reading text).
    #[error("no object {0}")]
    NoObject(String),
    /// The request itself is malformed: bad JSON, a bad slot name, a bad selector.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing in the receiver's chain understands the selector, and no kernel could help.
    #[error("{receiver} does not understand {selector}")]
    DoesNotUnderstand { receiver: String, selector: String },
    /// Nothing understood the selector and the generative kernel could not learn a method:
    /// `stage` names where it failed (gate, recall, write, review, trial, repair, install, learn).
    #[error(
        "{receiver} does not understand {selector}: learning it failed at the {stage} stage: {reason}"
    )]
    NotLearned {
        receiver: String,
        selector: String,
        stage: crate::kernel::Stage,
        reason: String,
    },
    /// A method threw, failed to compile, or returned something that is not JSON.
    #[error("{0}")]
    MethodError(String),
    /// A sandbox limit (wall time, heap, stack, output, call depth) was hit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The operation conflicts with the world's state (e.g. deleting a parent of others).
    #[error("{0}")]
    Conflict(String),
    /// The operation is never allowed (e.g. deleting a primordial object) or lacks a token.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests on one connection.
    #[error("{0}")]
    RateLimited(String),
    /// A part of the server is not available (shutting down, persona missing, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The database or another internal part failed; the message is for operators.
    #[error("{0}")]
    Internal(String),
}

impl TelosError {
    /// The stable machine-readable code sent to clients as `{"code": ...}`.
    pub fn code(&self) -> &'static str {
        match self {
            TelosError::NotFound(_) | TelosError::NoObject(_) => "not_found",
            TelosError::BadRequest(_) => "bad_request",
            TelosError::DoesNotUnderstand { .. } | TelosError::NotLearned { .. } => {
                "does_not_understand"
            }
            TelosError::MethodError(_) => "method_error",
            TelosError::LimitExceeded(_) => "limit_exceeded",
            TelosError::Conflict(_) => "conflict",
            TelosError::Forbidden(_) => "forbidden",
            TelosError::RateLimited(_) => "rate_limited",
            TelosError::Unavailable(_) => "unavailable",
            TelosError::Internal(_) => "internal",
        }
    }

    /// A part of the server that another depends on failed: a client reads `what`, the cause
    /// (paths, URLs, a library's own text) goes to the log under an incident id the client gets.
    pub fn unavailable(what: impl fmt::Display, cause: impl fmt::Display) -> Self {
        let incident = incident();
        tracing::warn!(incident, cause = %format!("{cause:#}"), "{what}");
        TelosError::Unavailable(format!(
            "{what} (incident {incident}; the server log has the details)"
        ))
    }

    /// What a client is told. An internal failure's text (database messages, paths) stays in
    /// the server's log under an incident id; the client gets the id to quote.
    pub fn public_message(&self) -> String {
        match self {
            TelosError::Internal(detail) => {
                let incident = incident();
                tracing::error!(incident, error = %detail, "internal error answered to a client");
                format!(
                    "an internal error occurred (incident {incident}); the server log has the details"
                )
            }
            other => other.to_string(),
        }
    }

    /// The kernel stage that failed, for a [`TelosError::NotLearned`].
    pub fn stage(&self) -> Option<crate::kernel::Stage> {
        match self {
            TelosError::NotLearned { stage, .. } => Some(*stage),
            _ => None,
        }
    }

    /// Wraps any internal failure, keeping its whole cause chain in the message.
    pub fn internal(err: impl fmt::Display) -> Self {
        TelosError::Internal(format!("{err:#}"))
    }
}

/// An error and its causes, outermost first, as one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A short id a client can quote and the log carries beside the detail.
fn incident() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl From<anyhow::Error> for TelosError {
    fn from(err: anyhow::Error) -> Self {
        TelosError::Internal(format!("{err:#}"))
    }
}

pub type Result<T, E = TelosError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_is_told_by_incident_not_by_its_detail() {
        let told =
            TelosError::Internal("database: IO error at /var/lib/telos/world/0001.sst".into())
                .public_message();
        assert!(!told.contains("/var/lib"), "{told}");
        assert!(told.contains("incident"), "{told}");
        let plain = TelosError::NotFound("no slot x".into());
        assert_eq!(plain.public_message(), "no slot x");
    }
}
