//! Shared by the fuzz targets (`tests/fuzz_*.rs`): the real HTTP app and
//! gRPC service over the fake engine (no inference cost), seed images of
//! every accepted format, byte mutations, the invariant, and case counts.
//!
//! Cases per target: the target's CI default, or `SLIMSERVE_FUZZ_CASES`
//! (the long run: `loadtest/soak/fuzz.sh`).
#![allow(dead_code)] // each target uses its own part

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use slimserve::config::{ModelArgs, ServeArgs};
use slimserve::http::AppState;
use slimserve::manifest::bundled_models_dir;
use slimserve::metrics::Metrics;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The harness's `--max-body-bytes`.
#[allow(dead_code)] // not every fuzz target reads it
pub const MAX_BODY: usize = 1 << 20;

pub fn args() -> ServeArgs {
    use clap::Parser;
    let cli = slimserve::config::Cli::try_parse_from([
        "slimserve",
        "serve",
        "--workers",
        "2",
        "--warmup-runs",
        "1",
        "--max-body-bytes",
        "1048576", // MAX_BODY
        "--max-pixels",
        "4000000",
        "--queue-capacity",
        "1024",
    ])
    .unwrap();
    let slimserve::config::Command::Serve(mut a) = cli.command else {
        unreachable!()
    };
    a.model = ModelArgs {
        kernels: slimserve::engine::tract::KernelChoice::Fast,
        ..ModelArgs::bundled(&[])
    };
    a.conn.header_timeout_ms = 500;
    a.conn.body_timeout_ms = 500;
    a
}

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub state: AppState,
    pub app: axum::Router,
    pub variants: Vec<String>,
    pub args: ServeArgs,
}

pub fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let args = args();
    let metrics = Arc::new(Metrics::new());
    let (_, svc) =
        slimserve::testutil::fake_service(&args, metrics.clone(), Duration::ZERO).unwrap();
    let variants = svc.specs.iter().map(|s| s.name.clone()).collect();
    let state = AppState::new(metrics, args.max_body_bytes);
    let _ = state.service.set(svc);
    let app = slimserve::http::app(state.clone());
    Harness {
        rt,
        state,
        app,
        variants,
        args,
    }
}

/// Cases for a target: `SLIMSERVE_FUZZ_CASES` or the CI default.
pub fn config(ci_cases: u32) -> Config {
    let cases = std::env::var("SLIMSERVE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci_cases);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Counts the cases a target ran and reports them (and the process's peak
/// resident memory) when dropped at the end of the test.
pub struct Tally {
    name: &'static str,
    pub n: AtomicU64,
    start: Instant,
}

impl Tally {
    pub fn new(name: &'static str) -> Tally {
        Tally {
            name,
            n: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    pub fn one(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 10)
}

impl Drop for Tally {
    fn drop(&mut self) {
        let peak = peak_rss_mb();
        println!(
            "fuzz {}: {} cases, 0 panics, {:.1} s, peak RSS {} MB",
            self.name,
            self.n.load(Ordering::Relaxed),
            self.start.elapsed().as_secs_f64(),
            peak
        );
        // Memory stays bounded however many cases ran.
        assert!(peak < 2048, "peak RSS {peak} MB");
    }
}

/// The invariant on every HTTP answer: 200, or a 4xx/503/504 whose body is
/// the JSON error `{error, kind}`.
pub fn check_answer(status: u16, ctype: &str, body: &[u8]) -> Result<(), TestCaseError> {
    if status == 200 {
        return Ok(());
    }
    prop_assert!(
        (400..500).contains(&status) || status == 503 || status == 504,
        "status {status}: {}",
        String::from_utf8_lossy(body)
    );
    prop_assert!(
        ctype.starts_with("application/json"),
        "status {status}: content-type {ctype}"
    );
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("status {status}: not JSON ({e})")))?;
    prop_assert!(v["error"].is_string() && v["kind"].is_string(), "{v}");
    Ok(())
}

/// Send one request through the app; check the invariant.
pub async fn send(
    app: &axum::Router,
    req: axum::http::Request<axum::body::Body>,
) -> Result<u16, TestCaseError> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    check_answer(status, &ctype, &body)?;
    Ok(status)
}

/// Small valid images of every accepted format: (content type, bytes).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
    let rgb = RgbImage::from_fn(37, 23, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 5) as u8])
    });
    let rgba = RgbaImage::from_fn(19, 29, |x, y| {
        image::Rgba([(x * 13) as u8, (y * 3) as u8, 90, 200])
    });
    let mut out = Vec::new();
    for (ctype, fmt) in [
        ("image/png", ImageFormat::Png),
        ("image/jpeg", ImageFormat::Jpeg),
        ("image/webp", ImageFormat::WebP),
        ("image/gif", ImageFormat::Gif),
        ("image/bmp", ImageFormat::Bmp),
        ("image/tiff", ImageFormat::Tiff),
    ] {
        for img in [
            DynamicImage::ImageRgb8(rgb.clone()),
            DynamicImage::ImageRgba8(rgba.clone()),
        ] {
            let img = if fmt == ImageFormat::Jpeg {
                DynamicImage::ImageRgb8(img.to_rgb8())
            } else {
                img
            };
            let mut buf = Cursor::new(Vec::new());
            img.write_to(&mut buf, fmt)
                .unwrap_or_else(|e| panic!("encoding a {fmt:?} seed: {e}"));
            out.push((ctype, buf.into_inner()));
        }
    }
    // A real photo too (JPEG, 112 KB).
    out.push((
        "image/jpeg",
        std::fs::read(bundled_models_dir().join("testdata/rocket.jpg")).unwrap(),
    ));
    out
}

#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    /// Four bytes set to a value parsers care about (sizes, lengths).
    Word(usize, u32),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Repeat(usize, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        Just(0u32),
        Just(1),
        Just(0xffff_ffff),
        Just(0x7fff_ffff),
        Just(0x0001_0000),
        Just(0x4000_0000),
        any::<u32>()
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::Set(p, v)),
        2 => (any::<usize>(), word).prop_map(|(p, w)| Mutation::Word(p, w)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Remove(p, n)),
        1 => (any::<usize>(), 1usize..256).prop_map(|(p, n)| Mutation::Repeat(p, n)),
    ]
}

pub fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = b.len().max(1);
        match m {
            Mutation::Flip(p, bit) if !b.is_empty() => b[p % len] ^= 1 << bit,
            Mutation::Set(p, v) if !b.is_empty() => b[p % len] = *v,
            Mutation::Word(p, w) if b.len() >= 4 => {
                let at = p % (b.len() - 3);
                b[at..at + 4].copy_from_slice(&w.to_be_bytes());
            }
            Mutation::Truncate(p) => b.truncate(p % len),
            Mutation::Insert(p, x) => {
                let at = p % (b.len() + 1);
                b.splice(at..at, x.iter().copied());
            }
            Mutation::Remove(p, n) if !b.is_empty() => {
                let at = p % b.len();
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Mutation::Repeat(p, n) if !b.is_empty() => {
                let at = p % b.len();
                let end = (at + n).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(end..end, chunk);
            }
            _ => {}
        }
    }
    b
}

/// Header values worth trying: valid, edge and junk.
pub fn sla_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        (1u32..5000).prop_map(|v| v.to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("1e309".to_string()),
        Just("".to_string()),
        Just("99999999999".to_string()),
        "[ -~]{0,12}",
    ])
}
