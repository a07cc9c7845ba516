//! `RequestProperties`: the `streamsProperties` (or `properties`) of a request that Sluice
//! reads: `auto.offset.reset`, `processing.guarantee`, `commit.interval.ms` and
//! `sluice.idle.timeout.ms`.

use serde_json::Value;

use crate::config::ProcessingGuarantee;
use crate::error::ApiError;

/// The `streamsProperties` key of the idle-partition timeout.
pub const IDLE_TIMEOUT_PROPERTY: &str = "sluice.idle.timeout.ms";

/// Per-request properties (`streamsProperties`).
#[derive(Debug, Clone)]
pub struct RequestProperties {
    /// `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// `sluice.idle.timeout.ms`: a source partition idle this long stops holding the
    /// watermark back; `Some(0)` never. `None`: the server's default.
    pub idle_timeout_ms: Option<u64>,
    /// `processing.guarantee`; `None`: the server's default.
    pub processing_guarantee: Option<ProcessingGuarantee>,
    /// `commit.interval.ms`; `None`: the default of the processing guarantee.
    pub commit_interval_ms: Option<u64>,
}

impl RequestProperties {
    /// The properties as `streamsProperties`, for the command topic.
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "auto.offset.reset".into(),
            Value::String(self.auto_offset_reset.clone()),
        );
        if let Some(ms) = self.idle_timeout_ms {
            m.insert(IDLE_TIMEOUT_PROPERTY.into(), Value::from(ms));
        }
        if let Some(g) = self.processing_guarantee {
            m.insert("processing.guarantee".into(), Value::from(g.as_str()));
        }
        if let Some(ms) = self.commit_interval_ms {
            m.insert("commit.interval.ms".into(), Value::from(ms));
        }
        m
    }

    /// Read `streamsProperties`; unknown properties are ignored, as ksqlDB passes them to
    /// Kafka Streams.
    pub fn from_json(props: &serde_json::Map<String, Value>) -> Result<Self, ApiError> {
        let mut out = Self {
            auto_offset_reset: "latest".to_string(),
            idle_timeout_ms: None,
            processing_guarantee: None,
            commit_interval_ms: None,
        };
        for (k, v) in props {
            let key = k.strip_prefix("ksql.streams.").unwrap_or(k);
            if key == "auto.offset.reset" {
                let value = v.as_str().map(str::to_ascii_lowercase);
                match value.as_deref() {
                    Some("earliest") | Some("latest") => {
                        out.auto_offset_reset = value.unwrap_or_default()
                    }
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "invalid value {v} for property auto.offset.reset; use 'earliest' or 'latest'"
                        )))
                    }
                }
            } else if key == "processing.guarantee" {
                let value = v.as_str().and_then(ProcessingGuarantee::parse).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid value {v} for property processing.guarantee; use 'exactly_once_v2' or 'at_least_once'"
                    ))
                })?;
                out.processing_guarantee = Some(value);
            } else if key == "commit.interval.ms" {
                let ms = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "invalid value {v} for property commit.interval.ms; use a whole number of milliseconds from 1 to 60000"
                        ))
                    })?;
                out.commit_interval_ms = Some(ms);
            } else if key == IDLE_TIMEOUT_PROPERTY {
                let ms = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "invalid value {v} for property {IDLE_TIMEOUT_PROPERTY}; use a whole number of milliseconds (0 turns idle detection off)"
                        ))
                    })?;
                out.idle_timeout_ms = Some(ms);
            }
        }
        Ok(out)
    }
}
