//! Connection hygiene and worker faults, on the real server (both listeners,
//! the connection layer, the batcher) over the fake engine, so faults can be
//! injected and no inference time blurs the timeouts.

mod common;

use common::{args, photo};
use reqwest::Client;
use serde_json::Value;
use slimserve::config::ServeArgs;
use slimserve::engine::fake::{FakeEngine, FakeFault};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Fake {
    addr: SocketAddr,
    grpc_addr: SocketAddr,
    engine: Arc<FakeEngine>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Fake {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = Client::new()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Summed over every series the prefix matches.
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn start_fake(args: ServeArgs, fixed: Duration) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let (etx, erx) = std::sync::mpsc::channel();
    let load_args = args.clone();
    let task = tokio::spawn(slimserve::server::serve_with(
        args,
        listener,
        grpc,
        async {
            let _ = rx.await;
        },
        move |metrics| {
            let (engine, svc) = slimserve::testutil::fake_service(&load_args, metrics, fixed)?;
            let _ = etx.send(engine);
            Ok(svc)
        },
    ));
    let client = Client::new();
    for _ in 0..300 {
        if let Ok(r) = client
            .get(format!("http://{addr}/health/ready"))
            .send()
            .await
        {
            if r.status() == 200 {
                return Fake {
                    addr,
                    grpc_addr,
                    engine: erx.recv().unwrap(),
                    stop: Some(tx),
                    task,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fake server did not become ready");
}

/// Read until the server closes the connection (EOF or reset) or `limit`
/// passes; returns what was read and when it closed (None: still open).
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + limit).into(), s.read(&mut buf)).await {
            Err(_) => return (out, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(t0.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read exactly one answer (head and a `content-length` body) off a
/// keep-alive connection.
async fn read_one_response(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-answer");
        out.extend_from_slice(&buf[..n]);
        let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length");
        if out.len() >= end + 4 + len {
            assert_eq!(out.len(), end + 4 + len, "nothing after the answer");
            return out;
        }
    }
}

fn status_and_json(raw: &[u8]) -> (u16, String, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn conn_args() -> ServeArgs {
    let mut a = args(&[]);
    a.default_sla_ms = 20_000;
    a.conn.header_timeout_ms = 400;
    a.conn.idle_timeout_ms = 900;
    a.conn.body_timeout_ms = 600;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_by_the_timeouts() {
    let server = start_fake(conn_args(), Duration::ZERO).await;
    let within = |t: Option<Duration>, lo: u64, hi: u64, what: &str| {
        let t = t.unwrap_or_else(|| panic!("{what}: still open"));
        assert!(
            t >= Duration::from_millis(lo) && t <= Duration::from_millis(hi),
            "{what}: closed after {t:?}, expected {lo}..{hi} ms"
        );
    };

    // A connection that sends nothing, and one that sends half a head.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /classify HTTP/1.1\r\nHost: x\r\nX-SLA")
        .await
        .unwrap();
    let (got, t) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    within(t, 300, 2_000, "silent connection");
    assert!(got.is_empty());
    let (_, t) = read_until_closed(&mut half, Duration::from_secs(5)).await;
    within(t, 0, 2_000, "half a head");

    // Keep-alive: a second request within the idle timeout is served, then
    // the idle connection is closed.
    let mut ka = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..2 {
        ka.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = ka.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, t) = read_until_closed(&mut ka, Duration::from_secs(5)).await;
    within(t, 400, 2_500, "idle keep-alive connection");

    // A head announcing 1 MB, then 2 bytes: the request's own budget cuts the
    // body (300 ms), else the server's body timeout (600 ms); JSON 408, closed.
    for (path, sla, lo, hi) in [
        ("/classify", Some(300), 250, 1_500),
        ("/classify", None, 550, 2_000),
        ("/v2/models/slimserve/infer", Some(300), 250, 1_500),
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let sla = sla.map_or(String::new(), |ms| format!("X-SLA-Ms: {ms}\r\n"));
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n{sla}Content-Length: 1000000\r\n\r\nab"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (got, t) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        within(t, lo, hi, path);
        let (status, head, json) = status_and_json(&got);
        assert_eq!(status, 408, "{path}: {json}");
        assert_eq!(json["kind"], "body_timeout", "{path}: {json}");
        assert!(head.contains("connection: close"), "{head}");
    }

    // The gRPC listener: a connection that never starts HTTP/2 is closed too.
    let mut g = TcpStream::connect(server.grpc_addr).await.unwrap();
    let (_, t) = read_until_closed(&mut g, Duration::from_secs(5)).await;
    within(t, 300, 2_000, "silent gRPC connection");

    let closed = |l: &str, r: &str| {
        format!("slimserve_connections_closed_by_server_total{{listener=\"{l}\",reason=\"{r}\"}}")
    };
    assert!(server.metric(&closed("http", "header_timeout")).await >= 2.0);
    assert!(server.metric(&closed("http", "idle_timeout")).await >= 1.0);
    assert!(server.metric(&closed("grpc", "header_timeout")).await >= 1.0);
    assert!(
        server
            .metric("slimserve_body_timeouts_total{listener=\"http\"}")
            .await
            >= 3.0
    );
    assert!(
        server
            .metric("slimserve_errors_total{kind=\"body_timeout\"}")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_idle_and_stalled_connections_make_room() {
    let mut a = conn_args();
    a.conn.header_timeout_ms = 30_000;
    a.conn.idle_timeout_ms = 30_000;
    a.conn.body_timeout_ms = 30_000;
    a.conn.max_connections = 6;
    let server = start_fake(a, Duration::ZERO).await;
    let png = photo("chelsea.png");
    let classify = |png: Vec<u8>| {
        let url = server.url("/classify");
        async move {
            let t0 = Instant::now();
            // A new client: a new connection each time.
            let r = Client::new()
                .post(url)
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), t0.elapsed())
        }
    };

    // Six silent connections hold every slot; a legitimate client still gets
    // its answer, and the oldest silent connection is the one closed.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, took) = classify(png.clone()).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (_, t) = read_until_closed(&mut silent[0], Duration::from_secs(2)).await;
    assert!(t.is_some(), "the longest-idle connection was not evicted");
    assert!(
        server
            .metric("slimserve_connections_closed_by_server_total{listener=\"http\",reason=\"evicted\"}")
            .await
            >= 1.0
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Six bodies that stall: the oldest is cut with a JSON 408 to make room.
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\nab")
            .await
            .unwrap();
        stalled.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, took) = classify(png.clone()).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (got, t) = read_until_closed(&mut stalled[0], Duration::from_secs(2)).await;
    assert!(t.is_some(), "the oldest stalled body was not cut");
    let (status, _, json) = status_and_json(&got);
    assert_eq!((status, json["kind"].as_str()), (408, Some("body_timeout")));
    assert!(
        server
            .metric("slimserve_connections_total{listener=\"http\",outcome=\"served\"}")
            .await
            >= 14.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_faults_answer_json_500_replace_the_worker_and_readiness_follows() {
    let mut a = args(&[]);
    a.workers = Some(2);
    let server = start_fake(a, Duration::from_millis(1)).await;
    let c = Client::new();
    let classify = || async {
        let r = c
            .post(server.url("/classify"))
            .header("content-type", "image/png")
            .body(photo("chelsea.png"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).expect("JSON");
        (status, v)
    };
    let ready = || async {
        c.get(server.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(classify().await.0, 200);

    // One panic, one error: that request gets a JSON 500; the server goes on.
    for (fault, kind) in [(FakeFault::Panic, "panic"), (FakeFault::Error, "error")] {
        server.engine.inject(fault, 1);
        let (status, v) = classify().await;
        assert_eq!(
            (status, v["kind"].as_str()),
            (500, Some("inference_failed")),
            "{v}"
        );
        let mut ok = false;
        for _ in 0..100 {
            if classify().await.0 == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "no answer after a {kind}");
        assert_eq!(ready().await, 200);
        let m = format!("slimserve_worker_faults_total{{kind=\"{kind}\",variant=");
        assert!(server.metric(&m).await >= 1.0, "{m}");
    }

    // An engine that keeps failing: once no worker serves, requests are
    // refused (503) and the server is not ready, over HTTP and gRPC health.
    server.engine.inject(FakeFault::Panic, usize::MAX);
    let mut seen = Vec::new();
    for _ in 0..200 {
        let (status, v) = classify().await;
        seen.push(status);
        if status == 503 {
            assert_eq!(v["kind"], "inference_unavailable", "{v}");
            break;
        }
        assert_eq!(status, 500, "{v}");
    }
    assert_eq!(seen.last(), Some(&503), "{seen:?}");
    assert_eq!(ready().await, 503);
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(ch);
    let status = || {
        let mut h = health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let mut s = 0;
    for _ in 0..40 {
        s = status().await;
        if s == not_serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s, not_serving);
    assert!(server.metric("slimserve_workers_serving").await == 0.0);

    // Healed: the replacements' probes pass and the server is ready again.
    server.engine.heal();
    let mut back = false;
    for _ in 0..200 {
        if ready().await == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "not ready again after healing");
    assert_eq!(classify().await.0, 200);
    for _ in 0..40 {
        s = status().await;
        if s == serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s, serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_accepted_requests_and_refuses_new_connections() {
    let mut a = args(&[]);
    a.shutdown_timeout_secs = 10;
    let mut server = start_fake(a, Duration::from_millis(300)).await;
    let c = Client::new();
    let png = photo("chelsea.png");
    let mut inflight = Vec::new();
    for _ in 0..4 {
        let req = c
            .post(server.url("/classify"))
            .header("content-type", "image/png")
            .header("x-sla-ms", "5000")
            .body(png.clone())
            .send();
        inflight.push(tokio::spawn(req));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    for r in inflight {
        let r = r.await.unwrap().expect("an answer, not a reset");
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = TcpStream::connect(server.addr).await;
    assert!(
        refused.is_err(),
        "new connections are refused after SIGTERM"
    );
    let done = tokio::time::timeout(Duration::from_secs(10), &mut server.task).await;
    done.expect("exits within the shutdown timeout")
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// A keep-alive connection that is idle when shutdown begins is not cut at
/// once: a request the client sends on it in the next moment gets an answer
/// (a clean `503 shutting_down` with `connection: close`) instead of a
/// closed connection, and a connection that stays idle is closed after the
/// linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_request_sent_on_an_idle_keep_alive_connection() {
    let mut a = args(&[]);
    a.shutdown_timeout_secs = 10;
    let mut server = start_fake(a, Duration::from_millis(20)).await;
    let png = photo("chelsea.png");
    let request = |close: bool| {
        let mut r = format!(
            "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-SLA-Ms: 5000\r\nContent-Length: {}\r\n{}\r\n",
            png.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        r.extend_from_slice(&png);
        r
    };
    // Two connections, each served once and then idle.
    let mut used = TcpStream::connect(server.addr).await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    for s in [&mut used, &mut idle] {
        s.write_all(&request(false)).await.unwrap();
        let raw = read_one_response(s).await;
        assert!(raw.starts_with(b"HTTP/1.1 200"), "first answer");
    }
    let stopped = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    used.write_all(&request(false)).await.unwrap();
    let (raw, closed) = read_until_closed(&mut used, Duration::from_secs(5)).await;
    let (status, head, json) = status_and_json(&raw);
    assert_eq!(
        (status, json["kind"].as_str()),
        (503, Some("shutting_down")),
        "the request sent after shutdown began is answered, refused cleanly: {json}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed.is_some(), "and the connection then ends");
    let (rest, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(rest.is_empty());
    assert!(closed.is_some(), "the idle one is closed");
    let after = stopped.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "the idle one closes after the linger, not at once: {after:?}"
    );
    let done = tokio::time::timeout(Duration::from_secs(10), &mut server.task).await;
    done.expect("exits within the shutdown timeout")
        .unwrap()
        .unwrap();
}

/// A PNG that takes a while to decode (36 megapixels, under the 40 MP
/// limit) but is small on the wire (a gradient compresses well).
fn slow_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(6000, 6000, |x, y| {
        image::Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            ((x / 16 + y / 16) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// Under overload the wait for a preprocessing slot is part of the budget:
/// a request whose deadline passes while another image holds the only slot
/// is refused without its image being decoded (`504 deadline_expired` at
/// its deadline, or `503 budget_unmeetable` if the slot frees first and the
/// preprocessing estimate no longer fits), and the request holding the slot
/// is still answered. Before, it waited, was decoded, then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_preprocessing_slot_ends_at_the_deadline() {
    let mut a = args(&[]);
    a.preprocess_slots = Some(1);
    a.max_body_bytes = 32 << 20;
    let server = start_fake(a, Duration::from_millis(1)).await;
    let big = slow_png();
    assert!(big.len() < 32 << 20, "{} bytes", big.len());
    let c = Client::new();
    let before = server
        .metric("slimserve_preprocess_duration_seconds_count")
        .await;
    let first = tokio::spawn(
        c.post(server.url("/classify"))
            .header("content-type", "image/png")
            .header("x-sla-ms", "30000")
            .body(big)
            .send(),
    );
    // The first holds the slot for its 36-megapixel decode (> 100 ms here,
    // more on slower machines) when the second arrives.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let t0 = Instant::now();
    let second = c
        .post(server.url("/classify"))
        .header("content-type", "image/png")
        .header("x-sla-ms", "30")
        .body(photo("chelsea.png"))
        .send()
        .await
        .unwrap();
    let took = t0.elapsed();
    let status = second.status().as_u16();
    let body: Value = second.json().await.unwrap();
    assert!(
        (status == 504 && body["kind"] == "deadline_expired")
            || (status == 503 && body["kind"] == "budget_unmeetable"),
        "{status} {body}"
    );
    assert!(
        took < Duration::from_secs(5),
        "refused promptly, took {took:?}"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    // Only the first image was decoded.
    let after = server
        .metric("slimserve_preprocess_duration_seconds_count")
        .await;
    assert_eq!(after - before, 1.0);
}
