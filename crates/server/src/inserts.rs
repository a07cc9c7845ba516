//! `POST /inserts-stream`: rows written into a stream's topic over one request.
//!
//! The body is newline-delimited JSON: first `{"target": "STREAM", "properties": {…}}`,
//! then one JSON object per row. Rows are read as they arrive; each is checked against
//! the stream's columns (as a query would decode it), produced to the stream's topic, and
//! acknowledged once the broker has it: `{"status":"ok","seq":n}`, `seq` counting rows
//! from 0. A row that does not fit gets `{"status":"error","seq":n,"error_code":40000,
//! "message":…}` and the rest go on.

use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sluice_stream_exec::json_decoder::JsonDecoder;

use crate::api::AppState;
use crate::error::{ApiError, BAD_REQUEST};

/// The longest line (target or row) accepted.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// How long the request may send nothing before it is ended.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a body line by line, as it arrives.
struct Lines {
    body: BodyDataStream,
    buffer: Vec<u8>,
    ended: bool,
    /// Turns true when the server shuts down: the request ends.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Lines {
    fn new(body: Body, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            body: body.into_data_stream(),
            buffer: vec![],
            ended: false,
            stopping,
        }
    }

    /// The next line without its newline; `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                if end > MAX_LINE_BYTES {
                    return Err(too_long());
                }
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.buffer.len() > MAX_LINE_BYTES {
                return Err(too_long());
            }
            if self.ended {
                return Ok((!self.buffer.is_empty()).then(|| std::mem::take(&mut self.buffer)));
            }
            if *self.stopping.borrow() {
                return Err(ApiError {
                    status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    error_code: 50303,
                    ..ApiError::bad_request("the server is shutting down")
                });
            }
            let next = tokio::select! {
                next = self.body.next() => next,
                changed = self.stopping.changed() => {
                    if changed.is_err() {
                        // The server is gone: nothing will write these rows.
                        return Err(ApiError::bad_request("the server is shutting down"));
                    }
                    continue;
                }
                _ = tokio::time::sleep(IDLE_TIMEOUT) => {
                    return Err(ApiError::bad_request(format!(
                        "the request sent nothing for {} s",
                        IDLE_TIMEOUT.as_secs()
                    )))
                }
            };
            match next {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(format!(
                        "the request body could not be read: {e}"
                    )))
                }
                None => self.ended = true,
            }
        }
    }

    /// The next line that is not blank.
    async fn next_row(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            match self.next().await? {
                Some(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                other => return Ok(other),
            }
        }
    }
}

/// `POST /inserts-stream`.
pub async fn inserts_stream(
    axum::extract::State(state): axum::extract::State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut lines = Lines::new(body, state.stopping.clone());
    let first = lines.next_row().await?.ok_or_else(|| {
        ApiError::bad_request(
            "the request body is empty; start it with {\"target\": \"STREAM\"} on its own line",
        )
    })?;
    let target: Value = serde_json::from_slice(&first)
        .map_err(|e| ApiError::bad_request(format!("the first line is not a JSON object: {e}")))?;
    let name = target
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("the first line needs a \"target\" stream name"))?;
    let (topic, schema) = state.engine.lock().await.insert_target(name)?;
    let decoder = JsonDecoder::new(schema);
    let producer = state.producer.clone();
    let acks = futures::stream::unfold(Some((lines, 0u64)), move |st| {
        let (decoder, producer, topic) = (decoder.clone(), producer.clone(), topic.clone());
        async move {
            let (mut lines, seq) = st?;
            let row = match lines.next_row().await {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => return Some((ack_line(error(seq, &e.message)), None)),
            };
            let ack = insert(&decoder, &producer, &topic, seq, &row).await;
            Some((ack_line(ack), Some((lines, seq + 1))))
        }
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/vnd.ksqlapi.delimited.v1",
        )],
        Body::from_stream(acks),
    )
        .into_response())
}

fn too_long() -> ApiError {
    ApiError::bad_request(format!(
        "a line of the request is longer than {MAX_LINE_BYTES} bytes"
    ))
}

fn ack_line(ack: Value) -> Result<Bytes, std::convert::Infallible> {
    Ok(Bytes::from(format!("{ack}\n")))
}

fn error(seq: u64, message: &str) -> Value {
    json!({"status": "error", "seq": seq, "error_code": BAD_REQUEST, "message": message})
}

/// Check one row and write it; its acknowledgement.
async fn insert(
    decoder: &JsonDecoder,
    producer: &FutureProducer,
    topic: &str,
    seq: u64,
    row: &[u8],
) -> Value {
    match serde_json::from_slice::<Value>(row) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return error(seq, "a row must be a JSON object"),
        Err(e) => return error(seq, &format!("the row is not valid JSON: {e}")),
    }
    match decoder.decode(&[row]) {
        Ok(decoded) if decoded.errors.is_empty() => {}
        Ok(decoded) => {
            let why = decoded
                .errors
                .into_iter()
                .next()
                .map_or_else(String::new, |(_, m)| m);
            return error(
                seq,
                &format!("the row does not fit the stream's columns: {why}"),
            );
        }
        Err(e) => return error(seq, &e.to_string()),
    }
    let record = FutureRecord::<(), [u8]>::to(topic).payload(row);
    match producer.send(record, Duration::from_secs(10)).await {
        Ok(_) => json!({"status": "ok", "seq": seq}),
        Err((e, _)) => json!({
            "status": "error",
            "seq": seq,
            "error_code": crate::error::SERVER_ERROR,
            "message": format!("the row could not be written to topic {topic}: {e}"),
        }),
    }
}
