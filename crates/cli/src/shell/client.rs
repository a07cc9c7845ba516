//! The shell's side of the REST API: statements to `/ksql`, queries to `/query-stream`
//! (rows read as they arrive), with the session's properties.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// What went wrong with a request.
#[derive(Debug)]
pub enum RequestError {
    /// The server could not be reached (or went away mid-answer).
    Unreachable(String),
    /// The server answered with an error: its message.
    Server(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Unreachable(m) | RequestError::Server(m) => f.write_str(m),
        }
    }
}

/// A query's answer as it arrives.
pub enum QueryEvent {
    /// The columns, first.
    Header(Vec<String>),
    /// One row.
    Row(Vec<Value>),
}

/// A connection to one server.
pub struct Client {
    http: reqwest::Client,
    /// e.g. `http://127.0.0.1:8088`.
    pub server: String,
    /// `SET 'k'='v'`: sent as `streamsProperties` with every request.
    pub properties: BTreeMap<String, String>,
}

impl Client {
    pub fn new(server: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            server: server.trim_end_matches('/').to_string(),
            properties: BTreeMap::new(),
        }
    }

    fn properties_json(&self) -> Value {
        Value::Object(
            self.properties
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        )
    }

    fn unreachable(&self, e: reqwest::Error) -> RequestError {
        RequestError::Unreachable(format!(
            "cannot reach the server at {}: {}",
            self.server,
            root_cause(&e)
        ))
    }

    /// `GET /info`: the server's version, or why it cannot be reached.
    pub async fn info(&self) -> Result<String, RequestError> {
        let r = self
            .http
            .get(format!("{}/info", self.server))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let v: Value = r.json().await.map_err(|e| self.unreachable(e))?;
        Ok(cell_str(&v["KsqlServerInfo"]["version"]))
    }

    /// Run `statement` (not a SELECT) through `/ksql`; its entities.
    pub async fn ksql(&self, statement: &str) -> Result<Vec<Value>, RequestError> {
        let r = self
            .http
            .post(format!("{}/ksql", self.server))
            .json(&json!({"ksql": statement, "streamsProperties": self.properties_json()}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = r.status();
        let body: Value = r.json().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(RequestError::Server(error_message(&body, status.as_u16())));
        }
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// Run a query through `/query-stream`, handing each item to `on_event` as it arrives,
    /// until the answer ends (a pull query, a LIMIT) or the returned future is dropped
    /// (Ctrl-C), which closes the connection and so the push query.
    pub async fn query(
        &self,
        sql: &str,
        mut on_event: impl FnMut(QueryEvent),
    ) -> Result<(), RequestError> {
        let mut first = true;
        let mut failed = None;
        self.lines(sql, |text| {
            if failed.is_some() {
                return;
            }
            let item: Value = match serde_json::from_str(text) {
                Ok(item) => item,
                Err(e) => {
                    failed = Some(format!("unreadable answer from the server: {e}"));
                    return;
                }
            };
            if item.get("@type").is_some() || item.get("error_code").is_some() {
                failed = Some(error_message(&item, 0));
            } else if first {
                first = false;
                let columns = item["columnNames"]
                    .as_array()
                    .map(|a| a.iter().map(cell_str).collect())
                    .unwrap_or_default();
                on_event(QueryEvent::Header(columns));
            } else if let Value::Array(row) = item {
                on_event(QueryEvent::Row(row));
            }
        })
        .await?;
        match failed {
            Some(m) => Err(RequestError::Server(m)),
            None => Ok(()),
        }
    }

    /// Send `sql` to `/query-stream` and hand each non-empty line of the answer to
    /// `on_line` as it arrives (a query's JSON items, or PRINT's records).
    pub async fn lines(
        &self,
        sql: &str,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), RequestError> {
        let mut r = self
            .http
            .post(format!("{}/query-stream", self.server))
            .header("accept", "application/vnd.ksqlapi.delimited.v1")
            .json(&json!({"sql": sql, "properties": self.properties_json()}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = r.status();
        if !status.is_success() {
            let body: Value = r.json().await.map_err(|e| self.unreachable(e))?;
            return Err(RequestError::Server(error_message(&body, status.as_u16())));
        }
        let mut pending: Vec<u8> = vec![];
        while let Some(chunk) = r.chunk().await.map_err(|e| self.unreachable(e))? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                if !text.trim().is_empty() {
                    on_line(text.trim_end());
                }
            }
        }
        Ok(())
    }
}

fn cell_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The message of an error body.
fn error_message(body: &Value, status: u16) -> String {
    match body["message"].as_str() {
        Some(m) => m.to_string(),
        None => format!("the server answered {status}: {body}"),
    }
}

/// The innermost cause of a request error ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
