//! `soak`: a bounded, loopback-only soak of a running slimserve.
//!
//! - `soak capacity`: closed loop (N clients) on `/classify` pinned to one
//!   variant for a few seconds; prints the answers per second.
//! - `soak run`: open-loop Poisson arrivals at `--rate`, mixed budgets, plus
//!   a share of hostile bodies and of slow clients, for `--duration`;
//!   samples the server's resident memory and readiness, compares the
//!   server's `/metrics` counts with what the clients saw, optionally sends
//!   SIGTERM to the server mid-run (`--sigterm-at`), and writes a JSON
//!   summary with the acceptance checks.
//!
//! Every request goes to `--target`, which must be a loopback address.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use loadtest::server::{parse_text, Sample};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
#[command(name = "soak", about = "Bounded loopback soak of a running slimserve")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop capacity of one variant (answers per second).
    Capacity {
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        #[arg(long, default_value = "full")]
        variant: String,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value = "models/testdata")]
        images: PathBuf,
    },
    /// Open-loop soak with hostile bodies and slow clients.
    Run(RunArgs),
    /// Hold many idle and slow connections from one client while timing
    /// legitimate requests on new connections.
    Conns {
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Reopen every hostile connection the server closes.
        #[arg(long)]
        reconnect: bool,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value = "models/testdata")]
        images: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Legitimate requests per second (Poisson).
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Budgets (X-SLA-Ms) drawn uniformly per request.
    #[arg(long, value_delimiter = ',', default_value = "50,100,300,1000")]
    budgets: Vec<u64>,
    /// Extra arrivals, as a share of the rate, that are hostile bodies.
    #[arg(long, default_value_t = 0.05)]
    hostile_share: f64,
    /// Extra arrivals, as a share of the rate, that are slow clients.
    #[arg(long, default_value_t = 0.01)]
    slow_share: f64,
    /// The server's pid: resident memory sampling, and SIGTERM.
    #[arg(long)]
    pid: u32,
    /// Send SIGTERM to the server this many seconds into the run.
    #[arg(long)]
    sigterm_at: Option<f64>,
    #[arg(long, default_value = "models/testdata")]
    images: PathBuf,
    #[arg(long, default_value = "soak.json")]
    out: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = raise_nofile();
    match Cli::parse().cmd {
        Cmd::Capacity {
            target,
            variant,
            concurrency,
            seconds,
            images,
        } => capacity(target, &variant, concurrency, seconds, &images).await,
        Cmd::Run(a) => run(a).await,
        Cmd::Conns {
            target,
            connections,
            seconds,
            reconnect,
            pid,
            images,
        } => conns(target, connections, seconds, reconnect, pid, &images).await,
    }
}

fn raise_nofile() -> std::io::Result<()> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn check_loopback(t: &SocketAddr) -> Result<()> {
    if !t.ip().is_loopback() {
        bail!("soak only targets loopback addresses, not {t}");
    }
    Ok(())
}

fn images(dir: &std::path::Path) -> Result<Vec<(Vec<u8>, &'static str)>> {
    let imgs = loadtest::gen::load_images(dir)?;
    Ok(imgs
        .into_iter()
        .map(|i| (i.bytes.to_vec(), i.content_type))
        .collect())
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(20))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn capacity(
    target: SocketAddr,
    variant: &str,
    n: usize,
    seconds: f64,
    dir: &std::path::Path,
) -> Result<()> {
    check_loopback(&target)?;
    let imgs = Arc::new(images(dir)?);
    let c = client()?;
    let url = format!("http://{target}/classify");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..n {
        let (c, url, imgs, variant) = (c.clone(), url.clone(), imgs.clone(), variant.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let mut i = w;
            while Instant::now() < end {
                let (b, t) = &imgs[i % imgs.len()];
                i += 1;
                let r = c
                    .post(&url)
                    .header("content-type", *t)
                    .header("x-variant", &variant)
                    .header("x-sla-ms", "10000")
                    .body(b.clone())
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == 200 && r.bytes().await.is_ok() {
                        ok += 1;
                    }
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    println!("{:.1}", total as f64 / seconds);
    Ok(())
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// By status code, answers to HTTP requests that reached a handler.
    status: BTreeMap<u16, u64>,
    /// By error kind (from the JSON body).
    kinds: BTreeMap<String, u64>,
    /// Answers that were not 200 / JSON 4xx / 503 / 504.
    bad_answers: Vec<String>,
    /// 200 answers whose server-side total time exceeded their budget.
    late_by_server_clock: u64,
    max_server_over_budget_ms: f64,
    /// Connection refused at connect (after SIGTERM: the clean refusal).
    refused: u64,
    /// Sent, but the connection ended without an answer (reset, closed).
    no_answer: u64,
    no_answer_before_sigterm: u64,
    client_timeouts: u64,
    legit: u64,
    hostile: u64,
    slow: BTreeMap<String, u64>,
    /// Slow clients: how long until the server closed or answered, ms.
    slow_closed_ms: BTreeMap<String, Vec<f64>>,
    ok_latency_ms: Vec<f64>,
}

fn count_answer(seen: &mut Seen, status: u16, ctype: &str, body: &[u8], what: &str) {
    *seen.status.entry(status).or_default() += 1;
    if status == 200 {
        return;
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let kind = json
        .as_ref()
        .and_then(|v| v["kind"].as_str())
        .map(str::to_owned);
    let allowed = (400..500).contains(&status) || status == 503 || status == 504;
    match kind {
        Some(k) if allowed && ctype.starts_with("application/json") => {
            *seen.kinds.entry(k).or_default() += 1
        }
        _ => seen.bad_answers.push(format!(
            "{what}: {status} {ctype} {}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        )),
    }
}

#[derive(Clone, Copy, Debug)]
enum Hostile {
    Truncated,
    RandomBytes,
    Bomb,
    WrongType,
    BadHeader,
    UnknownVariant,
    Oversize,
}

const HOSTILE: [Hostile; 7] = [
    Hostile::Truncated,
    Hostile::RandomBytes,
    Hostile::Bomb,
    Hostile::WrongType,
    Hostile::BadHeader,
    Hostile::UnknownVariant,
    Hostile::Oversize,
];

/// A PNG whose header claims 30000x30000 pixels.
fn bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32(kind);
        crc = crc32_update(crc, data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&(!crc).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    crc32_update(0xffff_ffff, data)
}

fn crc32_update(mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    c
}

#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Half a request head, then nothing: closed by the header timeout.
    HalfHead,
    /// A head announcing 1 MB and 2 bytes of it: 408 at the request's deadline.
    StalledBody,
    /// One request, then an idle keep-alive connection: closed by the idle timeout.
    Idle,
}

impl Slow {
    fn name(self) -> &'static str {
        match self {
            Slow::HalfHead => "half_head",
            Slow::StalledBody => "stalled_body",
            Slow::Idle => "idle_keepalive",
        }
    }
}

async fn read_all(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(t0 + limit, s.read(&mut buf)).await {
            Err(_) => return (out, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(t0.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn split_response(raw: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, ctype, body.as_bytes().to_vec()))
}

async fn slow_client(target: SocketAddr, kind: Slow, seen: Arc<Mutex<Seen>>) {
    let Ok(mut s) = TcpStream::connect(target).await else {
        seen.lock().unwrap().refused += 1;
        return;
    };
    let t0 = Instant::now();
    let head: &[u8] = match kind {
        Slow::HalfHead => b"POST /classify HTTP/1.1\r\nHost: x\r\nX-SLA",
        Slow::StalledBody => b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-SLA-Ms: 300\r\nContent-Length: 1000000\r\n\r\nab",
        Slow::Idle => b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    if s.write_all(head).await.is_err() {
        return;
    }
    let (raw, closed) = read_all(&mut s, Duration::from_secs(120)).await;
    let mut seen = seen.lock().unwrap();
    *seen.slow.entry(kind.name().into()).or_default() += 1;
    if let Some(t) = closed {
        seen.slow_closed_ms
            .entry(kind.name().into())
            .or_default()
            .push(t.as_secs_f64() * 1e3);
    } else {
        seen.slow_closed_ms
            .entry(format!("{}_still_open_after_120s", kind.name()))
            .or_default()
            .push(t0.elapsed().as_secs_f64() * 1e3);
    }
    if matches!(kind, Slow::StalledBody) {
        match split_response(&raw) {
            Some((status, ctype, body)) => {
                count_answer(&mut seen, status, &ctype, &body, "stalled body")
            }
            None => seen.no_answer += 1,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn legit(
    c: reqwest::Client,
    url: String,
    body: Vec<u8>,
    ctype: &'static str,
    budget: u64,
    scheduled: Instant,
    seen: Arc<Mutex<Seen>>,
    sigterm: Arc<Mutex<Option<Instant>>>,
    hostile: Option<Hostile>,
) {
    let mut body = body;
    let (mut ctype, mut sla) = (ctype, budget.to_string());
    match hostile {
        Some(Hostile::Truncated) => body.truncate(body.len() / 3),
        Some(Hostile::RandomBytes) => {
            let mut r = rand::rngs::StdRng::seed_from_u64(budget ^ body.len() as u64);
            body = (0..4096).map(|_| r.random()).collect();
        }
        Some(Hostile::Bomb) => {
            body = bomb();
            ctype = "image/png";
        }
        Some(Hostile::WrongType) => ctype = "text/plain",
        Some(Hostile::BadHeader) => sla = "soon".into(),
        Some(Hostile::Oversize) => body = vec![0u8; 17 << 20],
        Some(Hostile::UnknownVariant) | None => {}
    }
    let mut rb = c
        .post(&url)
        .header("content-type", ctype)
        .header("x-sla-ms", sla);
    if let Some(Hostile::UnknownVariant) = hostile {
        rb = rb.header("x-variant", "huge");
    }
    let r = rb.body(body).send().await;
    let mut answer = None;
    let mut err = None;
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            match resp.bytes().await {
                Ok(b) => answer = Some((status, ctype, b)),
                Err(e) => err = Some(e),
            }
        }
        Err(e) => err = Some(e),
    }
    let took = scheduled.elapsed();
    let mut seen = seen.lock().unwrap();
    if hostile.is_some() {
        seen.hostile += 1;
    } else {
        seen.legit += 1;
    }
    match (answer, err) {
        (Some((status, ctype, body)), _) => {
            if status == 200 && hostile.is_none() {
                seen.ok_latency_ms.push(took.as_secs_f64() * 1e3);
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let total = v["timings"]["total_ms"].as_f64().unwrap_or(0.0);
                    if total > budget as f64 {
                        seen.late_by_server_clock += 1;
                        seen.max_server_over_budget_ms =
                            seen.max_server_over_budget_ms.max(total - budget as f64);
                    }
                }
            }
            count_answer(&mut seen, status, &ctype, &body, &format!("{hostile:?}"));
        }
        (None, Some(e)) => {
            let connect = e.is_connect();
            if e.is_timeout() {
                seen.client_timeouts += 1;
            } else if connect {
                seen.refused += 1;
            } else {
                seen.no_answer += 1;
                if sigterm.lock().unwrap().is_none() {
                    seen.no_answer_before_sigterm += 1;
                }
            }
        }
        (None, None) => unreachable!(),
    }
}

fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

async fn scrape(c: &reqwest::Client, target: SocketAddr) -> Option<Vec<Sample>> {
    let t = c
        .get(format!("http://{target}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(parse_text(&t))
}

fn sum_by(samples: &[Sample], name: &str, key: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (n, labels, v) in samples {
        if n == name {
            if let Some(k) = labels.get(key) {
                *out.entry(k.clone()).or_default() += v;
            }
        }
    }
    out
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)).round() as u64,
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn run(a: RunArgs) -> Result<()> {
    check_loopback(&a.target)?;
    let imgs = Arc::new(images(&a.images)?);
    let c = client()?;
    let url = format!("http://{}/classify", a.target);
    let before = scrape(&c, a.target)
        .await
        .context("scraping /metrics before the run")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sigterm: Arc<Mutex<Option<Instant>>> = Arc::default();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);

    // Resident memory and readiness, sampled every 5 s / 1 s.
    let rss: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let not_ready: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let sampler = {
        let (rss, not_ready, c, sigterm) =
            (rss.clone(), not_ready.clone(), c.clone(), sigterm.clone());
        let (pid, target) = (a.pid, a.target);
        tokio::spawn(async move {
            let mut tick = 0u64;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tick += 1;
                let t = start.elapsed().as_secs_f64();
                if sigterm.lock().unwrap().is_some() {
                    continue;
                }
                if tick.is_multiple_of(5) {
                    if let Some(mb) = rss_mb(pid) {
                        rss.lock().unwrap().push((t, mb));
                    }
                }
                let r = c
                    .get(format!("http://{target}/health/ready"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => not_ready.lock().unwrap().push((t, r.status().to_string())),
                    Err(e) => not_ready.lock().unwrap().push((t, e.to_string())),
                }
            }
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let total_rate = a.rate * (1.0 + a.hostile_share + a.slow_share);
    let gap = Exp::new(total_rate).context("rate must be positive")?;
    let mut next = start;
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let mut signalled = false;
    while next < end {
        tokio::time::sleep_until(next).await;
        if let Some(at) = a.sigterm_at {
            if !signalled && start.elapsed().as_secs_f64() >= at {
                signalled = true;
                *sigterm.lock().unwrap() = Some(Instant::now());
                // SAFETY: kill(2) on the server's pid given on the command line.
                unsafe {
                    libc::kill(a.pid as i32, libc::SIGTERM);
                }
                eprintln!("SIGTERM sent at {:.1} s", start.elapsed().as_secs_f64());
            }
        }
        let u: f64 = rng.random();
        let pick = n as usize;
        n += 1;
        if u < a.slow_share / (1.0 + a.hostile_share + a.slow_share) {
            let kind = [Slow::HalfHead, Slow::StalledBody, Slow::Idle][pick % 3];
            tasks.spawn(slow_client(a.target, kind, seen.clone()));
        } else {
            let hostile = (u
                < (a.slow_share + a.hostile_share) / (1.0 + a.hostile_share + a.slow_share))
                .then(|| HOSTILE[pick % HOSTILE.len()]);
            let (b, t) = &imgs[pick % imgs.len()];
            let budget = a.budgets[rng.random_range(0..a.budgets.len())];
            tasks.spawn(legit(
                c.clone(),
                url.clone(),
                b.clone(),
                t,
                budget,
                next,
                seen.clone(),
                sigterm.clone(),
                hostile,
            ));
        }
        next += Duration::from_secs_f64(gap.sample(&mut rng));
        while tasks.try_join_next().is_some() {}
    }
    let lag = Instant::now().saturating_duration_since(end);
    while tasks.join_next().await.is_some() {}
    let _ = sampler.await;
    let after = if a.sigterm_at.is_none() {
        scrape(&c, a.target).await
    } else {
        None
    };

    let mut seen = seen.lock().unwrap();
    let rss = rss.lock().unwrap().clone();
    let at2 = rss.iter().find(|(t, _)| *t >= 120.0).map(|x| x.1);
    let max_rss = rss.iter().map(|x| x.1).fold(0.0, f64::max);
    let server = after.as_ref().map(|after| {
        let req = delta(
            &sum_by(after, "slimserve_requests_total", "status"),
            &sum_by(&before, "slimserve_requests_total", "status"),
        );
        let kinds = delta(
            &sum_by(after, "slimserve_errors_total", "kind"),
            &sum_by(&before, "slimserve_errors_total", "kind"),
        );
        let shed = delta(
            &sum_by(after, "slimserve_shed_total", "reason"),
            &sum_by(&before, "slimserve_shed_total", "reason"),
        );
        (req, kinds, shed)
    });
    let client_status: BTreeMap<String, u64> = seen
        .status
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    // The server also counts the in-flight 504s its timer fired, by kind
    // `deadline_expired_in_flight` next to `deadline_expired`: compare the sums.
    let client_kinds = seen.kinds.clone();
    let (status_match, kinds_match) = match &server {
        Some((req, kinds, _)) => {
            let mut k = kinds.clone();
            k.remove("deadline_expired_in_flight");
            (req == &client_status, k == client_kinds)
        }
        None => (false, false),
    };
    let mut lat = seen.ok_latency_ms.clone();
    let out = json!({
        "rate": a.rate,
        "duration_s": a.duration,
        "budgets_ms": a.budgets,
        "hostile_share": a.hostile_share,
        "slow_share": a.slow_share,
        "sent": n,
        "legit": seen.legit,
        "hostile": seen.hostile,
        "slow_clients": seen.slow,
        "slow_closed_ms_p50": seen.slow_closed_ms.iter_mut().map(|(k, v)| (k.clone(), quantile(v, 0.5))).collect::<BTreeMap<_,_>>(),
        "slow_closed_ms_max": seen.slow_closed_ms.iter_mut().map(|(k, v)| (k.clone(), quantile(v, 1.0))).collect::<BTreeMap<_,_>>(),
        "client_status": client_status,
        "client_kinds": client_kinds,
        "bad_answers": seen.bad_answers.len(),
        "bad_answer_examples": seen.bad_answers.iter().take(10).collect::<Vec<_>>(),
        "late_by_server_clock": seen.late_by_server_clock,
        "max_server_over_budget_ms": seen.max_server_over_budget_ms,
        "ok_latency_ms_p50": quantile(&mut lat, 0.5),
        "ok_latency_ms_p99": quantile(&mut lat, 0.99),
        "refused_at_connect": seen.refused,
        "no_answer": seen.no_answer,
        "no_answer_before_sigterm": seen.no_answer_before_sigterm,
        "client_timeouts": seen.client_timeouts,
        "generator_lag_at_end_ms": lag.as_secs_f64() * 1e3,
        "rss_mb": rss.iter().map(|x| json!([x.0, x.1])).collect::<Vec<_>>(),
        "rss_mb_at_2min": at2,
        "rss_mb_max": max_rss,
        "rss_max_over_2min": at2.map(|v| max_rss / v),
        "not_ready_samples": not_ready.lock().unwrap().len(),
        "not_ready_examples": not_ready.lock().unwrap().iter().take(5).map(|x| format!("{:.0}s {}", x.0, x.1)).collect::<Vec<_>>(),
        "server_requests_by_status": server.as_ref().map(|s| s.0.clone()),
        "server_errors_by_kind": server.as_ref().map(|s| s.1.clone()),
        "server_shed_by_reason": server.as_ref().map(|s| s.2.clone()),
        "metrics_match_status": status_match,
        "metrics_match_kinds": kinds_match,
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// One hostile connection: idle, half a head, or a stalled body; returns
/// how long the server kept it open (None: still open at `until`).
async fn hold(target: SocketAddr, kind: usize, until: Instant) -> Option<Duration> {
    let mut s = TcpStream::connect(target).await.ok()?;
    let t0 = Instant::now();
    let head: &[u8] = match kind % 3 {
        0 => b"",
        1 => b"POST /classify HTTP/1.1\r\nHost: x\r\nX-SLA",
        _ => b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-SLA-Ms: 60000\r\nContent-Length: 1000000\r\n\r\nab",
    };
    if s.write_all(head).await.is_err() {
        return Some(t0.elapsed());
    }
    let (_, closed) = read_all(&mut s, until.saturating_duration_since(Instant::now())).await;
    closed
}

async fn conns(
    target: SocketAddr,
    n: usize,
    seconds: f64,
    reconnect: bool,
    pid: u32,
    dir: &std::path::Path,
) -> Result<()> {
    check_loopback(&target)?;
    let imgs = images(dir)?;
    let (png, ctype) = imgs[0].clone();
    let rss0 = rss_mb(pid).unwrap_or(0.0);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let closed_ms: Arc<Mutex<Vec<(usize, f64)>>> = Arc::default();
    let mut holders = tokio::task::JoinSet::new();
    for i in 0..n {
        let (opened, closed_ms) = (opened.clone(), closed_ms.clone());
        holders.spawn(async move {
            loop {
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match hold(target, i, until).await {
                    Some(t) => closed_ms
                        .lock()
                        .unwrap()
                        .push((i % 3, t.as_secs_f64() * 1e3)),
                    None => return,
                }
                if !reconnect || Instant::now() >= until {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    // Legitimate requests, each on a new connection, every 500 ms.
    let mut legit = Vec::new();
    let mut rss = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    while Instant::now() + Duration::from_secs(1) < until {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let t0 = Instant::now();
        let r = c
            .post(format!("http://{target}/classify"))
            .header("content-type", ctype)
            .header("x-sla-ms", "1000")
            .body(png.clone())
            .send()
            .await;
        let status = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s.to_string()
            }
            Err(e) => format!("error: {e}"),
        };
        legit.push((
            start.elapsed().as_secs_f64(),
            t0.elapsed().as_secs_f64() * 1e3,
            status,
        ));
        rss.push(rss_mb(pid).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    holders.abort_all();
    while holders.join_next().await.is_some() {}
    let mut lat: Vec<f64> = legit.iter().map(|x| x.1).collect();
    let ok = legit.iter().filter(|x| x.2 == "200").count();
    let closed = closed_ms.lock().unwrap().clone();
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (k, t) in closed {
        by_kind
            .entry(["idle", "half_head", "stalled_body"][k])
            .or_default()
            .push(t);
    }
    let out = json!({
        "connections": n,
        "reconnect": reconnect,
        "hostile_connections_opened": opened.load(std::sync::atomic::Ordering::Relaxed),
        "closed_by_server": by_kind.iter_mut().map(|(k, v)| (k.to_string(), json!({
            "count": v.len(), "p50_ms": quantile(v, 0.5), "max_ms": quantile(v, 1.0)}))).collect::<BTreeMap<_,_>>(),
        "legit_requests": legit.len(),
        "legit_200": ok,
        "legit_ms_p50": quantile(&mut lat, 0.5),
        "legit_ms_max": quantile(&mut lat, 1.0),
        "legit_not_200": legit.iter().filter(|x| x.2 != "200").map(|x| format!("{:.1}s {}", x.0, x.2)).take(10).collect::<Vec<_>>(),
        "rss_mb_before": rss0,
        "rss_mb_max": rss.iter().copied().fold(0.0, f64::max),
        "rss_mb_end": rss_mb(pid),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
