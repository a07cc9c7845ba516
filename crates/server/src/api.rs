//! The REST API, shaped as ksqlDB's: `POST /ksql` (statements), `POST /query-stream` and
//! `POST /query` (queries), `GET /info`, `GET /healthcheck`. Every error is a JSON body
//! with `@type`, `error_code` and `message`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::engine::{sql_type, Engine, RequestProperties};
use crate::error::{ApiError, NOT_FOUND};
use crate::pull_query::{PullQueries, PullResult};

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
    /// Runs pull queries, outside the engine's lock.
    pub pull_queries: Arc<PullQueries>,
}

/// The router, testable without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ksql", post(ksql))
        .route("/query-stream", post(query_stream))
        .route("/query", post(query))
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

/// The delimited format of `/query-stream`: a metadata line, then one JSON array per row.
const DELIMITED: &str = "application/vnd.ksqlapi.delimited.v1";

/// The JSON object body of a request, or a 400 naming what is wrong.
fn request_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// The one SELECT in `sql`, as a query to run.
fn one_select(sql: &str) -> Result<sluice_sql_planner::ContinuousQuery, ApiError> {
    let mut statements = sluice_sql_planner::parse_statements(sql)
        .map_err(|e| ApiError::from(e).in_statement(sql.trim(), vec![]))?;
    if statements.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "send one SELECT statement per query request, not {}",
            statements.len()
        )));
    }
    let parsed = statements.remove(0);
    match parsed.statement {
        sluice_sql_planner::Statement::Select(q) => {
            if q.emit.is_some() {
                return Err(ApiError::statement(
                    "push queries (SELECT … EMIT CHANGES) are not supported yet; a SELECT without \
                     EMIT is a pull query over a table",
                )
                .in_statement(&parsed.text, vec![]));
            }
            if q.window.is_some() {
                return Err(ApiError::statement(
                    "a pull query cannot have a WINDOW clause: it reads a table's current rows; \
                     filter on WINDOWSTART / WINDOWEND instead",
                )
                .in_statement(&parsed.text, vec![]));
            }
            Ok(q)
        }
        _ => Err(ApiError::bad_request(
            "the query endpoints run SELECT statements; send other statements to /ksql",
        )
        .in_statement(&parsed.text, vec![])),
    }
}

/// Run the pull query `sql` without holding the engine's lock while it runs.
async fn pull(state: &AppState, sql: &str) -> Result<PullResult, ApiError> {
    let query = one_select(sql)?;
    let (catalog, sources) = {
        let engine = state.engine.lock().await;
        (engine.catalog().clone(), engine.pull_sources())
    };
    state
        .pull_queries
        .run(&query.query, &catalog, &sources)
        .await
        .map_err(|e| {
            if e.statement_text.is_none() && e.status.is_client_error() {
                e.in_statement(sql.trim(), vec![])
            } else {
                e
            }
        })
}

/// A new pull query id.
fn pull_query_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "PULL_QUERY_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Each result row as a JSON array of its column values, in column order.
fn rows_as_arrays(result: &PullResult) -> Result<Vec<Vec<Value>>, ApiError> {
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
    let mut rows = vec![];
    for batch in &result.batches {
        let mut columns: Vec<Vec<Value>> = Vec::with_capacity(batch.num_columns());
        for (i, field) in result.schema.fields().iter().enumerate() {
            // One column at a time under a fixed name, so duplicate names stay apart.
            let single = datafusion::arrow::array::RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new(
                    "v",
                    field.data_type().clone(),
                    true,
                )])),
                vec![batch.column(i).clone()],
            )
            .map_err(|e| ApiError::internal(format!("encoding pull query results: {e}")))?;
            let mut buf = vec![];
            let mut writer = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut buf);
            writer
                .write(&single)
                .and_then(|_| writer.finish())
                .map_err(|e| ApiError::internal(format!("encoding pull query results: {e}")))?;
            let values = buf
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    serde_json::from_slice::<Value>(l)
                        .map(|mut v| v["v"].take())
                        .map_err(|e| {
                            ApiError::internal(format!("encoding pull query results: {e}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            columns.push(values);
        }
        for r in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c[r].clone()).collect());
        }
    }
    Ok(rows)
}

/// `POST /query-stream`: `{"sql", "properties"}`. Answers a pull query with a metadata
/// line and one JSON array per row (`application/vnd.ksqlapi.delimited.v1`, the default)
/// or the same items as one JSON array (`Accept: application/json`).
async fn query_stream(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = request_object(&body)?;
    let sql = request.get("sql").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("the request body needs a \"sql\" string with the query to run")
    })?;
    let result = pull(&state, sql).await?;
    let metadata = json!({
        "queryId": pull_query_id(),
        "columnNames": result.schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
        "columnTypes": result.schema.fields().iter().map(|f| sql_type(f.data_type())).collect::<Vec<_>>(),
    });
    let rows = rows_as_arrays(&result)?;
    let json = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains(DELIMITED));
    if json {
        let mut items = vec![metadata];
        items.extend(rows.into_iter().map(Value::from));
        return Ok(Json(items).into_response());
    }
    let mut text = metadata.to_string();
    text.push('\n');
    for row in rows {
        text.push_str(&Value::from(row).to_string());
        text.push('\n');
    }
    Ok(([(axum::http::header::CONTENT_TYPE, DELIMITED)], text).into_response())
}

/// `POST /query`: `{"ksql", "streamsProperties"}`. Answers a pull query as ksqlDB's older
/// JSON array: a header with the schema (key columns marked `KEY`), then one
/// `{"row": {"columns": […]}}` per row.
async fn query(State(state): State<AppState>, body: Bytes) -> Result<Json<Vec<Value>>, ApiError> {
    let request = request_object(&body)?;
    let sql = request.get("ksql").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("the request body needs a \"ksql\" string with the query to run")
    })?;
    let result = pull(&state, sql).await?;
    let schema = result
        .schema
        .fields()
        .iter()
        .map(|f| {
            let key = if result.key_columns.contains(f.name()) {
                " KEY"
            } else {
                ""
            };
            format!(
                "`{}` {}{key}",
                f.name().to_uppercase(),
                sql_type(f.data_type())
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut items = vec![json!({"header": {"queryId": pull_query_id(), "schema": schema}})];
    for row in rows_as_arrays(&result)? {
        items.push(json!({"row": {"columns": row}}));
    }
    Ok(Json(items))
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
            "no such endpoint; Sluice serves POST /ksql, POST /query-stream, POST /query, GET /info and GET /healthcheck",
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
