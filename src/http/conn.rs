//! The connection layer of both listeners (HTTP/1 + h2c on the HTTP port,
//! HTTP/2 for gRPC): an accept loop that bounds open connections and backs
//! off when the process runs out of file descriptors, and one task per
//! connection (hyper-util) that enforces the timeouts:
//!
//! - **header timeout**: a new connection must send a complete request head
//!   (HTTP/1) or start HTTP/2 within it; on a keep-alive connection it runs
//!   from the first byte of the next head;
//! - **idle timeout**: a connection without a request in progress (HTTP/1
//!   keep-alive, HTTP/2 without open streams) is closed after it;
//! - **body deadline** ([`super::deadline`]): a body must arrive by the
//!   request's own deadline, at the latest by the body timeout; an HTTP/1
//!   connection whose body was cut is closed after its `408`;
//! - **connection limit**, over both listeners: at the limit a new
//!   connection first makes room by closing the connection that has been
//!   idle longest (no request in progress, or a head still arriving), else by
//!   cutting the oldest body still arriving (that request is answered
//!   `408 body_timeout`); requests being worked on are never touched. When
//!   nothing can make room the new connection is closed at once. A log line
//!   (at most every 10 s) and `slimserve_connections_total{outcome}` tell.
//!
//! On shutdown the listeners close (new connections are refused by the
//! kernel), idle connections close (HTTP/1 ones after `SHUTDOWN_LINGER`,
//! answering a request that arrives meanwhile: `503 shutting_down`), HTTP/1
//! answers carry
//! `connection: close`, HTTP/2 sends GOAWAY, and every request in progress
//! is answered before its connection ends.

use super::deadline::{Cutter, DeadlineBody};
use crate::config::ConnArgs;
use crate::metrics::Metrics;
use crate::service::budget_from_ms;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// File descriptors kept out of the connection budget: model files, the
/// runtime's, logs, the blocking pool, connections being evicted.
const RESERVED_FDS: u64 = 128;

/// Evicted connections whose socket is not closed yet, at most: beyond it
/// the accept loop waits for them to close before taking the next
/// connection, so evicting never runs the process out of descriptors (a
/// failed `accept` leaves connections, legitimate ones too, in the
/// kernel's queue, and a full queue drops their SYNs: seconds of
/// retransmission for the client).
const MAX_CLOSING: usize = 64;

/// The least time a body is given to arrive, whatever the request's budget.
const MIN_BODY_WINDOW: Duration = Duration::from_millis(200);

/// Longest the accept loop waits for a connection to close when `accept`
/// found no free descriptor.
const NO_FDS_WAIT: Duration = Duration::from_millis(20);

/// How long an idle HTTP/1 connection stays open after shutdown begins.
/// Closing it at once races a request the client may be sending on it
/// (that request would see the connection end without an answer); within
/// this time a request that arrives is answered (`503 shutting_down`) with
/// `connection: close`, so the client itself stops using the connection.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// Longest the accept loop waits for evicted connections to close.
const CLOSING_WAIT: Duration = Duration::from_millis(200);

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`):
/// a burst of connections waits in the kernel's queue instead of having its
/// SYNs dropped while the accept loop makes room.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bind a listener with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raise the soft open-file limit to the hard limit; returns (soft before,
/// soft after, hard) and logs them.
pub fn raise_open_file_limit() -> (u64, u64, u64) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let now = rlimit::increase_nofile_limit(hard).unwrap_or(soft);
    tracing::info!(
        soft_before = soft,
        soft = now,
        hard,
        "open-file limit (soft raised to hard)"
    );
    (soft, now, hard)
}

/// The connection settings, from the command line.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Budget of requests that name none (the body deadline's default).
    pub default_budget: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_keepalive_interval: Option<Duration>,
    pub h2_keepalive_timeout: Duration,
    pub h2_max_header_list_bytes: u32,
}

impl Limits {
    /// From the flags; the connection limit is capped by the open-file
    /// limit `nofile` less a reserve.
    pub fn new(a: &ConnArgs, default_sla_ms: u64, nofile: u64) -> Limits {
        // Evicted connections still closing hold descriptors too.
        let by_fds = nofile
            .saturating_sub(RESERVED_FDS + MAX_CLOSING as u64)
            .max(16) as usize;
        let ms = |v: u64| Duration::from_millis(v.max(1));
        Limits {
            max_connections: a.max_connections.clamp(1, by_fds),
            header_timeout: ms(a.header_timeout_ms),
            idle_timeout: ms(a.idle_timeout_ms),
            body_timeout: ms(a.body_timeout_ms),
            default_budget: ms(default_sla_ms),
            h2_max_concurrent_streams: a.h2_max_concurrent_streams.max(1),
            h2_keepalive_interval: (a.h2_keepalive_interval_secs > 0)
                .then(|| Duration::from_secs(a.h2_keepalive_interval_secs)),
            h2_keepalive_timeout: Duration::from_secs(a.h2_keepalive_timeout_secs.max(1)),
            h2_max_header_list_bytes: a.h2_max_header_list_bytes.max(1024),
        }
    }
}

/// Which protocols a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    Http,
    /// HTTP/2 only; request bodies that time out fail as gRPC DEADLINE_EXCEEDED.
    Grpc,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// What the connection layer knows of one connection.
struct ConnState {
    accepted: Instant,
    /// Requests (HTTP/2: streams) in progress: from the head until the
    /// answer's body has been written.
    in_flight: AtomicUsize,
    /// Of those, requests whose body is still arriving.
    reading: AtomicUsize,
    /// Since when (ms after `Pool::epoch`) no request is in progress.
    idle_since: AtomicU64,
    /// First byte of the next head (ms after epoch), 0 if none yet.
    head_started: AtomicU64,
    served_any: AtomicBool,
    http2: AtomicBool,
    /// Closing it was decided (evicted): skipped when looking for room.
    evicting: AtomicBool,
    /// The server is shutting down: HTTP/1 answers carry `connection: close`.
    closing: AtomicBool,
    /// Wakes the connection's task: a deadline may have moved closer, or it
    /// is evicted.
    wake: Notify,
    cutter: Arc<Cutter>,
}

/// Open connections over both listeners, and the limit.
pub struct Pool {
    epoch: Instant,
    limits: Limits,
    metrics: Arc<Metrics>,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// Connections whose task has not ended yet (for draining).
    tasks: AtomicUsize,
    tasks_done: Notify,
    /// Signalled whenever a connection closes (see `MAX_CLOSING`).
    closed: Notify,
    last_log: Mutex<Option<Instant>>,
    at_limit: AtomicU64,
}

enum Room {
    Free,
    Made,
    None,
}

impl Pool {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Pool> {
        metrics.connection_limit.set(limits.max_connections as i64);
        tracing::info!(
            max_connections = limits.max_connections,
            header_timeout_ms = limits.header_timeout.as_millis() as u64,
            idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
            body_timeout_ms = limits.body_timeout.as_millis() as u64,
            "connection limits"
        );
        Arc::new(Pool {
            epoch: Instant::now(),
            limits,
            metrics,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
            closed: Notify::new(),
            last_log: Mutex::new(None),
            at_limit: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Open connections over both listeners.
    pub fn open(&self) -> usize {
        self.conns.lock().expect("pool lock").len()
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(1))
    }

    /// Make room for one more connection if the pool is full.
    fn room(&self, conns: &HashMap<u64, Arc<ConnState>>) -> Room {
        let live = conns
            .values()
            .filter(|c| !c.evicting.load(Ordering::Relaxed))
            .count();
        if live < self.limits.max_connections {
            return Room::Free;
        }
        // Idle longest first (no request in progress, or a head arriving).
        let idle = conns
            .values()
            .filter(|c| {
                !c.evicting.load(Ordering::Relaxed) && c.in_flight.load(Ordering::SeqCst) == 0
            })
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        if let Some(c) = idle {
            c.evicting.store(true, Ordering::SeqCst);
            c.wake.notify_one();
            return Room::Made;
        }
        // Else the oldest connection whose every request is still receiving its body.
        let reading = conns
            .values()
            .filter(|c| {
                let n = c.in_flight.load(Ordering::SeqCst);
                !c.evicting.load(Ordering::Relaxed)
                    && n > 0
                    && c.reading.load(Ordering::SeqCst) == n
            })
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        if let Some(c) = reading {
            c.evicting.store(true, Ordering::SeqCst);
            c.cutter.cut();
            return Room::Made;
        }
        Room::None
    }

    fn admit(&self, proto: Protocol) -> Option<(u64, Arc<ConnState>)> {
        let mut conns = self.conns.lock().expect("pool lock");
        let room = self.room(&conns);
        let m = &self.metrics;
        let listener = proto.label();
        if !matches!(room, Room::Free) {
            let n = self.at_limit.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_log.lock().expect("log lock");
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    open = conns.len(),
                    limit = self.limits.max_connections,
                    new_connections_at_limit = n,
                    "connection limit reached: closing the longest-idle connections to make room, refusing new ones when every connection is busy"
                );
                self.at_limit.store(0, Ordering::Relaxed);
            }
        }
        if matches!(room, Room::None) {
            m.connections
                .with_label_values(&[listener, "refused"])
                .inc();
            return None;
        }
        let now = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            accepted: now,
            in_flight: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.ms(now)),
            head_started: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
            http2: AtomicBool::new(proto == Protocol::Grpc),
            evicting: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
            cutter: Arc::default(),
        });
        conns.insert(id, state.clone());
        m.connections.with_label_values(&[listener, "served"]).inc();
        m.connections_open.with_label_values(&[listener]).inc();
        Some((id, state))
    }

    fn release(&self, id: u64, proto: Protocol) {
        self.conns.lock().expect("pool lock").remove(&id);
        self.closed.notify_waiters();
        self.metrics
            .connections_open
            .with_label_values(&[proto.label()])
            .dec();
    }

    /// Evicted connections not closed yet.
    fn closing(&self) -> usize {
        self.conns
            .lock()
            .expect("pool lock")
            .values()
            .filter(|c| c.evicting.load(Ordering::Relaxed))
            .count()
    }

    /// Wait (at most `CLOSING_WAIT`) until fewer than `MAX_CLOSING`
    /// evicted connections are still open.
    async fn wait_for_closing(&self) {
        let until = tokio::time::Instant::now() + CLOSING_WAIT;
        loop {
            let closed = self.closed.notified();
            if self.closing() < MAX_CLOSING {
                return;
            }
            if tokio::time::timeout_at(until, closed).await.is_err() {
                return;
            }
        }
    }

    /// Out of file descriptors: close the longest-idle connection, if any.
    fn shed_idle(&self) {
        let conns = self.conns.lock().expect("pool lock");
        if let Some(c) = conns
            .values()
            .filter(|c| {
                !c.evicting.load(Ordering::Relaxed) && c.in_flight.load(Ordering::SeqCst) == 0
            })
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed))
        {
            c.evicting.store(true, Ordering::SeqCst);
            c.wake.notify_one();
        }
    }

    /// When the connection must close for lack of a request, if no request
    /// is in progress; and why.
    fn deadline(&self, c: &ConnState) -> Option<(Instant, &'static str)> {
        if c.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let l = &self.limits;
        let h2 = c.http2.load(Ordering::Relaxed);
        let head = c.head_started.load(Ordering::SeqCst);
        let preface_seen = h2 && head > 0;
        if !(c.served_any.load(Ordering::SeqCst) || preface_seen) {
            // A new connection: its first head (or the HTTP/2 preface) in time.
            return Some((c.accepted + l.header_timeout, "header_timeout"));
        }
        if !h2 && head > 0 {
            return Some((self.at(head) + l.header_timeout, "header_timeout"));
        }
        let idle = self.at(c.idle_since.load(Ordering::SeqCst));
        Some((idle + l.idle_timeout, "idle_timeout"))
    }

    /// Resolves once every connection task has ended.
    async fn drained(&self) {
        loop {
            let done = self.tasks_done.notified();
            if self.tasks.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// Serve `svc` on `listener` until `stop` turns true; then stop accepting,
/// let the connections finish their requests, and return once all have
/// closed (the caller bounds that wait).
pub async fn serve<S, B>(
    listener: TcpListener,
    proto: Protocol,
    svc: S,
    pool: Arc<Pool>,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<DeadlineBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = builder(proto, &pool.limits);
    let mut backoff = Duration::from_millis(5);
    loop {
        pool.wait_for_closing().await;
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(5);
                tcp
            }
            Err(e) => {
                let no_fds = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                pool.metrics
                    .accept_errors
                    .with_label_values(&[proto.label(), if no_fds { "no_fds" } else { "other" }])
                    .inc();
                if no_fds {
                    // Room comes from a connection closing, not from time:
                    // wait for one (briefly), without a growing back-off
                    // that would leave legitimate connections queued.
                    pool.shed_idle();
                    let closed = pool.closed.notified();
                    let _ = tokio::time::timeout(NO_FDS_WAIT, closed).await;
                    continue;
                }
                if is_transient(&e) {
                    continue;
                }
                // Out of descriptors (or worse): wait instead of spinning on accept.
                tracing::warn!(
                    listener = proto.label(),
                    "accept error: {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        let Some((id, state)) = pool.admit(proto) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        pool.tasks.fetch_add(1, Ordering::SeqCst);
        let (pool, svc, builder, stop) = (pool.clone(), svc.clone(), builder.clone(), stop.clone());
        tokio::spawn(async move {
            connection(tcp, proto, svc, &builder, &pool, &state, stop).await;
            pool.release(id, proto);
            if pool.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
                pool.tasks_done.notify_waiters();
            }
        });
    }
    drop(listener);
    pool.drained().await;
}

/// Serve one already-open connection (any byte stream: the fuzz tests use
/// in-memory pipes) exactly as an accepted one, within `pool`'s limits;
/// returns once it has closed. False when the pool refused it.
pub async fn serve_io<S, B, IO>(
    io: IO,
    proto: Protocol,
    svc: S,
    pool: Arc<Pool>,
    stop: watch::Receiver<bool>,
) -> bool
where
    S: Service<Request<DeadlineBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some((id, state)) = pool.admit(proto) else {
        return false;
    };
    let builder = builder(proto, &pool.limits);
    connection(io, proto, svc, &builder, &pool, &state, stop).await;
    pool.release(id, proto);
    true
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn builder(proto: Protocol, l: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The connection task enforces the header timeout itself (hyper's would
    // also count keep-alive idle time); the limit here is only a backstop.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_timeout.max(l.idle_timeout) + Duration::from_secs(1))
        .max_buf_size(64 << 10);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        .keep_alive_interval(l.h2_keepalive_interval)
        .keep_alive_timeout(l.h2_keepalive_timeout)
        .max_header_list_size(l.h2_max_header_list_bytes)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024));
    match proto {
        Protocol::Http => b,
        Protocol::Grpc => b.http2_only(),
    }
}

async fn connection<S, B, IO>(
    tcp: IO,
    proto: Protocol,
    svc: S,
    builder: &auto::Builder<TokioExecutor>,
    pool: &Arc<Pool>,
    state: &Arc<ConnState>,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<DeadlineBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: tcp,
        pool: pool.clone(),
        state: state.clone(),
        sniffed: proto == Protocol::Grpc,
    });
    let handler = {
        let (pool, state) = (pool.clone(), state.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(req, proto, svc.clone(), pool.clone(), state.clone())
        })
    };
    let conn = builder.serve_connection(io, handler);
    tokio::pin!(conn);
    let mut closing = false;
    // Shutdown began on an idle HTTP/1 connection: close it at this time.
    let mut linger: Option<Instant> = None;
    loop {
        let deadline = pool.deadline(state);
        let sleep = async {
            match deadline {
                Some((t, _)) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let lingering = async {
            match linger {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = state.wake.notified() => {
                if state.evicting.load(Ordering::SeqCst) {
                    if state.in_flight.load(Ordering::SeqCst) == 0 {
                        pool.metrics.connections_closed.with_label_values(&[proto.label(), "evicted"]).inc();
                        break;
                    }
                    // A request started meanwhile: it is served, the connection stays.
                    state.evicting.store(false, Ordering::SeqCst);
                }
            }
            _ = sleep => {
                if let Some((t, why)) = pool.deadline(state) {
                    if Instant::now() >= t {
                        pool.metrics.connections_closed.with_label_values(&[proto.label(), why]).inc();
                        break;
                    }
                }
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                state.closing.store(true, Ordering::SeqCst);
                let h1 = proto != Protocol::Grpc && !state.http2.load(Ordering::Relaxed);
                if h1 && state.in_flight.load(Ordering::SeqCst) == 0 {
                    linger = Some(Instant::now() + SHUTDOWN_LINGER);
                } else {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = lingering => {
                linger = None;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One request: its body under the deadline, the answer's body tracked so
/// the connection knows when it is idle again.
async fn handle<S, B>(
    req: Request<Incoming>,
    proto: Protocol,
    svc: S,
    pool: Arc<Pool>,
    state: Arc<ConnState>,
) -> Result<Response<Tracked<B>>, Infallible>
where
    S: Service<Request<DeadlineBody>, Response = Response<B>, Error = Infallible> + Send,
    S::Future: Send,
{
    let arrival = Instant::now();
    state.served_any.store(true, Ordering::SeqCst);
    state.head_started.store(0, Ordering::SeqCst);
    if req.version() == hyper::Version::HTTP_2 {
        state.http2.store(true, Ordering::Relaxed);
    }
    let guard = InFlight::new(state.clone(), pool.clone());
    let budget = request_budget(req.headers(), proto).unwrap_or(pool.limits.default_budget);
    // A budget shorter than any upload (1 ms) is answered `budget_unmeetable`
    // once the body is in, not `body_timeout`: the body gets at least
    // `MIN_BODY_WINDOW`.
    let deadline = arrival + budget.max(MIN_BODY_WINDOW).min(pool.limits.body_timeout);
    let timed_out = Arc::new(AtomicBool::new(false));
    let reading = ReadingGuard::new(&state, req.body().is_end_stream());
    let (parts, body) = req.into_parts();
    let body = DeadlineBody::new(
        body,
        deadline,
        state.cutter.clone(),
        timed_out.clone(),
        proto == Protocol::Grpc,
    )
    .with_guard(reading);
    let Ok(mut resp) = svc.oneshot(Request::from_parts(parts, body)).await;
    let h1 = !state.http2.load(Ordering::Relaxed);
    if timed_out.load(Ordering::SeqCst) {
        pool.metrics
            .body_timeouts
            .with_label_values(&[proto.label()])
            .inc();
    }
    // The rest of a cut body is unread: the connection cannot carry another
    // request; and a server shutting down takes no further ones.
    if h1 && (timed_out.load(Ordering::SeqCst) || state.closing.load(Ordering::SeqCst)) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp.map(|b| Tracked {
        inner: b,
        _guard: guard,
    }))
}

/// The budget a request names: `X-SLA-Ms` (both transports) and the gRPC
/// deadline, the smallest wins. Malformed values are left to the handlers.
fn request_budget(h: &HeaderMap, proto: Protocol) -> Option<Duration> {
    let sla = h
        .get("x-sla-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .and_then(budget_from_ms);
    let grpc = match proto {
        Protocol::Grpc if h.contains_key("grpc-timeout") => {
            crate::grpc::grpc_timeout(&tonic::metadata::MetadataMap::from_headers(h.clone()))
                .ok()
                .flatten()
        }
        _ => None,
    };
    match (sla, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Counts a request in progress on its connection until dropped (with the
/// answer's body, once written).
struct InFlight {
    state: Arc<ConnState>,
    pool: Arc<Pool>,
}

impl InFlight {
    fn new(state: Arc<ConnState>, pool: Arc<Pool>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight { state, pool }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.pool.ms(Instant::now());
        self.state.idle_since.store(now, Ordering::SeqCst);
        if self.state.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.state.wake.notify_one();
        }
    }
}

/// Counts a request whose body is still arriving, until the body ends.
pub struct ReadingGuard(Option<Arc<ConnState>>);

impl ReadingGuard {
    fn new(state: &Arc<ConnState>, complete: bool) -> ReadingGuard {
        if complete {
            return ReadingGuard(None);
        }
        state.reading.fetch_add(1, Ordering::SeqCst);
        ReadingGuard(Some(state.clone()))
    }

    pub(super) fn done(&mut self) {
        if let Some(s) = self.0.take() {
            s.reading.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for ReadingGuard {
    fn drop(&mut self) {
        self.done();
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that keeps its request counted until written.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _guard: InFlight,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, watched for the first byte of a head while the connection
/// is idle (a head that starts must end within the header timeout).
struct Watched<IO> {
    inner: IO,
    pool: Arc<Pool>,
    state: Arc<ConnState>,
    /// Whether the first bytes were looked at (HTTP/2 preface or not).
    sniffed: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if matches!(r, Poll::Ready(Ok(()))) && !got.is_empty() {
            if !self.sniffed {
                self.sniffed = true;
                if got.starts_with(b"PRI ") {
                    self.state.http2.store(true, Ordering::Relaxed);
                }
            }
            let s = &self.state;
            if s.in_flight.load(Ordering::SeqCst) == 0 && s.head_started.load(Ordering::SeqCst) == 0
            {
                s.head_started
                    .store(self.pool.ms(Instant::now()), Ordering::SeqCst);
                s.wake.notify_one();
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max: usize) -> Arc<Pool> {
        let a = ConnArgs {
            max_connections: max,
            ..ConnArgs::default()
        };
        Pool::new(Limits::new(&a, 1000, 1 << 20), Arc::new(Metrics::new()))
    }

    #[test]
    fn the_connection_limit_is_capped_by_the_open_file_limit() {
        let a = ConnArgs::default();
        assert_eq!(Limits::new(&a, 1000, 1024).max_connections, 1024 - 128 - 64);
        assert_eq!(Limits::new(&a, 1000, 1 << 20).max_connections, 10_000);
    }

    #[test]
    fn at_the_limit_idle_goes_first_then_stalled_bodies_never_busy_requests() {
        let p = pool(3);
        let conns: Vec<_> = (0..3).map(|_| p.admit(Protocol::Http).unwrap()).collect();
        let (a, b, c) = (&conns[0].1, &conns[1].1, &conns[2].1);
        // a: a request being worked on; b: a body arriving; c: idle.
        a.in_flight.store(1, Ordering::SeqCst);
        b.in_flight.store(1, Ordering::SeqCst);
        b.reading.store(1, Ordering::SeqCst);
        let (_, e) = p.admit(Protocol::Http).unwrap();
        assert!(c.evicting.load(Ordering::SeqCst), "the idle one makes room");
        assert!(!b.cutter.is_cut());
        e.in_flight.store(1, Ordering::SeqCst);
        // Now the only candidate left is b's stalled body.
        let d = p.admit(Protocol::Grpc).unwrap();
        assert!(b.cutter.is_cut());
        assert!(!a.evicting.load(Ordering::SeqCst));
        // d is busy too: nothing can make room, the next one is refused.
        d.1.in_flight.store(1, Ordering::SeqCst);
        assert!(p.admit(Protocol::Http).is_none());
        let m = &p.metrics;
        assert_eq!(
            m.connections.with_label_values(&["http", "refused"]).get(),
            1
        );
        assert_eq!(
            m.connections.with_label_values(&["grpc", "served"]).get(),
            1
        );
        // Closing one frees its slot.
        p.release(conns[0].0, Protocol::Http);
        assert!(p.admit(Protocol::Http).is_some());
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let p = pool(10);
        let (_, s) = p.admit(Protocol::Http).unwrap();
        let l = p.limits().clone();
        let (t, why) = p.deadline(&s).unwrap();
        assert_eq!((t, why), (s.accepted + l.header_timeout, "header_timeout"));
        // A request in progress: no connection deadline (the body's applies).
        let g = InFlight::new(s.clone(), p.clone());
        s.served_any.store(true, Ordering::SeqCst);
        assert!(p.deadline(&s).is_none());
        drop(g);
        let (t, why) = p.deadline(&s).unwrap();
        assert_eq!(why, "idle_timeout");
        assert!(t > Instant::now() + l.idle_timeout - Duration::from_secs(1));
        // The next head starts: the header timeout runs from its first byte.
        s.head_started.store(p.ms(Instant::now()), Ordering::SeqCst);
        assert_eq!(p.deadline(&s).unwrap().1, "header_timeout");
        // HTTP/2 bytes while idle (pings) do not count as a head.
        s.http2.store(true, Ordering::SeqCst);
        assert_eq!(p.deadline(&s).unwrap().1, "idle_timeout");
    }
}
