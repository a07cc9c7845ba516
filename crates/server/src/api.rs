//! The REST API, shaped as ksqlDB's: `POST /ksql`, `GET /info`, `GET /healthcheck`.
//! Every error is a JSON body with `@type`, `error_code` and `message`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::engine::{Engine, RequestProperties};
use crate::error::{ApiError, NOT_FOUND};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The statement engine; statements run one at a time, as ksqlDB's command queue.
    pub engine: Arc<Mutex<Engine>>,
    /// The service id, for `/info`.
    pub service_id: String,
    /// Whether the broker is the embedded one.
    pub embedded: bool,
    /// Topic administration, for health checks that must not wait for a statement.
    pub topics: crate::topics::Topics,
}

/// The router, testable without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ksql", post(ksql))
        .route("/info", get(info))
        .route("/", get(info))
        .route("/healthcheck", get(healthcheck))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn ksql(State(state): State<AppState>, body: Bytes) -> Result<Json<Vec<Value>>, ApiError> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let sql = request.get("ksql").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("the request body needs a \"ksql\" string with the statements to run")
    })?;
    let empty = serde_json::Map::new();
    let props = match request.get("streamsProperties") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::bad_request(
                "\"streamsProperties\" must be a JSON object",
            ))
        }
    };
    let props = RequestProperties::from_json(props)?;
    let mut engine = state.engine.lock().await;
    let entities = engine.execute(sql, &props).await?;
    Ok(Json(entities))
}

async fn info(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "KsqlServerInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "kafkaClusterId": if state.embedded { "embedded" } else { "" },
            "ksqlServiceId": state.service_id,
            "serverStatus": "RUNNING",
        }
    }))
}

async fn healthcheck(State(state): State<AppState>) -> Response {
    let kafka = state.topics.healthy().await;
    let status = if kafka {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "isHealthy": kafka,
            "details": {
                "metastore": { "isHealthy": true },
                "kafka": { "isHealthy": kafka },
            },
            "serverState": "READY",
        })),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        error_code: NOT_FOUND,
        ..ApiError::bad_request(
            "no such endpoint; Sluice serves POST /ksql, GET /info and GET /healthcheck",
        )
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        error_code: 40500,
        ..ApiError::bad_request("method not allowed on this endpoint")
    }
}
