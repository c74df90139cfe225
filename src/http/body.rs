//! Reading request bodies under the size limit, for every HTTP handler that takes one.

use crate::error::ServeError;
use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use std::time::Duration;

/// The whole body, or `BodyTooLarge` (after discarding the rest) once it passes `limit` bytes.
/// A failure to read the body becomes `on_error(message)`. A body that declares more than
/// `limit` (`Content-Length`) is refused before any of it is buffered; one that declares its
/// length gets a buffer of that size at once (no doubling and copying as it arrives).
pub async fn read_limited(
    body: Body,
    limit: usize,
    on_error: impl FnOnce(String) -> ServeError,
) -> Result<Bytes, ServeError> {
    let declared = declared_len(&body);
    let mut body = refuse_declared_oversize(body, limit).await?;
    let mut buf = Vec::with_capacity(declared);
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

/// The length a body declares it has (at least), in bytes.
pub fn declared_len(body: &Body) -> usize {
    usize::try_from(http_body::Body::size_hint(body).lower()).unwrap_or(usize::MAX)
}

/// `BodyTooLarge` for a body that declares more than `limit` bytes, after draining up to
/// `2 × limit` of it unbuffered (the client is usually still uploading; see `discard`);
/// otherwise the body, unread.
pub async fn refuse_declared_oversize(body: Body, limit: usize) -> Result<Body, ServeError> {
    if declared_len(&body) > limit {
        discard(body, limit.saturating_mul(2)).await;
        return Err(ServeError::BodyTooLarge { limit });
    }
    Ok(body)
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that arrives in chunks and declares no length.
    struct Chunks(Vec<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop().map(|b| Ok(Frame::data(b))))
        }
    }

    fn bad(m: String) -> ServeError {
        ServeError::BadImage(m)
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_whether_it_declares_its_length_or_not() {
        let declared = Body::from(vec![7u8; 20]);
        assert_eq!(declared_len(&declared), 20);
        let r = read_limited(declared, 10, bad).await;
        assert!(
            matches!(r, Err(ServeError::BodyTooLarge { limit: 10 })),
            "{r:?}"
        );
        // Streamed in chunks, no length declared: caught as it arrives.
        let streamed = Body::new(Chunks(vec![Bytes::from(vec![1u8; 4]); 4]));
        assert_eq!(declared_len(&streamed), 0);
        let r = read_limited(streamed, 10, bad).await;
        assert!(
            matches!(r, Err(ServeError::BodyTooLarge { limit: 10 })),
            "{r:?}"
        );
        // At the limit: the whole body.
        let ok = read_limited(Body::from(vec![3u8; 10]), 10, bad)
            .await
            .unwrap();
        assert_eq!(&ok[..], &[3u8; 10][..]);
    }
}
