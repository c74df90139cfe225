//! Reading request bodies under the size limit, for every HTTP handler that takes one.

use crate::error::ServeError;
use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use std::time::Duration;

/// The whole body, or `BodyTooLarge` (after discarding the rest) once it passes `limit` bytes.
/// A failure to read the body becomes `on_error(message)`.
pub async fn read_limited(
    mut body: Body,
    limit: usize,
    on_error: impl FnOnce(String) -> ServeError,
) -> Result<Bytes, ServeError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return Err(
                    body_error(&e).unwrap_or_else(|| on_error(format!("reading the body: {e}")))
                )
            }
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                discard(body, limit).await;
                return Err(ServeError::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// The error to answer when a body read failed because the connection
/// layer's deadline cut it (see `super::deadline`); `None` for other failures.
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> Option<ServeError> {
    super::deadline::find_timeout(e).map(|t| ServeError::BodyTimeout {
        waited_ms: t.waited.as_secs_f64() * 1e3,
    })
}

/// The outcome of the checks made before reading the body, with the body still unread; on an
/// error, the body is discarded first (see `discard`).
pub async fn checked_before_body<T>(
    early: Result<T, ServeError>,
    body: Body,
    max: usize,
) -> Result<(T, Body), ServeError> {
    match early {
        Ok(v) => Ok((v, body)),
        Err(e) => {
            discard(body, max).await;
            Err(e)
        }
    }
}

/// Reads and drops the rest of a request body, at most `max` bytes and for at most 2 s, before
/// an early error is answered. Otherwise the server closes the connection with unread data, the
/// kernel answers the still-uploading client with a reset, and the client may see a broken
/// connection instead of the error.
pub async fn discard(mut body: Body, max: usize) {
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}
