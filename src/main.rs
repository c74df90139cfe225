use clap::Parser;
use slimserve::config::{Cli, Command, ManifestCommand};
use std::time::Duration;

/// jemalloc (feature `jemalloc`, default): freed pages go back to the
/// system a second after a burst (a background thread purges them), where
/// glibc's per-thread arenas keep what each thread ever held.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (before `main`); the
/// environment variable `_RJEM_MALLOC_CONF` overrides them.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = slimserve::memory::JEMALLOC_CONF;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    check_cpu()?;
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = slimserve::http::conn::bind(args.http_addr)?;
                tracing::info!(addr = %listener.local_addr()?, "listening (HTTP)");
                let grpc = slimserve::http::conn::bind(args.grpc_addr)?;
                tracing::info!(addr = %grpc.local_addr()?, "listening (gRPC)");
                slimserve::server::serve(args, listener, grpc, slimserve::server::signal()).await
            })
        }
        Command::Bench(args) => slimserve::bench::run(&args),
        Command::Eval(args) => slimserve::eval::run(&args),
        Command::Healthcheck(args) => {
            slimserve::server::healthcheck(args.addr, Duration::from_secs(args.timeout_secs))
        }
        Command::Manifest(ManifestCommand::Init(args)) => manifest_init(&args),
    }
}

/// `slimserve manifest init model.onnx`: write what the server infers.
fn manifest_init(args: &slimserve::config::ManifestInitArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let m = slimserve::manifest::Manifest::for_onnx(
        &args.model,
        args.labels.as_deref(),
        args.name.as_deref(),
        &args.preprocess.patch()?,
    )?;
    let text = m.to_toml(&args.model.display().to_string())?;
    let out = match &args.out {
        Some(p) if p.as_os_str() == "-" => {
            print!("{text}");
            return Ok(());
        }
        Some(p) => p.clone(),
        None => m.dir.join("variants.toml"),
    };
    // The manifest names the model (and labels) relative to its own folder.
    let model_dir = std::fs::canonicalize(&m.dir).unwrap_or_else(|_| m.dir.clone());
    let out_dir = out
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| std::fs::canonicalize(d).ok());
    anyhow::ensure!(
        out_dir.as_deref() == Some(model_dir.as_path()),
        "{}: write the manifest beside the model ({}), since it names the model file relative to itself, or use --out - to print it",
        out.display(),
        m.dir.display()
    );
    anyhow::ensure!(
        args.force || !out.exists(),
        "{} exists: pass --force to overwrite it",
        out.display()
    );
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} (serve it with: slimserve serve --models {})",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Built for x86-64-v3 (AVX2/FMA) by default: refuse clearly on an older CPU
/// instead of dying on an illegal instruction later.
fn check_cpu() -> anyhow::Result<()> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        anyhow::bail!(
            "this binary was built for x86-64-v3 (AVX2/FMA) but the CPU lacks them; \
             rebuild with RUSTFLAGS=\"-C target-cpu=x86-64\" for a portable binary"
        );
    }
    Ok(())
}
