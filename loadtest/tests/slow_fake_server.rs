//! Coordinated omission: against a server that answers one request at a
//! time, 20 ms each (capacity 50 req/s), an open-loop generator offered
//! 75 req/s must see latency grow with the backlog, measured from each
//! request's scheduled time, while a closed loop (one worker) sees ~20 ms
//! and hides the queue entirely.

mod common;
use common::{f, out_dir, run_loadtest};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

const SERVICE: Duration = Duration::from_millis(20);

/// A keep-alive HTTP/1 server on 127.0.0.1 that serves requests serially.
fn start_slow_server() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let lock = one_at_a_time.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let lock = lock.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            let _g = lock.lock().await;
                            tokio::time::sleep(SERVICE).await;
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("x-variant", "fake")
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

#[test]
fn open_loop_sees_the_backlog_closed_loop_hides_it() {
    let target = start_slow_server();
    let common = [
        "--target",
        &target,
        "--no-server-api",
        "--scenario",
        "pinned:fake",
        "--sla-ms",
        "100",
        "--warmup",
        "0s",
        "--duration",
        "2s",
        "--cooldown",
        "0s",
    ];

    // below capacity: no backlog, latency ≈ service time
    let out = out_dir("below");
    let below = run_loadtest(
        &[&common[..], &["--arrival", "constant", "--rates", "25"]].concat(),
        &out,
    );
    let s = &below["steps"][0];
    assert!(
        f(s, "latency_ms.p99") < 80.0,
        "below capacity p99 {}",
        f(s, "latency_ms.p99")
    );

    // above capacity, open loop: the generator keeps its schedule...
    let out = out_dir("open");
    let open = run_loadtest(
        &[&common[..], &["--arrival", "constant", "--rates", "75"]].concat(),
        &out,
    );
    let s = &open["steps"][0];
    assert!(
        (f(s, "achieved_rps") - 75.0).abs() < 75.0 * 0.1,
        "achieved {}",
        f(s, "achieved_rps")
    );
    assert!(
        f(s, "send_lag_ms.p99") < 20.0,
        "generator lag {}",
        f(s, "send_lag_ms.p99")
    );
    // ...and the latency it reports grows with the backlog: 150 arrivals in 2 s,
    // 50 served per second, so the last waits ~1 s.
    assert!(
        f(s, "latency_ms.max") > 700.0,
        "open-loop max {}",
        f(s, "latency_ms.max")
    );
    assert!(
        f(s, "latency_ms.p90") > 400.0,
        "open-loop p90 {}",
        f(s, "latency_ms.p90")
    );
    assert!(
        f(s, "throughput_rps") < 60.0,
        "throughput {}",
        f(s, "throughput_rps")
    );
    assert!(f(s, "sla_attainment_pct") < 50.0);

    // closed loop, one worker: every request waits only for its own service time
    let out = out_dir("closed");
    let closed = run_loadtest(
        &[&common[..], &["--arrival", "closed", "--concurrency", "1"]].concat(),
        &out,
    );
    let s = &closed["steps"][0];
    assert!(
        f(s, "latency_ms.p99") < 80.0,
        "closed-loop p99 {}",
        f(s, "latency_ms.p99")
    );
    assert!(
        (f(s, "throughput_rps") - 50.0).abs() < 10.0,
        "closed throughput {}",
        f(s, "throughput_rps")
    );
    assert!(f(s, "sla_attainment_pct") > 95.0);
}
