//! The body of a JSON endpoint's request, read whole up to [`MAX_BODY_BYTES`].
//!
//! A body over the limit is answered with 413 and a JSON error, but only once the client
//! has sent it: the rest is read and dropped (up to [`MAX_DRAINED_BYTES`] and for at most
//! [`DRAIN_TIMEOUT`]). Answering at once, and closing the connection on a client still
//! writing, loses the answer: the client sees a broken pipe and no 413.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use futures::StreamExt;

use crate::error::ApiError;

/// Largest request body of the JSON endpoints (`/inserts-stream` streams, line by line).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of a body over the limit is read and dropped before the 413 is sent.
pub const MAX_DRAINED_BYTES: usize = 64 << 20;

/// How long the rest of a body over the limit is waited for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON endpoint's request body, whole.
#[derive(Debug)]
pub struct RequestBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_DRAINED_BYTES as u64) {
            // Too large to be worth reading: the client will see the connection close.
            return Err(too_large());
        }
        read_limited(request.into_body(), MAX_BODY_BYTES)
            .await
            .map(RequestBody)
    }
}

/// Reads `body` whole if it is at most `limit` bytes; otherwise reads and drops the
/// rest (within [`MAX_DRAINED_BYTES`] and [`DRAIN_TIMEOUT`]) and answers 413.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut chunks = body.into_data_stream();
    let mut whole = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(unreadable)?;
        if whole.len() + chunk.len() > limit {
            let mut read = whole.len() + chunk.len();
            drop(whole);
            let drain = async {
                while read <= MAX_DRAINED_BYTES {
                    match chunks.next().await {
                        Some(Ok(chunk)) => read += chunk.len(),
                        Some(Err(_)) | None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            return Err(too_large());
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(whole))
}

fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        error_code: 41300,
        ..ApiError::bad_request(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        ))
    }
}

fn unreadable(e: axum::Error) -> ApiError {
    ApiError::bad_request(format!("the request body could not be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(sizes: &[usize]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> = sizes
            .iter()
            .map(|&n| Ok(Bytes::from(vec![b'x'; n])))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_up_to_the_limit_is_read_whole_and_one_over_it_gets_413() {
        let body = read_limited(chunked(&[3, 4, 3]), 10).await.unwrap();
        assert_eq!(body.len(), 10);
        let e = read_limited(chunked(&[3, 4, 4, 5]), 10).await.unwrap_err();
        assert_eq!(
            (e.status, e.error_code),
            (StatusCode::PAYLOAD_TOO_LARGE, 41300)
        );
    }

    #[tokio::test]
    async fn the_rest_of_a_body_over_the_limit_is_read_before_the_413() {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = read.clone();
        let chunks = futures::stream::iter(0..100).map(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000]))
        });
        let e = read_limited(Body::from_stream(chunks), 10_000)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 100);
    }
}
