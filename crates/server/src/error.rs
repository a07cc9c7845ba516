//! `ApiError`: every error the REST API answers with, and its class. User errors become
//! 4xx with ksqlDB's error body; internal ones become 500 and are logged once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_sql_planner::{PlanError, PlanErrorKind};

/// ksqlDB error code: bad request (unparseable body).
pub const BAD_REQUEST: u32 = 40000;
/// ksqlDB error code: a statement could not be run.
pub const BAD_STATEMENT: u32 = 40001;
/// ksqlDB error code: a SELECT was sent to `/ksql`.
pub const QUERY_ENDPOINT: u32 = 40002;
/// ksqlDB error code: no such resource.
pub const NOT_FOUND: u32 = 40400;
/// ksqlDB error code: server error.
pub const SERVER_ERROR: u32 = 50000;
/// ksqlDB error code: not ready yet (answered with `Retry-After`).
pub const NOT_READY: u32 = 50302;
/// Seconds a client is asked to wait before trying again when the server is not ready.
const RETRY_AFTER_SECONDS: &str = "10";

/// An error answered by the REST API.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// ksqlDB error code (HTTP status × 100 + n).
    pub error_code: u32,
    /// What went wrong, for the user.
    pub message: String,
    /// The statement that failed, when a statement did.
    pub statement_text: Option<String>,
    /// Results of the statements of the same request that ran before the failing one.
    pub entities: Vec<Value>,
}

impl ApiError {
    /// A 400 for a request that could not be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_code: BAD_REQUEST,
            message: message.into(),
            statement_text: None,
            entities: vec![],
        }
    }

    /// A 400 for a statement that cannot be run.
    pub fn statement(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_code: BAD_STATEMENT,
            message: message.into(),
            statement_text: None,
            entities: vec![],
        }
    }

    /// A 503: what was asked for is not ready yet (a table still being read back after a
    /// restart); the client may try again.
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_code: NOT_READY,
            message: message.into(),
            statement_text: None,
            entities: vec![],
        }
    }

    /// A 500: a bug or a failure the user cannot fix.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error_code: SERVER_ERROR,
            message: message.into(),
            statement_text: None,
            entities: vec![],
        }
    }

    /// Attach the failing statement's text and earlier results.
    pub fn in_statement(mut self, text: &str, entities: Vec<Value>) -> Self {
        self.statement_text = Some(text.to_string());
        self.entities = entities;
        self
    }
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        match e.kind {
            PlanErrorKind::Internal => {
                ApiError::internal(format!("{e}; this is a bug, please report it"))
            }
            _ => ApiError::statement(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.error_code != NOT_READY {
            tracing::error!(error = %self.message, "request failed");
        }
        let mut body = json!({
            "@type": if self.statement_text.is_some() { "statement_error" } else { "generic_error" },
            "error_code": self.error_code,
            "message": self.message,
        });
        if let Some(text) = self.statement_text {
            body["statementText"] = Value::String(text);
            body["entities"] = Value::Array(self.entities);
        }
        if self.error_code == NOT_READY {
            let retry = [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECONDS)];
            return (self.status, retry, Json(body)).into_response();
        }
        (self.status, Json(body)).into_response()
    }
}
