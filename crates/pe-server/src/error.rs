//! Errors of the service and their HTTP form: `{"error": {"message", "type", "code"}}`, the
//! shape OpenAI clients understand.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// Malformed or unacceptable input (400).
    #[error("{0}")]
    Invalid(String),
    /// A file the index does not hold, or no longer can read (404).
    #[error("{0}")]
    NotFound(String),
    /// An input over a size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Missing or wrong API key (401).
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The queue is full (503 with Retry-After).
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    /// The request ran past its time limit (504).
    #[error("the request timed out")]
    Timeout,
    /// The model is not available (503).
    #[error("{0}")]
    Unavailable(String),
    /// A failure inside the model (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    fn status(&self) -> StatusCode {
        match self {
            ServeError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::Overloaded | ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ServeError::Invalid(_) | ServeError::TooLarge(_) => "invalid_request_error",
            ServeError::NotFound(_) => "not_found",
            ServeError::Unauthorized => "authentication_error",
            ServeError::Overloaded => "overloaded",
            ServeError::Timeout => "timeout",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::Internal(_) => "server_error",
        }
    }
}

impl From<perception_encoder::Error> for ServeError {
    fn from(e: perception_encoder::Error) -> Self {
        use perception_encoder::Error as E;
        match e {
            E::ImageTooLarge { .. } => ServeError::TooLarge(e.to_string()),
            E::ImageDecode(_) | E::InvalidInput(_) | E::MissingPart { .. } | E::NotLoaded(_) => {
                ServeError::Invalid(e.to_string())
            }
            other => ServeError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body =
            serde_json::json!({"error": {"message": self.to_string(), "type": self.kind(), "code": status.as_u16()}});
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, ServeError::Overloaded) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
