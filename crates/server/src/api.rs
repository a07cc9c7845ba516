//! The REST API, shaped as ksqlDB's: `POST /ksql` (statements), `POST /query-stream` and
//! `POST /query` (queries), `GET /info`, `GET /healthcheck`. Every error is a JSON body
//! with `@type`, `error_code` and `message`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::engine::{sql_type, Engine, RequestProperties};
use crate::error::{ApiError, NOT_FOUND, SERVER_ERROR};
use crate::pull_query::{PullQueries, PullResult};
use crate::push_query::{PushQueries, PushStream};
use crate::request_body::RequestBody;

/// What the handlers share.
#[derive(Clone)]
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
    /// The running push queries.
    pub push_queries: Arc<PushQueries>,
    /// Writes `/inserts-stream` rows.
    pub producer: rdkafka::producer::FutureProducer,
    /// Turns true when the server starts shutting down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("service_id", &self.service_id)
            .field("embedded", &self.embedded)
            .finish()
    }
}

/// The router, testable without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ksql", post(ksql))
        .route("/query-stream", post(query_stream))
        .route("/query", post(query))
        .route("/close-query", post(close_query))
        .route("/inserts-stream", post(crate::inserts::inserts_stream))
        .route("/info", get(info))
        .route("/", get(info))
        .route("/healthcheck", get(healthcheck))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn ksql(
    State(state): State<AppState>,
    RequestBody(body): RequestBody,
) -> Result<Json<Vec<Value>>, ApiError> {
    let request = request_object(&body)?;
    let sql = required_str(&request, "ksql", "the statements to run")?;
    let props = query_properties(&request, "streamsProperties")?;
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

/// A query request: a pull query, or a push query with its LIMIT taken out.
enum QueryRequest {
    Pull(sluice_sql_planner::ContinuousQuery),
    Push {
        query: sluice_sql_planner::ContinuousQuery,
        limit: Option<u64>,
    },
    Print {
        topic: String,
        from_beginning: bool,
        limit: Option<u64>,
    },
}

/// The one SELECT in `sql`, as a query to run.
fn one_query(sql: &str) -> Result<QueryRequest, ApiError> {
    let mut statements = sluice_sql_planner::parse_statements(sql)
        .map_err(|e| ApiError::from(e).in_statement(sql.trim(), vec![]))?;
    if statements.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "send one SELECT statement per query request, not {}",
            statements.len()
        )));
    }
    let parsed = statements.remove(0);
    let in_statement = |e: ApiError| e.in_statement(&parsed.text, vec![]);
    match parsed.statement {
        sluice_sql_planner::Statement::Select(mut q) => {
            if q.emit.is_some() {
                let limit = take_limit(&mut q).map_err(in_statement)?;
                return Ok(QueryRequest::Push { query: q, limit });
            }
            if q.window.is_some() {
                return Err(in_statement(ApiError::statement(
                    "a pull query cannot have a WINDOW clause: it reads a table's current rows; \
                     filter on WINDOWSTART / WINDOWEND instead, or add EMIT CHANGES for a push query",
                )));
            }
            Ok(QueryRequest::Pull(q))
        }
        sluice_sql_planner::Statement::Print {
            topic,
            from_beginning,
            limit,
        } => Ok(QueryRequest::Print {
            topic,
            from_beginning,
            limit,
        }),
        _ => Err(in_statement(ApiError::bad_request(
            "the query endpoints run SELECT and PRINT statements; send other statements to /ksql",
        ))),
    }
}

/// Take a push query's `LIMIT n` out of it: the stream ends after n rows.
fn take_limit(q: &mut sluice_sql_planner::ContinuousQuery) -> Result<Option<u64>, ApiError> {
    use datafusion::sql::sqlparser::ast::{Expr, LimitClause, Value as SqlValue};
    let bad = || ApiError::statement("a push query's LIMIT must be a whole number of rows");
    match q.query.limit_clause.take() {
        None => Ok(None),
        Some(LimitClause::LimitOffset {
            limit: Some(Expr::Value(v)),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => match &v.value {
            SqlValue::Number(n, _) => n.parse().map(Some).map_err(|_| bad()),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

/// Start the push query `query` for one client.
async fn push(
    state: &AppState,
    sql: &str,
    query: &sluice_sql_planner::ContinuousQuery,
    limit: Option<u64>,
    props: &RequestProperties,
) -> Result<PushStream, ApiError> {
    let (plan, config) = {
        let engine = state.engine.lock().await;
        let plan = engine
            .plan_push(query)
            .map_err(|e| e.in_statement(sql.trim(), vec![]))?;
        (plan, engine.push_config(props))
    };
    state
        .push_queries
        .start(config, &state.service_id, plan, limit)
}

/// The string field `field` of a request, or a 400 saying it holds `what`.
fn required_str<'a>(
    request: &'a serde_json::Map<String, Value>,
    field: &str,
    what: &str,
) -> Result<&'a str, ApiError> {
    request.get(field).and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!(
            "the request body needs a \"{field}\" string with {what}"
        ))
    })
}

/// The properties object of a request (`properties` or `streamsProperties`).
fn query_properties(
    request: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<RequestProperties, ApiError> {
    match request.get(field) {
        None | Some(Value::Null) => RequestProperties::from_json(&serde_json::Map::new()),
        Some(Value::Object(m)) => RequestProperties::from_json(m),
        Some(_) => Err(ApiError::bad_request(format!(
            "\"{field}\" must be a JSON object"
        ))),
    }
}

/// Run the pull query `sql` without holding the engine's lock while it runs.
async fn pull(
    state: &AppState,
    sql: &str,
    query: &sluice_sql_planner::ContinuousQuery,
) -> Result<PullResult, ApiError> {
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

/// Each row of `batches` as a JSON array of its column values, in column order.
fn batch_rows(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[datafusion::arrow::array::RecordBatch],
) -> Result<Vec<Vec<Value>>, ApiError> {
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
    let mut rows = vec![];
    for batch in batches {
        let mut columns: Vec<Vec<Value>> = Vec::with_capacity(batch.num_columns());
        for (i, field) in schema.fields().iter().enumerate() {
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

/// How a query's answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `/query-stream` default: a metadata line, then one JSON array per row.
    Delimited,
    /// `/query-stream` with `Accept: application/json`: the same items in one JSON array.
    JsonArray,
    /// `/query`: `[{"header"}, {"row": {"columns"}}…]`.
    Legacy,
}

fn wants_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains(DELIMITED))
}

/// The first item of an answer: the query id and the columns.
fn header(
    format: Format,
    query_id: &str,
    schema: &datafusion::arrow::datatypes::Schema,
    keys: &[String],
) -> Value {
    match format {
        Format::Legacy => {
            let schema = schema
                .fields()
                .iter()
                .map(|f| {
                    let key = if keys.contains(f.name()) { " KEY" } else { "" };
                    format!(
                        "`{}` {}{key}",
                        f.name().to_uppercase(),
                        sql_type(f.data_type())
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            json!({"header": {"queryId": query_id, "schema": schema}})
        }
        _ => json!({
            "queryId": query_id,
            "columnNames": schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
            "columnTypes": schema.fields().iter().map(|f| sql_type(f.data_type())).collect::<Vec<_>>(),
        }),
    }
}

/// One row item of an answer.
fn row_item(format: Format, row: Vec<Value>, tombstone: bool) -> Value {
    match format {
        Format::Legacy if tombstone => json!({"row": {"columns": row, "tombstone": true}}),
        Format::Legacy => json!({"row": {"columns": row}}),
        _ => Value::from(row),
    }
}

/// A whole answer (a pull query's).
fn answer(format: Format, items: Vec<Value>) -> Response {
    match format {
        Format::Delimited => {
            let mut text = String::new();
            for item in items {
                text.push_str(&item.to_string());
                text.push('\n');
            }
            ([(axum::http::header::CONTENT_TYPE, DELIMITED)], text).into_response()
        }
        Format::JsonArray | Format::Legacy => Json(items).into_response(),
    }
}

async fn run_query_request(
    state: &AppState,
    sql: &str,
    props: &RequestProperties,
    format: Format,
) -> Result<Response, ApiError> {
    match one_query(sql)? {
        QueryRequest::Pull(q) => {
            let result = pull(state, sql, &q).await?;
            let mut items = vec![header(
                format,
                &pull_query_id(),
                &result.schema,
                &result.key_columns,
            )];
            items.extend(
                batch_rows(&result.schema, &result.batches)?
                    .into_iter()
                    .map(|r| row_item(format, r, false)),
            );
            Ok(answer(format, items))
        }
        QueryRequest::Push { query, limit } => {
            let stream = push(state, sql, &query, limit, props).await?;
            Ok(streamed(format, stream))
        }
        QueryRequest::Print {
            topic,
            from_beginning,
            limit,
        } => {
            let partitions = state.topics.partitions(&topic).await?.ok_or_else(|| {
                ApiError::statement(format!("topic \"{topic}\" does not exist"))
                    .in_statement(sql.trim(), vec![])
            })?;
            let stream = state.push_queries.print(
                state.topics.bootstrap_servers(),
                &state.service_id,
                &topic,
                partitions,
                from_beginning,
                limit,
            )?;
            Ok(printed(stream))
        }
    }
}

/// A PRINT's answer: plain text, a line per record as it arrives (ksqlDB's PRINT shape).
fn printed(stream: crate::push_query::PrintStream) -> Response {
    let body = futures::stream::unfold(stream, |mut st| async move {
        let line = st.lines.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(format!("{line}\n"))),
            st,
        ))
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// A push query's answer, written as its rows arrive; it ends after LIMIT rows or when
/// the query stops.
fn streamed(format: Format, stream: PushStream) -> Response {
    use std::collections::VecDeque;
    struct State {
        stream: PushStream,
        format: Format,
        sent: u64,
        pending: VecDeque<String>,
        started: bool,
        done: bool,
    }
    let first = header(format, &stream.query_id, &stream.schema, &[]);
    let separator = |format: Format, first: bool| match (format, first) {
        (Format::Delimited, _) => "",
        (_, true) => "[",
        (_, false) => ",\n",
    };
    let end = |format: Format| match format {
        Format::Delimited => "",
        _ => "]",
    };
    let line_end = |format: Format| {
        if format == Format::Delimited {
            "\n"
        } else {
            ""
        }
    };
    let state = State {
        stream,
        format,
        sent: 0,
        pending: VecDeque::from([format!(
            "{}{first}{}",
            separator(format, true),
            line_end(format)
        )]),
        started: true,
        done: false,
    };
    let body = futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((
                    Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)),
                    st,
                ));
            }
            if st.done {
                return None;
            }
            let limit_reached = st.stream.limit.is_some_and(|n| st.sent >= n);
            let next = if limit_reached {
                None
            } else {
                st.stream.results.recv().await
            };
            let batch = match next {
                Some(Ok(batch)) => Some(batch),
                Some(Err(e)) => {
                    // The query stopped: say why inside the stream, as ksqlDB does.
                    let error = json!({"@type": "generic_error", "error_code": SERVER_ERROR, "message": format!("the push query stopped: {e}")});
                    let item = match st.format {
                        Format::Legacy => json!({"errorMessage": error}),
                        _ => error,
                    };
                    st.pending.push_back(format!(
                        "{}{item}{}",
                        separator(st.format, false),
                        line_end(st.format)
                    ));
                    st.pending.push_back(end(st.format).to_string());
                    st.done = true;
                    continue;
                }
                None => None,
            };
            let Some(batch) = batch else {
                if limit_reached && st.format == Format::Legacy {
                    st.pending
                        .push_back(format!(",\n{}", json!({"finalMessage": "Limit Reached"})));
                }
                st.pending.push_back(end(st.format).to_string());
                st.done = true;
                continue;
            };
            let rows = match batch_rows(&st.stream.schema, std::slice::from_ref(&batch.rows)) {
                Ok(rows) => rows,
                Err(e) => {
                    st.pending.push_back(format!(
                        "{}{}{}",
                        separator(st.format, !st.started),
                        json!({"@type": "generic_error", "error_code": e.error_code, "message": e.message}),
                        line_end(st.format)
                    ));
                    st.pending.push_back(end(st.format).to_string());
                    st.done = true;
                    continue;
                }
            };
            for (i, row) in rows.into_iter().enumerate() {
                let tombstone = batch.is_tombstone(i);
                if tombstone && st.format != Format::Legacy {
                    continue;
                }
                if st.stream.limit.is_some_and(|n| st.sent >= n) {
                    break;
                }
                st.sent += 1;
                st.pending.push_back(format!(
                    "{}{}{}",
                    separator(st.format, false),
                    row_item(st.format, row, tombstone),
                    line_end(st.format)
                ));
            }
        }
    });
    let content_type = match format {
        Format::Delimited => DELIMITED,
        _ => "application/json",
    };
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// `POST /query-stream`: `{"sql", "properties"}`. A pull query is answered at once; a
/// push query streams. The answer is a metadata line and one JSON array per row
/// (`application/vnd.ksqlapi.delimited.v1`, the default) or the same items as one JSON
/// array (`Accept: application/json`).
async fn query_stream(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let request = request_object(&body)?;
    let sql = required_str(&request, "sql", "the query to run")?;
    let props = query_properties(&request, "properties")?;
    let format = if wants_json(&headers) {
        Format::JsonArray
    } else {
        Format::Delimited
    };
    run_query_request(&state, sql, &props, format).await
}

/// `POST /query`: `{"ksql", "streamsProperties"}`, answered as ksqlDB's older JSON array:
/// a header with the schema (key columns marked `KEY`), then `{"row": {"columns": […]}}`
/// items, and `{"finalMessage": "Limit Reached"}` when a push query's LIMIT ends it.
async fn query(
    State(state): State<AppState>,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let request = request_object(&body)?;
    let sql = required_str(&request, "ksql", "the query to run")?;
    let props = query_properties(&request, "streamsProperties")?;
    run_query_request(&state, sql, &props, Format::Legacy).await
}

/// `POST /close-query`: `{"queryId"}` stops a push query.
async fn close_query(
    State(state): State<AppState>,
    RequestBody(body): RequestBody,
) -> Result<Json<Value>, ApiError> {
    let request = request_object(&body)?;
    let id = required_str(&request, "queryId", "the push query to stop")?;
    if state.push_queries.close(id) {
        Ok(Json(json!({})))
    } else {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error_code: NOT_FOUND,
            ..ApiError::bad_request(format!("no push query \"{id}\" is running"))
        })
    }
}

/// `GET /openapi.json`: an OpenAPI 3.0 description of this API.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
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
            "no such endpoint; Sluice serves POST /ksql, /query-stream, /query, /close-query and /inserts-stream, and GET /info, /healthcheck and /openapi.json",
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
