//! The request-body deadline: a body that has not arrived by the request's
//! own deadline (its latency budget: `X-SLA-Ms`, the gRPC deadline or
//! metadata, else the server's default), and at the latest by the server's
//! maximum, ends with [`BodyTimedOut`]. The handlers turn that into
//! `408 body_timeout` (gRPC: `DEADLINE_EXCEEDED`), and the connection layer
//! closes an HTTP/1 connection whose body was cut, which frees its slot.
//! The connection layer can also cut a body early (`cut`), to make room at
//! the connection limit.

use super::conn::ReadingGuard;
use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The error a body yields once its deadline has passed.
#[derive(Debug, Clone)]
pub struct BodyTimedOut {
    pub waited: Duration,
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request body did not arrive within {} ms",
            self.waited.as_millis()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// A `BodyTimedOut` anywhere in an error's source chain (axum and multer
/// wrap body errors).
pub fn find_timeout<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    loop {
        if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
            return Some(t);
        }
        e = e.source()?;
    }
}

/// Lets the connection layer end every body still arriving on a connection.
#[derive(Default)]
pub struct Cutter {
    cut: AtomicBool,
    notify: Notify,
}

impl Cutter {
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

type Timer = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A request body that fails with [`BodyTimedOut`] after its deadline.
/// For gRPC the error is a `tonic::Status` (DEADLINE_EXCEEDED) carrying the
/// same message, which tonic reports as is.
pub struct DeadlineBody {
    inner: Incoming,
    started: Instant,
    timer: Option<Timer>,
    /// Set once the deadline cut the body (read by the connection layer).
    timed_out: Arc<AtomicBool>,
    grpc: bool,
    done: bool,
    /// Keeps the request counted as "body arriving" on its connection.
    reading: Option<ReadingGuard>,
}

impl DeadlineBody {
    pub fn new(
        inner: Incoming,
        deadline: Instant,
        cutter: Arc<Cutter>,
        timed_out: Arc<AtomicBool>,
        grpc: bool,
    ) -> DeadlineBody {
        let done = inner.is_end_stream();
        let timer: Option<Timer> = (!done).then(|| {
            Box::pin(async move {
                // Created before the flag is read: a `cut` in between still wakes it.
                let notified = cutter.notify.notified();
                if cutter.is_cut() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                    _ = notified => {}
                }
            }) as Timer
        });
        DeadlineBody {
            inner,
            started: Instant::now(),
            timer,
            timed_out,
            grpc,
            done,
            reading: None,
        }
    }

    pub(super) fn with_guard(mut self, g: ReadingGuard) -> DeadlineBody {
        if !self.done {
            self.reading = Some(g);
        }
        self
    }

    fn finish(&mut self) {
        self.timer = None;
        self.reading = None;
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.finish();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                let Some(timer) = this.timer.as_mut() else {
                    return Poll::Pending;
                };
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                this.finish();
                this.timed_out.store(true, Ordering::SeqCst);
                let e = BodyTimedOut {
                    waited: this.started.elapsed(),
                };
                if this.grpc {
                    Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(
                        e.to_string(),
                    )))))
                } else {
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
