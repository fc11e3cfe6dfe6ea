//! `ApiError`: the one error type at the HTTP edge, `{code, message}` with a fitting status.

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::error::TelosError;

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `not_found`, `bad_request`, `does_not_understand`, `method_error`, `limit_exceeded`,
    /// `conflict`, `forbidden`, `rate_limited`, `unavailable` or `internal`.
    pub code: &'static str,
    pub message: String,
    /// For a message the kernel could not learn: the stage it failed in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<crate::kernel::Stage>,
}

/// An error answered to a REST client.
#[derive(Debug)]
pub struct ApiError {
    pub error: TelosError,
    /// Set when the status differs from the variant's usual one (e.g. 413).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        TelosError::BadRequest(message.into()).into()
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        TelosError::NotFound(message.into()).into()
    }

    pub fn from_json_error(err: JsonPayloadError) -> Self {
        match err {
            JsonPayloadError::Overflow { limit }
            | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError {
                error: TelosError::BadRequest(format!(
                    "request body is larger than the limit of {limit} bytes"
                )),
                status: Some(StatusCode::PAYLOAD_TOO_LARGE),
            },
            JsonPayloadError::ContentType => {
                Self::bad_request("send a JSON body with Content-Type: application/json")
            }
            other => Self::bad_request(format!("malformed JSON body: {other}")),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        TelosError::from(error).into()
    }
}

impl From<TelosError> for ApiError {
    fn from(error: TelosError) -> Self {
        ApiError {
            error,
            status: None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// The status of each error kind. Exhaustive on purpose: a new kind must choose its status.
pub fn status_of(error: &TelosError) -> StatusCode {
    match error {
        TelosError::NotFound(_) | TelosError::NoObject(_) => StatusCode::NOT_FOUND,
        TelosError::BadRequest(_) => StatusCode::BAD_REQUEST,
        TelosError::DoesNotUnderstand { .. } | TelosError::NotLearned { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        TelosError::MethodError(_) => StatusCode::UNPROCESSABLE_ENTITY,
        TelosError::LimitExceeded(_) => StatusCode::UNPROCESSABLE_ENTITY,
        TelosError::Conflict(_) => StatusCode::CONFLICT,
        TelosError::Forbidden(_) => StatusCode::FORBIDDEN,
        TelosError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        TelosError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        TelosError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status.unwrap_or_else(|| status_of(&self.error))
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody {
            code: self.error.code(),
            message: self.error.public_message(),
            stage: self.error.stage(),
        })
    }
}
